"""The dashboard page in a real headless browser (Debian's chromium, driven by selenium
through chromedriver), against a real daemon fed by real module processes: it loads with
the token, draws its charts from the history, updates when new data arrives, is readable
on a phone's width, and a request without the token is refused. Screenshots are saved for a
person to look at (their paths are printed; ``$MODCOORD_TEST_ARTEFACTS`` or
``.cache/test-artefacts``)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from browser import artefact_path, browser, browser_or_skip
from daemon_harness import DaemonProcess, wait_for
from dashboard_harness import dashboard_url, http_get, publisher

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Waiting for the page (a first load, an update) longer than this fails the test.
PAGE_WAIT_S = 30.0

_PAINTED_PIXELS = """
const canvas = document.querySelector(`canvas[data-panel="${arguments[0]}"]`);
if (!canvas || canvas.hidden) return 0;
const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
let painted = 0;
for (let i = 3; i < data.length; i += 4) if (data[i] > 0) painted++;
return painted;
"""


def _js(driver: Any, script: str, *args: Any) -> Any:
    return driver.execute_script(script, *args)


def _tile(driver: Any, tile: str) -> str:
    text: str = _js(driver, "return document.querySelector(`[data-tile='${arguments[0]}'] "
                            ".value`).textContent", tile)
    return text


def _body(driver: Any, name: str) -> str | None:
    value: str | None = _js(driver, "return document.body.dataset[arguments[0]] || null",
                            name)
    return value


def _module_ids(driver: Any) -> list[str]:
    ids: list[str] = _js(driver, "return [...document.querySelectorAll('#modules tbody tr')]"
                                 ".map((r) => r.cells[0].textContent)")
    return ids


def _wait_page(driver: Any, condition: Any, message: str) -> Any:
    return wait_for(condition, timeout=PAGE_WAIT_S, interval=0.2, message=message)


def _severe_logs(driver: Any) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


@pytest.mark.timeout(240)
def test_the_page_in_a_real_browser_draws_updates_and_refuses_without_token(
        daemon: DaemonProcess) -> None:
    chromium, chromedriver = browser_or_skip()
    answer = dashboard_url(daemon)
    url, address = answer["url"], answer["address"]
    with publisher(daemon, "editor", per_tick=10):
        # Let the history hold some seconds of the module's publishing first.
        code, _, headers = http_get(url)
        assert code == 200
        cookie = headers["Set-Cookie"].split(";", 1)[0]

        def history_has_rate() -> bool:
            code, body, _ = http_get(address + "api/history?since=60&metric=updates_in_per_s",
                                     cookie)
            points = json.loads(body)["series"]["updates_in_per_s"] if code == 200 else []
            return sum(1 for p in points if p[3] > 0) >= 3

        wait_for(history_has_rate, timeout=30, interval=0.5, message="history of the rate")

        with browser(chromium, chromedriver) as driver:
            started = time.monotonic()
            driver.get(url + "#15min")
            _wait_page(driver, lambda: _body(driver, "ready") == "1", "the page drawn")
            load_s = time.monotonic() - started
            # The token is out of the address bar; the cookie carries the page's requests.
            assert "token=" not in driver.current_url
            assert _body(driver, "range") == "900"
            assert int(_body(driver, "historyPoints") or 0) > 0
            points = int(_js(driver, "return Number(document.querySelector("
                                     "'canvas[data-panel=\"throughput\"]').dataset.points)"))
            assert points >= 3
            assert _js(driver, _PAINTED_PIXELS, "throughput") > 200  # lines really drawn
            assert _tile(driver, "modules") == "1"
            assert _tile(driver, "coordinating") == "yes"
            assert _module_ids(driver) == ["editor"]
            assert float(_tile(driver, "updates_in").split()[0]) > 0
            actors = _js(driver, "return document.querySelectorAll('#actors tbody tr')"
                                 ".length")
            assert actors >= 5
            assert _js(driver, "return document.querySelectorAll('#adaptive tbody tr')"
                               ".length") >= 1
            assert _js(driver, "return document.querySelectorAll('#insights li')"
                               ".length") >= 1
            assert _severe_logs(driver) == []  # no CSP violation, no failed request

            # New data arrives: a second module starts publishing; the page shows it
            # without a reload, and the charts get more points.
            updates = int(_body(driver, "liveUpdates") or 0)
            _js(driver, "window.__notReloaded = true")
            with publisher(daemon, "second", per_tick=30):
                _wait_page(driver, lambda: _tile(driver, "modules") == "2",
                           "the modules figure to change to 2")
                _wait_page(driver, lambda: "second" in _module_ids(driver),
                           "the second module in the table")
                _wait_page(driver, lambda: int(_js(driver, "return Number(document."
                                                   "querySelector('canvas[data-panel="
                                                   "\"throughput\"]').dataset.points)"))
                           > points, "more points in the throughput chart")
            assert int(_body(driver, "liveUpdates") or 0) > updates
            assert _js(driver, "return window.__notReloaded === true")  # the same page

            # The range picker: 1 h, at its resolution.
            driver.find_element("css selector", "nav button[data-range='3600']").click()
            _wait_page(driver, lambda: _body(driver, "range") == "3600", "the 1 h range")
            _wait_page(driver, lambda: int(_body(driver, "historyPoints") or 0) > 0,
                       "the 1 h charts")

            shot = artefact_path("dashboard-browser-laptop.png")
            assert driver.save_screenshot(str(shot))
            print(f"\ndashboard screenshot (laptop): {shot} (first load {load_s:.2f} s)")

            # A phone's width: one column, nothing wider than the screen.
            driver.set_window_size(390, 844)
            _wait_page(driver, lambda: _js(driver, "return document.documentElement"
                                                   ".scrollWidth <= window.innerWidth + 1"),
                       "the page to fit a phone's width")
            phone = artefact_path("dashboard-browser-phone.png")
            assert driver.save_screenshot(str(phone))
            print(f"dashboard screenshot (phone): {phone}")
            assert phone.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert shot.stat().st_size > 20_000

            # Without the token (cookie gone): 403, no page, no data.
            driver.delete_all_cookies()
            driver.get(address)
            assert "forbidden" in _js(driver, "return document.body.innerText")
            assert _js(driver, "return document.querySelectorAll('canvas, #tiles')"
                               ".length") == 0
            driver.get(address + "api/live")
            assert "forbidden" in _js(driver, "return document.body.innerText")
            assert '"status"' not in driver.page_source
