"""A real daemon process for integration tests, and the CLI run as a real process.

``DaemonProcess`` runs ``modcoord start --foreground`` in a fresh runtime directory with
its own copy of the packaged configs, so tests can edit them. Every wait is bounded.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modcoord.supervisor.daemon.config import default_config_dir

__all__ = ["CliResult", "DaemonProcess", "run_cli", "wait_for"]

CLI = [sys.executable, "-m", "modcoord.supervisor"]


def wait_for(condition: Any, timeout: float = 10.0, interval: float = 0.02,
             message: str = "condition") -> Any:
    """Poll ``condition()`` until it returns something truthy; bounded by ``timeout``.

    Raises:
        AssertionError: the condition did not hold within ``timeout``.
    """
    import time

    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        pause.wait(interval)


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def run_cli(*args: str, runtime_dir: Path | None = None, timeout: float = 30.0,
            env: dict[str, str] | None = None) -> CliResult:
    """Run ``modcoord ARGS`` as a real process."""
    cmd = [*CLI, *args]
    if runtime_dir is not None:
        cmd += ["--runtime-dir", str(runtime_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


class DaemonProcess:
    """``modcoord start --foreground`` as a child process.

    Args:
        root: a temporary directory; ``root/run`` is the runtime dir, ``root/configs``
            a copy of the packaged configs.
        extra: more ``start`` arguments (``--mode``, ``--allow-fault-injection``...).
    """

    def __init__(self, root: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.runtime_dir = root / "run"
        self.config_dir = root / "configs"
        if not self.config_dir.exists():
            self.config_dir.mkdir(parents=True)
            for f in default_config_dir().glob("*.yaml"):
                shutil.copy(f, self.config_dir / f.name)
        self.extra = extra
        self.env = env or {}
        self.proc: subprocess.Popen[str] | None = None

    @property
    def socket(self) -> Path:
        return self.runtime_dir / "modcoord.sock"

    @property
    def log_file(self) -> Path:
        return self.runtime_dir / "modcoord.jsonl"

    def start(self, timeout: float = 15.0) -> DaemonProcess:
        """Start and wait until it answers ``status``."""
        cmd = [*CLI, "start", "--foreground", "--runtime-dir", str(self.runtime_dir),
               "--config-dir", str(self.config_dir), *self.extra]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **self.env}, start_new_session=True,
        )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 15.0) -> None:
        from modcoord.supervisor.client import connect

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"daemon exited with {self.proc.returncode}: {self.proc.stderr.read()}"  # type: ignore[union-attr]
                )
            if not self.socket.exists():
                return False
            try:
                with connect(runtime_dir=self.runtime_dir, timeout=2, reconnect=False) as c:
                    c.status().get(timeout=5)
                return True
            except Exception:
                return False

        wait_for(ready, timeout, message="daemon ready")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def cli(self, *args: str, timeout: float = 30.0) -> CliResult:
        return run_cli(*args, runtime_dir=self.runtime_dir, timeout=timeout)

    def connect(self, **kwargs: Any) -> Any:
        from modcoord.supervisor.client import connect

        kwargs.setdefault("timeout", 5.0)
        return connect(runtime_dir=self.runtime_dir, **kwargs)

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL if it does not exit within 20 s)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
