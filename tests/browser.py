"""Headless Chromium for the browser tests: Debian's ``chromium`` driven through its own
``chromium-driver`` with selenium (never a downloaded browser or driver).

:func:`missing` says why the tests must skip (packages absent); :func:`chromium` starts
one browser with a fresh profile and a viewport of exactly the asked size.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

PACKAGES = "Debian's chromium and chromium-driver packages"
SKIP_REASON = (
    f"browser tests need {PACKAGES} (apt-get install chromium chromium-driver; "
    "`make test` installs them when it runs as root)"
)
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars", "--force-color-profile=srgb",
)
WAIT_S = 60.0  # the longest a DOM condition is waited for (a loaded 2-core machine)


def _find(*names: str) -> str | None:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


def binaries() -> tuple[str | None, str | None]:
    return _find("chromium", "chromium-browser"), _find("chromedriver", "chromium-driver")


def missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    browser, driver = binaries()
    if browser is None or driver is None:
        return SKIP_REASON
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "browser tests need selenium (the dev extra: pip install -e '.[dev]')"
    return None


def chromium(width: int, height: int, profile_root: Path | None = None) -> Any:
    """A started headless Chromium (selenium WebDriver) with a ``width``×``height`` viewport."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = binaries()
    assert browser and driver, SKIP_REASON
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=profile_root)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager (which would download one) never runs.
    web = webdriver.Chrome(options=options, service=Service(driver))
    set_viewport(web, width, height)
    return web


def set_viewport(web: Any, width: int, height: int) -> None:
    """Exactly this CSS viewport, whatever the window's decorations take."""
    web.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": height, "deviceScaleFactor": 1, "mobile": False,
    })


def wait(web: Any, condition: Callable[[Any], Any], what: str, timeout: float = WAIT_S) -> Any:
    """Wait for a DOM condition (WebDriverWait polls it); fail naming ``what``."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(web, timeout).until(condition, message=f"waiting for {what}")


def images_loaded(selector: str) -> Callable[[Any], bool]:
    script = (
        "const imgs = [...document.querySelectorAll(arguments[0])];"
        "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0"
        " && i.closest('.thumb')?.dataset.state !== 'loading');"
    )
    return lambda web: bool(web.execute_script(script, selector))
