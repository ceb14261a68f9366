"""Figure 23: the dashboard page's first load with a day of history, in headless chromium.

A history database is filled with a simulated day (:data:`METRICS`, the figures the
daemon samples plus five busy modules) through the real
:class:`~modcoord.supervisor.daemon.history.HistoryStore` on a fake clock: one sample a
minute for the first 23 hours, one a second for the last hour, ending now (so the
daemon's own clock finds the day where it belongs). A real daemon is started on that state
directory with the dashboard on (``dashboard.port: 0``); the baseline is a second daemon
with an empty history, the same page and range. Chromium (headless, the flags of
``tests/browser.py``, the one home of the browser's set-up) loads the page with the
range set to 1 day (``#1d``: the history at 1 min resolution, 1,441 points per metric) for
each daemon in turn, round after round; every load is a fresh navigation (every answer is
``Cache-Control: no-store``). Measured: from the navigation's start to the page setting
``data-ready`` (the live figures shown and every chart drawn), as the page records it
(``data-ready-ms``, ``performance.now()``). Value: median over the rounds, in ms; target
``<= 1000 ms``; baseline: the empty history's median.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from .common import BenchError, Result, median, row
from .daemons import Daemon, make_config_dir

ROW = "dashboard: first load with a day of history, headless chromium"
DAY_S = 86_400
FINE_S = 3_600
"""The last hour is sampled every second (the history's 1 s tier), the rest every minute."""
MODULES = 5
METRICS = (
    "coordination_p50_ms", "coordination_p99_ms", "publish_to_delivery_p99_ms",
    "updates_in_per_s", "updates_delivered_per_s", "collapse_ratio", "cache_hit_rate",
    "cache_size", "batch_efficiency", "batch_queue_depth", "memory_rss_bytes", "modules",
    "restarts", "adaptive.batch.max_size", "adaptive.batch.window_ms",
    "adaptive.cache.max_entries", "adaptive.debounce.delay_ms", "adaptive.delays.widen",
    *(f"module.editor{i}.updates_per_s" for i in range(MODULES)),
)
READY_TIMEOUT_S = 30.0


def _tests_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "tests"


def _value(metric: str, t: float, rng: random.Random) -> float:
    """A plausible value of ``metric`` at ``t``: a daily wave, a faster wave and noise."""
    day = 0.5 + 0.5 * math.sin(2 * math.pi * t / DAY_S)
    wave = 0.5 + 0.5 * math.sin(2 * math.pi * t / 1800 + len(metric))
    noise = rng.uniform(0.9, 1.1)
    scale = {"memory_rss_bytes": 60e6, "cache_size": 800, "modules": 12,
             "restarts": 1, "collapse_ratio": 0.8, "cache_hit_rate": 0.95}.get(metric, 400.0)
    return scale * (0.3 + 0.5 * day + 0.2 * wave) * noise


def fill_day(state_dir: Path, end: float, seed: int = 21) -> int:
    """Write a simulated day ending at ``end`` (wall seconds) into ``state_dir``'s history
    database on a fake clock; returns the rows in the file.

    Raises:
        BenchError: the store could not write the file (it went degraded).
    """
    from loguru import logger

    from modcoord.supervisor.daemon.history import DB_NAME, HistoryStore

    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    logger.disable("modcoord")  # the store's "history opened" is not the bench's output
    try:
        return _fill(state_dir, end, seed, HistoryStore, DB_NAME)
    finally:
        logger.enable("modcoord")


def _fill(state_dir: Path, end: float, seed: int, store_type: Any, db_name: str) -> int:
    clock = [end - DAY_S]
    store = store_type(state_dir / db_name, now=lambda: clock[0])
    rng = random.Random(seed)
    t = end - DAY_S
    adds = 0
    while t <= end:
        clock[0] = t
        store.add({m: _value(m, t, rng) for m in METRICS}, at=t)
        adds += 1
        if adds % 2000 == 0:
            store.flush()
        t += 1 if t >= end - FINE_S else 60
    store.close()
    if store.state != "ok":
        raise BenchError(f"the simulated day could not be written: {store.reason}")
    return int(store.row_count())


def _dashboard_url(d: Daemon) -> str:
    out = subprocess.run([sys.executable, "-m", "modcoord.supervisor", "dashboard", "--json",
                          "--runtime-dir", d.runtime_str], capture_output=True, text=True,
                         timeout=60)
    if out.returncode != 0:
        raise BenchError(f"modcoord dashboard ({d.name}) exited {out.returncode}: "
                         f"{out.stderr.strip()}")
    url: str = json.loads(out.stdout)["url"]
    return url


def _load(driver: Any, url: str) -> tuple[float, int]:
    """Navigate to ``url`` and wait for ``data-ready``; ``(ms, points drawn)``.

    Raises:
        BenchError: the page did not get ready within :data:`READY_TIMEOUT_S`.
    """
    driver.get("about:blank")
    driver.get(url)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        ready = driver.execute_script(
            "const b = document.body; return b && b.dataset.ready === '1' ? "
            "[Number(b.dataset.readyMs), Number(b.dataset.historyPoints)] : null")
        if ready:
            return float(ready[0]), int(ready[1])
        if time.monotonic() > deadline:
            raise BenchError(f"the dashboard page was not ready within {READY_TIMEOUT_S} s")
        time.sleep(0.02)


def fig_dashboard_first_load(root: Path, start_daemon: Any, quick: bool) -> list[Result]:
    """Figure 23 (see the module docstring).

    Raises:
        BenchError: chromium, chromedriver or selenium is missing, or a step failed.
    """
    sys.path.insert(0, str(_tests_dir()))  # tests/browser.py (and the tools.py it reads)
    try:
        return _measure(root, start_daemon, quick)
    finally:
        sys.path.remove(str(_tests_dir()))


def _measure(root: Path, start_daemon: Any, quick: bool) -> list[Result]:
    from browser import browser, find_browser

    found = find_browser()
    if found is None:
        raise BenchError("chromium and chromedriver are needed (scripts/get-tools installs "
                         "them)")
    rows = fill_day(root / "state-day", time.time())
    config = make_config_dir(root, "dashboard")
    daemon_yaml = config / "daemon.yaml"
    settings = yaml.safe_load(daemon_yaml.read_text()) or {}
    settings["dashboard"] = {"enabled": False, "host": "127.0.0.1", "port": 0}  # any free port
    daemon_yaml.write_text(yaml.safe_dump(settings, sort_keys=False))
    day = start_daemon("dashboard-day", config, "--state-dir", str(root / "state-day"))
    empty = start_daemon("dashboard-empty", config, "--state-dir", str(root / "state-empty"))
    urls = {"day": _dashboard_url(day) + "#1d", "empty": _dashboard_url(empty) + "#1d"}
    rounds = 5 if quick else 11
    times: dict[str, list[float]] = {"day": [], "empty": []}
    points: dict[str, int] = {}
    with browser(*found) as driver:
        for url in urls.values():  # warm-up: the browser's own first start
            _load(driver, url)
        for i in range(rounds):
            for name in (("day", "empty") if i % 2 == 0 else ("empty", "day")):
                ms, drawn = _load(driver, urls[name])
                times[name].append(ms)
                points[name] = drawn
    day.stop()
    empty.stop()
    value, base = median(times["day"]), median(times["empty"])
    if points["day"] < 1000:
        raise BenchError(f"the day's charts drew only {points['day']} points")
    spread = f"{min(times['day']):.0f}-{max(times['day']):.0f} ms"
    return [row(ROW, round(value, 1), "ms", "<= 1000 ms", round(base, 1),
                f"median of {rounds} loads (spread {spread}); {points['day']} points drawn "
                f"from {rows} rows ({len(METRICS)} metrics, 1 min resolution); baseline: "
                f"the same page on an empty history, median {base:.0f} ms")]
