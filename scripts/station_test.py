#!/usr/bin/env python3
"""Browser test of the central station in headless Chromium (selenium + chromedriver).

    station_test.py URL ARTIFACT_DIR --account NAME --password PW [--patient TEXT] [--timeout S]

Logs in through the page's form, then checks, printing one line per step (flushed at once):

    LOGGED_IN
    PATIENT <bed>                 the admitted bed's tile shows TEXT (--patient)
    AUDIO <state>                 what the page reports (#audio[data-state], window.icuStation);
                                  a browser that blocks audio is unblocked by clicking the banner
    ALARM <alarm id> <priority>   an SpO2 alarm is first in the alarm bar, its bed's tile flashes
                                  with its priority's class and a CSS animation, the SpO2 numeric
                                  is marked, and a tone of that priority was played
    ACKED <alarm id>              its Acknowledge button, found before two refresh cycles, is the
                                  same element after them (no StaleElementReference) and the
                                  click acknowledges the alarm; the tile stops flashing
    SCREENSHOT <path>             station.png
    DEAD_LETTER <id> <device>     (--dead-letter-marker) the device console (/devices) lists the
                                  dead letter whose raw bytes hold MARKER, raw bytes shown
    MESSAGES <device>             the console shows that device's last messages with the ACK
                                  sent: AA for its readings, AE for the rejected one
    SCREENSHOT <path>             devices.png
    BED_VIEW <series> <points>    (--bed-view BED) /beds/BED draws the last hour's trends (an SVG
                                  line per parameter) and lists the bed's alarm history
    SCREENSHOT <path>             bed.png
    READY_TO_STOP                 the caller now stops the gateway
    NO_DATA <ms>                  every tile says NO DATA and the page raised its own alarm, ms
                                  after READY_TO_STOP was printed
    SCREENSHOT <path>             station-no-data.png

Exit 0 on success; 1 on a failed check (message on stderr); 2 on bad usage. Uses Debian's
/usr/bin/chromium and /usr/bin/chromedriver (no network).
"""

import argparse
import os
import sys
import time

import headless


say = headless.say
fail = headless.failer("station_test.py")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("artifacts")
    p.add_argument("--account", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--patient", default="")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--dead-letter-marker", default="")
    p.add_argument("--dead-letter-device", default="mon-01")
    p.add_argument("--bed-view", default="")
    args = p.parse_args()
    try:
        from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
        from selenium.webdriver.common.by import By
    except ImportError as e:
        print(f"station_test.py: selenium missing: {e}", file=sys.stderr)
        return 2

    browser = headless.Session(fail, args.timeout, prefix="icu-station-")
    wait = browser.wait
    js = browser.js
    driver = None
    try:
        driver = browser.start()
        browser.login(args.url, args.account, args.password)
        wait("the tiles", lambda: js("return document.querySelectorAll('article.bed').length") > 0)
        say("LOGGED_IN")

        if args.patient:
            bed = wait(f"a tile showing {args.patient!r}", lambda: js(
                "for (const t of document.querySelectorAll('article.bed'))"
                " if (t.textContent.includes(arguments[0])) return t.dataset.bed; return null;",
                args.patient))
            say(f"PATIENT {bed}")

        state = wait("an audio state", lambda: js("return window.icuStation && window.icuStation.audio"))
        if state == "blocked":
            driver.find_element(By.ID, "audio-enable").click()
            state = wait("audio on after the click", lambda: js(
                "return window.icuStation.audio === 'on' ? 'on' : null"))
        if js("return document.getElementById('audio').dataset.state") != state:
            fail("#audio[data-state] and window.icuStation.audio disagree")
        say(f"AUDIO {state}")

        # The desaturation: the SpO2 alarm first in the bar, its tile flashing.
        first = wait("an SpO2 alarm first in the alarm bar", lambda: js(
            "const a = document.querySelector('#alarmbar .alarm');"
            "return a && a.textContent.includes('SpO2') && a.dataset.state === 'active'"
            " ? {id: a.dataset.alarm, bed: a.dataset.bed, priority: a.dataset.priority} : null;"))
        pr = first["priority"]
        if pr not in ("PH", "PM"):
            fail(f"the SpO2 alarm has priority {pr}, expected medium or high")
        flash = "flash-high" if pr == "PH" else "flash-medium"
        tile = wait("the tile flashing", lambda: js(
            "const t = document.querySelector(`article.bed[data-bed='${arguments[0]}']`);"
            "if (!t || !t.classList.contains(arguments[1])) return null;"
            "const cs = getComputedStyle(t);"
            "const spo2 = t.querySelector(\"[data-code='150456']\");"
            "return cs.animationName !== 'none' && spo2 && spo2.classList.contains('in-alarm')"
            " ? {animation: cs.animationName, duration: cs.animationDuration} : null;",
            first["bed"], flash))
        if state == "on":
            wait("a tone of the alarm's priority", lambda: js(
                "const t = window.icuStation.lastTone; return t && t.priority === arguments[0];", pr))
        say(f"ALARM {first['id']} {pr} {tile['animation']} {tile['duration']}")

        # Acknowledge: the button found now is the same element two refresh cycles later.
        sel = f"#alarmbar .alarm[data-alarm='{first['id']}'] button.ack"
        button = driver.find_element(By.CSS_SELECTOR, sel)
        time.sleep(2.5)
        try:
            if not button.is_displayed():
                fail("the Acknowledge button was hidden")
            button.click()
        except StaleElementReferenceException:
            fail("the Acknowledge button was replaced between refreshes (stale element)")
        wait("the alarm acknowledged on the page", lambda: js(
            "const a = document.querySelector(`#alarmbar .alarm[data-alarm='${arguments[0]}']`);"
            "return a && a.dataset.state === 'acknowledged';", first["id"]))
        wait("the tile to stop flashing", lambda: js(
            "const t = document.querySelector(`article.bed[data-bed='${arguments[0]}']`);"
            "return t && !t.classList.contains('flash-high') && !t.classList.contains('flash-medium');",
            first["bed"]))
        say(f"ACKED {first['id']}")
        os.makedirs(args.artifacts, exist_ok=True)
        shot = os.path.join(os.path.abspath(args.artifacts), "station.png")
        driver.save_screenshot(shot)
        say(f"SCREENSHOT {shot}")

        if args.dead_letter_marker:
            base = args.url.rstrip("/")
            driver.get(base + "/devices")
            found = wait("the dead letter in the device console", lambda: js(
                "for (const d of document.querySelectorAll('.dead-letter'))"
                " if (d.querySelector('pre.raw').textContent.includes(arguments[0]))"
                "   return {id: d.dataset.id, device: d.dataset.device};"
                "return null;", args.dead_letter_marker))
            say(f"DEAD_LETTER {found['id']} {found['device'] or '-'}")
            dev = args.dead_letter_device
            wait("the device's Messages button", lambda: driver.find_elements(
                By.CSS_SELECTOR, f"button.show-messages[data-device='{dev}']"))
            driver.find_element(By.CSS_SELECTOR, f"button.show-messages[data-device='{dev}']").click()
            wait("its last messages with AA and the AE of the rejected one", lambda: js(
                "const ex = [...document.querySelectorAll('#messages .exchange')];"
                "return ex.some(e => e.dataset.ack === 'AA')"
                " && ex.some(e => e.dataset.ack === 'AE' && e.textContent.includes(arguments[0])"
                "   && e.querySelector('pre.ack').textContent.includes('MSA|AE'));",
                args.dead_letter_marker))
            say(f"MESSAGES {dev}")
            shot = os.path.join(os.path.abspath(args.artifacts), "devices.png")
            driver.save_screenshot(shot)
            say(f"SCREENSHOT {shot}")
        if args.bed_view:
            driver.get(args.url.rstrip("/") + "/beds/" + args.bed_view)
            view = wait("the bed view's trends and alarm history", lambda: js(
                "const v = window.icuBedView;"
                "return v && v.ready && v.series > 0 && v.points > 0 && v.history > 0"
                " && document.querySelectorAll('#trends svg polyline.mean').length === v.series"
                " && document.querySelectorAll('#alarm-history tr').length > 0 ? v : null;"))
            say(f"BED_VIEW {view['series']} {view['points']}")
            shot = os.path.join(os.path.abspath(args.artifacts), "bed.png")
            driver.save_screenshot(shot)
            say(f"SCREENSHOT {shot}")
        if args.dead_letter_marker or args.bed_view:
            driver.get(args.url)
            wait("the station again", lambda: js(
                "return document.body.dataset.link === 'ok'"
                " && document.querySelectorAll('article.bed').length > 0;"))

        # The gateway stops: every tile NO DATA, the page's own alarm, within 5 s.
        say("READY_TO_STOP")
        t0 = time.monotonic()
        wait("every tile NO DATA and the page's alarm", lambda: js(
            "const tiles = [...document.querySelectorAll('article.bed')];"
            "return tiles.length > 0 && tiles.every(t => t.classList.contains('no-data')"
            " && getComputedStyle(t.querySelector('.nodata')).display !== 'none')"
            " && document.body.dataset.link === 'lost'"
            " && !document.getElementById('nodata-banner').hidden;"), timeout=15)
        say(f"NO_DATA {int((time.monotonic() - t0) * 1000)}")
        shot = os.path.join(os.path.abspath(args.artifacts), "station-no-data.png")
        driver.save_screenshot(shot)
        say(f"SCREENSHOT {shot}")
    except WebDriverException as e:
        fail(f"webdriver error: {e.msg or e}")
    finally:
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
