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
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["ARTEFACTS", "CHROMIUM_FLAGS", "PAGE_LOAD_TIMEOUT_S", "artefact_path", "browser",
           "browser_or_skip", "find_browser"]

#: Without these, chromium on a machine with no outside network stalls on start-up
#: (component updates, sync, QUIC probes) or refuses to run as root (sandbox).
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                  "--disable-extensions", "--disable-default-apps", "--mute-audio",
                  "--no-default-browser-check", "--disable-features=Translate,MediaRouter")
#: A page load (and a script call) that takes longer fails the test.
PAGE_LOAD_TIMEOUT_S = 30
#: Where tests leave files for a person to look at (screenshots): ``$MODCOORD_TEST_ARTEFACTS``,
#: else ``.cache/test-artefacts`` in the repository.
ARTEFACTS = Path(os.environ.get("MODCOORD_TEST_ARTEFACTS") or
                 Path(__file__).resolve().parent.parent / ".cache" / "test-artefacts")


def artefact_path(name: str) -> Path:
    """``ARTEFACTS / name``, the directory made if missing."""
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    return ARTEFACTS / name


def browser_or_skip() -> tuple[str, str]:
    """``(chromium, chromedriver)``; skips the test when either (or selenium) is missing,
    or fails it when the run requires them (``$MODCOORD_REQUIRE_TOOLS`` names
    ``chromium``)."""
    import pytest
    from tools import tool_or_skip

    found = find_browser()
    if found is None:
        tool_or_skip("chromium" if find_tool_any("chromium", "chromium-browser") is None
                     else "chromedriver")
        raise AssertionError("unreachable: tool_or_skip skips or fails")
    try:
        import selenium  # noqa: F401
    except ImportError:
        reason = "selenium is not installed (pip install -e '.[dev]')"
        if "chromium" in os.environ.get("MODCOORD_REQUIRE_TOOLS", "").split():
            pytest.fail(reason + " ($MODCOORD_REQUIRE_TOOLS lists chromium)")
        pytest.skip(reason)
    return found


def find_tool_any(*names: str) -> str | None:
    from tools import find_tool

    return next((path for name in names if (path := find_tool(name))), None)


def find_browser() -> tuple[str, str] | None:
    """``(chromium, chromedriver)`` paths, or None when either is missing."""
    chromium = find_tool_any("chromium", "chromium-browser")
    driver = find_tool_any("chromedriver")
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
