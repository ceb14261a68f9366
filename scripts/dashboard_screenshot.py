#!/usr/bin/env python3
"""A screenshot of the dashboard page (docs/dashboard.png): start a daemon in a temporary
directory with the packaged configs, feed it the demo load (``scripts/demo_load.py``:
real module processes) for a while, open the page in headless chromium (as the tests do,
``tests/browser.py``) and save the whole page as a PNG.

Usage: .venv/bin/python scripts/dashboard_screenshot.py OUT.png [--seconds 120] [--range 15min]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "modcoord.supervisor"]


def _configs(target: Path) -> Path:
    """The packaged configs, with the dashboard on any free port (9465 may be taken)."""
    import shutil

    import yaml

    from modcoord.supervisor.daemon.config import default_config_dir

    target.mkdir()
    for f in default_config_dir().glob("*.yaml"):
        shutil.copy(f, target / f.name)
    daemon = yaml.safe_load((target / "daemon.yaml").read_text())
    daemon["dashboard"]["port"] = 0
    (target / "daemon.yaml").write_text(yaml.safe_dump(daemon, sort_keys=False))
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--range", default="15min", help="15min, 1h, 6h, 1d or 30d")
    parser.add_argument("--width", type=int, default=1280)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    from browser import browser, find_browser

    found = find_browser()
    if found is None:
        print("dashboard_screenshot: chromium and chromedriver are needed "
              "(scripts/get-tools)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="modcoord-shot-") as tmp:
        runtime, state = Path(tmp) / "run", Path(tmp) / "state"
        configs = _configs(Path(tmp) / "configs")
        subprocess.run([*CLI, "start", "--runtime-dir", str(runtime), "--state-dir",
                        str(state), "--config-dir", str(configs)], check=True, timeout=60)
        try:
            load = subprocess.Popen([sys.executable, str(REPO / "scripts" / "demo_load.py"),
                                     str(runtime), "--seconds", str(args.seconds)])
            answer = json.loads(subprocess.run(
                [*CLI, "dashboard", "--json", "--runtime-dir", str(runtime)],
                check=True, capture_output=True, text=True, timeout=60).stdout)
            started = time.monotonic()
            with browser(*found, width=args.width, height=900) as driver:
                # The load runs and the history fills; the page is opened while the
                # modules still publish (its insights come 10 s after it is drawn).
                time.sleep(max(0.0, args.seconds - 25 - (time.monotonic() - started)))
                driver.get(f"{answer['url']}#{args.range}")
                deadline = time.monotonic() + 30
                while driver.execute_script("return document.body.dataset.ready") != "1":
                    if time.monotonic() > deadline:
                        raise SystemExit("the page did not get ready within 30 s")
                    time.sleep(0.1)
                time.sleep(11)  # the insights (polled every 10 s) and a few live updates
                height = driver.execute_script("return document.documentElement.scrollHeight")
                driver.set_window_size(args.width, int(height) + 40)
                time.sleep(1)  # the charts redraw at the new size
                driver.save_screenshot(str(args.out))
            load.wait(timeout=args.seconds + 60)
        finally:
            subprocess.run([*CLI, "stop", "--runtime-dir", str(runtime)], timeout=60)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
