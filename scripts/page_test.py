#!/usr/bin/env python3
"""Browser test of the nurse's page in headless Chromium (selenium + chromedriver).

    page_test.py URL SCREENSHOT_PATH [--timeout S] [--account NAME --password PW]

Loads URL, logs in through the page's login form when --account is given (typing into
#login-account and #login-password and pressing the form's button, then waiting until the
overlay is gone), waits for the first SpO2 alarm (`div.alarm[data-alarm]` whose text contains
"SpO2"), acknowledges it with its `button.ack`, waits until the alarm's `data-state` is
`acknowledged`, and saves a PNG screenshot. Prints, one line each, flushed at once:

    PAGE_LOADED <epoch ms>
    LOGGED_IN <epoch ms> <account>     (with --account)
    ALARM_SEEN <epoch ms> <alarm id>   (browser clock: when the element entered the DOM)
    ACKED <epoch ms>
    SCREENSHOT <path>

Exit 0 on success; 1 on timeout or any failure (with a message on stderr); 2 on bad usage.

The page re-renders its bed grid from /api/beds every second (innerHTML), so elements are
always looked up again by their data-alarm id and never kept across polls. ALARM_SEEN is
taken in the page by a MutationObserver (installed right after load), so its time does not
depend on how often this script polls the DOM (every 50 ms).

Uses Debian's /usr/bin/chromium and /usr/bin/chromedriver (no network: Selenium Manager
is not used because the driver path is given).
"""

import argparse
import signal
import sys
import time

import headless

POLL_S = 0.05

# Installed in the page right after load: records, in the browser's clock, when the first
# SpO2 alarm element enters the DOM (the page replaces the grid's innerHTML on each poll).
OBSERVER_JS = r"""
if (!window.__spo2) {
  window.__spo2 = {seen_ms: null, id: null};
  const check = () => {
    if (window.__spo2.seen_ms !== null) return;
    for (const el of document.querySelectorAll('div.alarm[data-alarm]')) {
      if ((el.textContent || '').includes('SpO2')) {
        window.__spo2.seen_ms = Date.now();
        window.__spo2.id = el.getAttribute('data-alarm');
        return;
      }
    }
  };
  new MutationObserver(check).observe(document.documentElement, {childList: true, subtree: true});
  check();
}
return window.__spo2;
"""

STATE_JS = r"""
const el = [...document.querySelectorAll('div.alarm[data-alarm]')]
  .find(e => e.getAttribute('data-alarm') === arguments[0]);
return el ? el.getAttribute('data-state') : null;
"""


def now_ms():
    return int(time.time() * 1000)


def say(line):
    print(line, flush=True)


def fail(msg):
    print(f"page_test: FAILED: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("url")
    ap.add_argument("screenshot")
    ap.add_argument("--timeout", type=float, default=60.0,
                    help="seconds to wait for the alarm, and again for the acknowledgement")
    ap.add_argument("--account", help="log in as this account through the page's form")
    ap.add_argument("--password", default="", help="its password")
    ap.add_argument("--chromium-flag", action="append", default=[],
                    help="one more Chromium flag, e.g. --ignore-certificate-errors-spki-list=PIN "
                         "to trust the test PKI's gateway certificate (repeatable)")
    args = ap.parse_args()
    # The test stops this script with SIGTERM: exit through the `finally` below so that
    # chromedriver and chromium are shut down too, not left running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))

    try:
        from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
        from selenium.webdriver.common.by import By
    except ImportError as e:
        fail(f"selenium is not installed in {sys.executable} ({e}); scripts/test installs it")
    flags = ("--headless", *headless.FLAGS[1:], "--disable-dev-shm-usage", *args.chromium_flag)
    browser = headless.Session(fail, args.timeout, prefix="icu-page-test-", flags=flags)
    driver = None
    try:
        try:
            driver = browser.start()
        except WebDriverException as e:
            fail(f"could not start chromium via chromedriver: {e.msg or e}")
        driver.get(args.url)
        driver.execute_script(OBSERVER_JS)
        say(f"PAGE_LOADED {now_ms()}")

        # 0. Log in as a person, as a nurse would.
        if args.account:
            deadline = time.monotonic() + args.timeout
            while not driver.find_element(By.ID, "login").is_displayed():
                if time.monotonic() > deadline:
                    fail("the page did not show its login form")
                time.sleep(POLL_S)
            driver.find_element(By.ID, "login-account").send_keys(args.account)
            driver.find_element(By.ID, "login-password").send_keys(args.password)
            driver.find_element(By.ID, "login-submit").click()
            while driver.find_element(By.ID, "login").is_displayed():
                if time.monotonic() > deadline:
                    msg = driver.find_element(By.ID, "login-msg").text
                    fail(f"login as {args.account} did not succeed: {msg!r}")
                time.sleep(POLL_S)
            say(f"LOGGED_IN {now_ms()} {args.account}")

        # 1. The alarm appears.
        deadline = time.monotonic() + args.timeout
        seen = None
        while True:
            # Re-running the script is harmless (installed once) and re-installs it if the
            # page were ever reloaded.
            st = driver.execute_script(OBSERVER_JS)
            if st and st.get("seen_ms") is not None:
                seen = st
                break
            if time.monotonic() > deadline:
                fail(f"no SpO2 alarm (div.alarm[data-alarm] containing 'SpO2') on {args.url} "
                     f"within {args.timeout:g} s")
            time.sleep(POLL_S)
        alarm_id = seen["id"]
        say(f"ALARM_SEEN {int(seen['seen_ms'])} {alarm_id}")

        # 2. Acknowledge it with a real click on its button. The grid may be re-rendered
        #    between finding and clicking the button: find it again and retry.
        deadline = time.monotonic() + args.timeout
        sel = f'div.alarm[data-alarm="{alarm_id}"] button.ack'
        while True:
            try:
                buttons = driver.find_elements(By.CSS_SELECTOR, sel)
                if buttons:
                    buttons[0].click()
                    break
            except StaleElementReferenceException:
                pass
            if time.monotonic() > deadline:
                fail(f"no Acknowledge button ({sel}) to click within {args.timeout:g} s")
            time.sleep(POLL_S)

        # 3. The state changes on the page.
        deadline = time.monotonic() + args.timeout
        state = None
        while True:
            state = driver.execute_script(STATE_JS, alarm_id)
            if state == "acknowledged":
                break
            if time.monotonic() > deadline:
                fail(f"alarm {alarm_id} did not become acknowledged within {args.timeout:g} s "
                     f"(data-state: {state!r})")
            time.sleep(POLL_S)
        say(f"ACKED {now_ms()}")

        # 4. The artefact.
        say(f"SCREENSHOT {browser.screenshot(args.screenshot)}")
    except WebDriverException as e:
        fail(f"webdriver error: {e.msg or e}")
    finally:
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
