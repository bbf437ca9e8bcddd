"""A real headless browser (Chromium through Selenium) for tests of the HTML the report writes.

Tests that need it skip with the reason when Chromium, its driver or
Selenium is missing; ``.ci/run`` installs all three.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver",)


def _which(names) -> str | None:
    return next((p for p in map(shutil.which, names) if p), None)


def page_state(html: Path, screenshot: Path | None = None, width: int = 1280) -> dict:
    """Load ``html`` in headless Chromium; what the page holds once loaded.

    Returns ``ready`` (document.readyState), ``title``, ``images`` (each
    image's ``src`` with ``loaded``: complete and decoded to a non-zero
    size), ``links`` (every anchor's resolved ``href``) and ``errors``
    (severe browser log entries: failed loads, script errors).
    """
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    browser, driver_path = _which(BROWSERS), _which(DRIVERS)
    if browser is None or driver_path is None:
        pytest.skip("Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},900", "--allow-file-access-from-files"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(Path(html).resolve().as_uri())
        driver.execute_async_script(  # wait until every image has either loaded or failed
            "const done = arguments[arguments.length - 1];"
            "Promise.all(Array.from(document.images).map(i => i.complete ? null :"
            " new Promise(r => { i.onload = r; i.onerror = r; }))).then(() => done());")
        state = driver.execute_script(
            "return {ready: document.readyState, title: document.title,"
            " images: Array.from(document.images).map(i => ({src: i.getAttribute('src'),"
            "   loaded: i.complete && i.naturalWidth > 0, width: i.naturalWidth})),"
            " links: Array.from(document.querySelectorAll('a[href]')).map(a => a.href)};")
        state["errors"] = [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        if screenshot is not None:
            height = driver.execute_script("return document.body.scrollHeight")
            driver.set_window_size(width, min(int(height) + 100, 16000))
            driver.save_screenshot(str(screenshot))
        return state
    finally:
        driver.quit()
