"""A real headless browser for the dashboard tests and the benchmark: Debian's chromium
driven by selenium through chromedriver (``scripts/get-tools`` installs both).

:func:`browser` is a context manager giving a ``selenium`` WebDriver, started with the flags
that keep chromium from reaching for the network (this must work offline) and a fresh
profile in a temporary directory. :func:`browser_or_skip` finds the tools the way
:func:`tools.tool_or_skip` does (skip, or fail when ``$MODCOORD_REQUIRE_TOOLS`` names
``chromium``).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

__all__ = ["CHROMIUM_FLAGS", "PAGE_LOAD_TIMEOUT_S", "browser", "find_browser"]

#: Without these, chromium on a machine with no outside network stalls on start-up
#: (component updates, sync, QUIC probes) or refuses to run as root (sandbox).
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                  "--disable-extensions", "--disable-default-apps", "--mute-audio",
                  "--no-default-browser-check", "--disable-features=Translate,MediaRouter")
#: A page load (and a script call) that takes longer fails the test.
PAGE_LOAD_TIMEOUT_S = 30


def find_browser() -> tuple[str, str] | None:
    """``(chromium, chromedriver)`` paths, or None when either is missing."""
    from tools import find_tool

    chromium = find_tool("chromium") or find_tool("chromium-browser")
    driver = find_tool("chromedriver")
    return (chromium, driver) if chromium and driver else None


@contextlib.contextmanager
def browser(chromium: str, chromedriver: str, width: int = 1280, height: int = 900
            ) -> Iterator[Any]:
    """A headless chromium WebDriver with a fresh profile; quit (and the profile removed)
    on exit whatever happened."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="modcoord-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT_S)
        driver.set_script_timeout(PAGE_LOAD_TIMEOUT_S)
        yield driver
    finally:
        with contextlib.suppress(Exception):
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
