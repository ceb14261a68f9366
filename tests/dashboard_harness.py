"""What the dashboard's daemon tests share: a module process that publishes at a steady
pace, plain HTTP requests to the page, and ``modcoord dashboard --json``."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

from daemon_harness import DaemonProcess, module_script

__all__ = ["dashboard_url", "http_get", "publisher"]


def _publisher_source(module_id: str, per_tick: int) -> str:
    return module_script(module_id, f"""
        print("registered", flush=True)
        n = 0
        while True:
            for _ in range({per_tick}):
                client.publish({module_id!r}, f"k{{n % 50}}", {{"n": n}})
                n += 1
            time.sleep(0.1)  # quiet-period: the publisher's pace ({per_tick * 10}/s)
    """)


@contextlib.contextmanager
def publisher(daemon: DaemonProcess, module_id: str, per_tick: int = 20
              ) -> Iterator[subprocess.Popen[str]]:
    """A real module process ``module_id`` publishing ``per_tick * 10`` updates a second
    until the block ends (then killed)."""
    proc = subprocess.Popen([sys.executable, "-c", _publisher_source(module_id, per_tick),
                             str(daemon.runtime_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line == "registered", proc.stderr.read() if proc.stderr else line
        yield proc
    finally:
        proc.kill()
        proc.communicate(timeout=10)


def http_get(url: str, cookie: str | None = None, timeout: float = 10.0
             ) -> tuple[int, bytes, dict[str, str]]:
    """``(status, body, headers)`` of a GET (an HTTP error status is an answer too)."""
    request = urllib.request.Request(url, headers={"Cookie": cookie} if cookie else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def dashboard_url(daemon: DaemonProcess) -> dict[str, Any]:
    """``modcoord dashboard --json``'s answer (asserting it succeeded)."""
    result = daemon.cli("dashboard", "--json")
    assert result.code == 0, (result.out, result.err)
    answer: dict[str, Any] = json.loads(result.out)
    return answer
