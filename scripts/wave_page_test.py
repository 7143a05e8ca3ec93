#!/usr/bin/env python3
"""Browser test of the bed view's live curves in headless Chromium (selenium + chromedriver).

    wave_page_test.py URL BED SCREENSHOT --account NAME --password PW [--timeout S]

Logs in through the central station's form at URL, opens the bed view /beds/BED and checks,
printing one line per step (flushed at once):

    LOGGED_IN
    CHANNELS <n> <codes>        the view made a canvas per channel the stream announced, and
                                drew 6000 samples (about 3 s of three ECG leads, pleth and ABP)
    CURVE <code> <lit> <changed> the ECG II canvas (else the first) has drawn pixels, and its
                                pixels read twice, 1 s apart, differ (the sweep moves)
    SNIPPET <state> <segments> <drawn> <message>
                                (--snippet) a click on the first alarm of the alarm history shows
                                its curves around its start, with the gateway's message
    SCREENSHOT <path>

Exit 0 on success; 1 on a failed check (message on stderr); 2 on bad usage. Uses Debian's
/usr/bin/chromium and /usr/bin/chromedriver (no network).
"""

import argparse
import sys
import time

from headless import FLAGS, Session, failer, say

# The canvas's pixels: how many are drawn (alpha > 0), and a digest of them all.
READ_CANVAS_JS = r"""
const c = document.querySelector(`canvas.wave[data-code='${arguments[0]}']`);
if (!c || !c.width) return null;
const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let lit = 0, h = 0;
for (let i = 0; i < d.length; i += 4) {
  if (d[i + 3] > 0) lit++;
  h = (Math.imul(h, 31) + d[i] + 7 * d[i + 1] + 13 * d[i + 2] + 17 * d[i + 3]) | 0;
}
return {lit, hash: h, width: c.width, height: c.height};
"""


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("bed")
    p.add_argument("screenshot")
    p.add_argument("--account", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--snippet", action="store_true", help="click an alarm, check its snippet")
    args = p.parse_args()
    fail = failer("wave_page_test.py")
    try:
        import selenium  # noqa: F401
    except ImportError as e:
        print(f"wave_page_test.py: selenium missing: {e}", file=sys.stderr)
        return 2

    flags = (*FLAGS[:-1], "--window-size=1280,1400", "--disable-dev-shm-usage")
    with Session(fail, args.timeout, prefix="icu-waves-", flags=flags) as browser:
        js = browser.js

        def wait(what, check):
            state = lambda: js("return window.icuWaves || null")  # noqa: E731
            return browser.wait(lambda: f"{what} (window.icuWaves: {state()})", check)

        driver = browser.start()
        browser.login(args.url, args.account, args.password)
        say("LOGGED_IN")

        driver.get(args.url.rstrip("/") + "/beds/" + args.bed)
        codes = wait("canvases for the bed's channels and samples drawn", lambda: js(
            "const w = window.icuWaves;"
            "const c = [...document.querySelectorAll('canvas.wave')].map(e => e.dataset.code);"
            "return w && w.channels > 0 && c.length === w.channels && w.drawn > 6000 ? c : null;"))
        say(f"CHANNELS {len(codes)} {','.join(codes)}")
        code = "131330" if "131330" in codes else codes[0]
        first = wait("the curve's canvas read", lambda: js(READ_CANVAS_JS, code))
        time.sleep(1.0)
        second = js(READ_CANVAS_JS, code)
        if not second:
            fail(f"canvas {code} went away")
        lit = min(first["lit"], second["lit"])
        changed = first["hash"] != second["hash"]
        say(f"CURVE {code} {lit} {str(changed).lower()}")
        if args.snippet:
            from selenium.webdriver.common.by import By
            row = wait("an alarm in the alarm history", lambda: driver.find_elements(
                By.CSS_SELECTOR, "#alarm-history tr[data-alarm]"))
            row[0].click()
            shown = wait("the alarm's snippet drawn", lambda: js(
                "const s = window.icuWaves.snippet;"
                "return s && s.drawn > 0 && !document.getElementById('snippet').hidden"
                " ? {...s, message: document.getElementById('snippet-msg').textContent} : null;"))
            say(f"SNIPPET {shown['state']} {shown['segments']} {shown['drawn']} {shown['message']}")
        say(f"SCREENSHOT {browser.screenshot(args.screenshot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
