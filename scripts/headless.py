"""Headless Chromium for the browser tests (`page_test.py`, `station_test.py`,
`wave_page_test.py`): selenium driving Debian's /usr/bin/chromium through /usr/bin/chromedriver
(no network: the driver path is given, so Selenium Manager is not used).

A `Session` starts the browser in a fresh profile, waits for conditions, logs in through the
central station's form, saves screenshots, and on `close()` (or leaving its `with` block) quits
the browser and removes the profile. Each script gives it its `fail` (see `failer`).
"""

import os
import shutil
import sys
import tempfile
import time


def say(line):
    """One line of a script's report on stdout, flushed at once."""
    print(line, flush=True)


def failer(prog):
    """A `fail(msg)` that says why on stderr, as `prog`, and exits with status 1."""
    def fail(msg):
        print(f"{prog}: {msg}", file=sys.stderr, flush=True)
        raise SystemExit(1)
    return fail

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,900")


class Session:
    def __init__(self, fail, timeout, prefix="icu-browser-", flags=FLAGS):
        self.fail = fail
        self.timeout = timeout
        self.prefix = prefix
        self.flags = list(flags)
        self.driver = None
        self.profile = None

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        """Closes the browser; a webdriver error becomes a `fail` with its message."""
        self.close()
        from selenium.common.exceptions import WebDriverException
        if isinstance(err, WebDriverException):
            self.fail(f"webdriver error: {err.msg or err}")
        return False

    def start(self):
        """Starts Chromium; returns the selenium driver."""
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        for path in (CHROMIUM, CHROMEDRIVER):
            if not os.path.exists(path):
                self.fail(f"{path} is missing (apt-get install chromium chromium-driver)")
        self.profile = tempfile.mkdtemp(prefix=self.prefix)
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for flag in (*self.flags, f"--user-data-dir={self.profile}"):
            opts.add_argument(flag)
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
        self.driver.set_page_load_timeout(30)
        return self.driver

    def js(self, script, *args):
        return self.driver.execute_script(script, *args)

    def wait(self, what, check, timeout=None):
        """`check()`'s first truthy answer, polled every 100 ms; fails after `timeout` (`what`
        may be a function, asked only then)."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            got = check()
            if got:
                return got
            if time.monotonic() > deadline:
                self.fail(f"{what() if callable(what) else what} within {timeout:g} s")
            time.sleep(0.1)

    def login(self, url, account, password):
        """Opens `url` and logs in through the page's form, as a nurse would."""
        from selenium.webdriver.common.by import By
        d = self.driver
        d.get(url)
        self.wait("the login form", lambda: d.find_elements(By.ID, "login-account") and
                  d.find_element(By.ID, "login").is_displayed())
        d.find_element(By.ID, "login-account").send_keys(account)
        d.find_element(By.ID, "login-password").send_keys(password)
        d.find_element(By.ID, "login-submit").click()
        self.wait("logged in", lambda: not d.find_element(By.ID, "login").is_displayed())

    def screenshot(self, path):
        """Saves a PNG of the page at `path` (folders made); returns its absolute path."""
        out = os.path.abspath(path)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        if not self.driver.save_screenshot(out):
            self.fail(f"could not save the screenshot to {out}")
        return out

    def close(self):
        """Quits the browser (and its driver) and removes the profile."""
        if self.driver is not None:
            try:
                self.driver.quit()
            except Exception:
                pass
            self.driver = None
        if self.profile:
            shutil.rmtree(self.profile, ignore_errors=True)
