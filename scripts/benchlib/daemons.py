"""Daemons under measurement: detached ``modcoord start`` processes, each with its own runtime
directory and config directory, and a control connection for polling ``status``."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import CLI_TIMEOUT, BenchError, user_env

# -- daemons -----------------------------------------------------------------------------------


def _cli() -> list[str]:
    return [sys.executable, "-m", "modcoord.supervisor"]


class Daemon:
    """One detached daemon in ``root/<name>``, started with the config dir ``config_dir``.

    Args:
        root: the bench's temporary directory.
        name: a short name (its runtime directory is ``root/<name>``).
        config_dir: the config directory to start it with.
        extra: more ``modcoord start`` arguments.
    """

    def __init__(self, root: Path, name: str, config_dir: Path, *extra: str) -> None:
        self.name = name
        self.extra = extra  # more ``start`` arguments (``--state-dir D``)
        self.runtime = root / name
        self.state_dir = root / f"{name}-state"  # each daemon its own history
        self.config_dir = config_dir
        self.pid: int | None = None
        self.start_s: float | None = None
        self._stopped = False
        self._client: Any = None

    @property
    def runtime_str(self) -> str:
        return str(self.runtime)

    def start(self) -> float:
        """Run ``modcoord start`` (detached) and return its wall time in seconds.

        Raises:
            BenchError: the command failed or did not finish within 60 s.
        """
        cmd = [*_cli(), "start", "--runtime-dir", str(self.runtime), "--config-dir",
               str(self.config_dir), "--state-dir", str(self.state_dir), *self.extra]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=CLI_TIMEOUT,
                                  env=user_env())
        except subprocess.TimeoutExpired:
            raise BenchError(f"modcoord start ({self.name}) took over {CLI_TIMEOUT} s") from None
        self.start_s = time.perf_counter() - t0
        pidfile = self.runtime / "modcoord.pid"
        with contextlib.suppress(OSError, ValueError):
            self.pid = int(pidfile.read_text().split()[0])
        if proc.returncode != 0:
            raise BenchError(f"modcoord start ({self.name}) exited {proc.returncode}: "
                             f"{proc.stderr.strip()}")
        if self.pid is None:
            raise BenchError(f"modcoord start ({self.name}): no pid in {pidfile}")
        return self.start_s

    def rss(self) -> int:
        """The daemon's resident memory in bytes.

        Raises:
            BenchError: it is not running.
        """
        import psutil

        try:
            return int(psutil.Process(self.pid).memory_info().rss)
        except (psutil.Error, TypeError) as exc:
            raise BenchError(f"cannot read the RSS of daemon {self.name}: {exc}") from None

    ARENA_BYTES = 1 << 20
    """The size of one of pymalloc's arenas (CPython 3.10 and later, 64-bit)."""

    def rss_by_kind(self) -> dict[str, float]:
        """The daemon's resident memory in MB by mapping kind (``/proc/PID/smaps``):
        ``heap`` (glibc's main arena), ``arenas`` (anonymous maps of exactly 1 MiB:
        pymalloc's arenas), ``anon`` (other anonymous maps: glibc's thread arenas, large
        allocations), ``file`` (code and data of files).
        Empty where ``/proc`` is not there."""
        kinds = {"heap": 0, "arenas": 0, "anon": 0, "file": 0}
        kind = "anon"
        try:
            text = Path(f"/proc/{self.pid}/smaps").read_text()
        except OSError:
            return {}
        for line in text.splitlines():
            head = line.split(maxsplit=6)
            if len(head) >= 5 and "-" in head[0] and ":" not in head[0]:
                name = head[5] if len(head) > 5 else ""
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                kind = ("heap" if name == "[heap]" else "file" if name.startswith("/")
                        else "arenas" if not name and hi - lo == self.ARENA_BYTES else "anon")
            elif head and head[0] == "Rss:":
                kinds[kind] += int(head[1])
        return {k: round(v / 1024, 1) for k, v in kinds.items()}

    def cpu_seconds(self) -> float:
        """User + system CPU time the daemon has used."""
        import psutil

        times = psutil.Process(self.pid).cpu_times()
        return float(times.user + times.system)

    def run_seconds(self) -> float:
        """CPU time the daemon's threads have run, to the nanosecond: the sum of each
        thread's ``/proc/PID/task/TID/schedstat`` (user + system time count in 10 ms ticks,
        too coarse for a 30 ms flush); :meth:`cpu_seconds` where there is no schedstat.
        A thread that ends between two readings takes its time with it."""
        tasks = f"/proc/{self.pid}/task"
        try:
            tids = os.listdir(tasks)
        except OSError:
            return self.cpu_seconds()
        total = 0
        for tid in tids:
            try:
                with open(f"{tasks}/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                continue  # the thread ended
        return total / 1e9

    def client(self) -> Any:
        """The bench's own (control) connection to this daemon."""
        if self._client is None:
            from modcoord.supervisor.client import connect

            self._client = connect(runtime_dir=self.runtime, timeout=30.0, name="bench",
                                   reconnect=False)
        return self._client

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.client().status().get(timeout=30)
        return result

    def wait_for(self, condition: Callable[[dict[str, Any]], bool], what: str,
                 timeout: float = 30.0) -> dict[str, Any]:
        """Poll ``status`` until ``condition(status)`` holds.

        Raises:
            BenchError: it did not within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if condition(status):
                return status
            if time.monotonic() > deadline:
                raise BenchError(f"daemon {self.name}: {what} not reached within {timeout} s")
            time.sleep(0.02)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the daemon (idempotent, never raises): a ``stop`` request (what ``modcoord
        stop`` sends), then wait until it releases its pidfile lock; SIGTERM, then SIGKILL,
        if it does not within ``timeout``.

        ``modcoord stop`` itself is not used because it also waits for the exited daemon
        to be reaped by init, which takes about 2 s in some containers, and its
        interpreter start would compete for CPU with the next measurement.
        """
        if self._stopped or self.pid is None:
            return
        self._stopped = True
        from modcoord.supervisor.daemon.process import is_locked

        with contextlib.suppress(Exception):
            self.client().stop().get(timeout=timeout)
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None
        pidfile = self.runtime / "modcoord.pid"
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None:
                with contextlib.suppress(OSError):
                    os.kill(self.pid, sig)
            deadline = time.monotonic() + (timeout if sig is None else 10.0)
            while time.monotonic() < deadline:
                if not is_locked(pidfile) or not _running(self.pid):
                    return
                time.sleep(0.01)


def _running(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def make_config_dir(root: Path, name: str, hybrid: dict[str, dict[str, Any]] | None = None,
                    daemon: dict[str, dict[str, Any]] | None = None) -> Path:
    """Copy the packaged configs to ``root/configs-<name>``, overriding HYBRID sections
    (``hybrid``) and ``daemon.yaml`` sections (``daemon``).

    Raises:
        BenchError: the packaged configs cannot be read.
    """
    import yaml

    from modcoord.supervisor.daemon.config import default_config_dir, load_config_dir

    target = root / f"configs-{name}"
    target.mkdir(parents=True)
    for f in default_config_dir().glob("*.yaml"):
        shutil.copy(f, target / f.name)
    for stem, changes in (("hybrid", hybrid), ("daemon", daemon)):
        if not changes:
            continue
        path = target / f"{stem}.yaml"
        data = yaml.safe_load(path.read_text()) or {}
        for section, values in changes.items():
            data.setdefault(section, {}).update(values)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        load_config_dir(target)
    except Exception as exc:
        raise BenchError(f"bench config {name} is invalid: {exc}") from None
    return target
