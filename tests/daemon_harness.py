"""The one daemon harness: a real daemon process for integration tests, the CLI run as a
real process, config edits and the daemon's log records.

``DaemonProcess`` runs ``modcoord start --foreground`` in a fresh runtime directory with
its own copy of the packaged configs, edited per test (``configs=``, :meth:`edit_config`).
The ``daemon`` and ``daemon_factory`` fixtures (conftest.py) make and stop them. Every wait
is bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from modcoord.supervisor.daemon.config import default_config_dir

__all__ = ["ALIAS_BOMB", "CLI", "CliResult", "DaemonFactory", "DaemonProcess", "copy_configs",
           "edited_yaml", "file_records", "gone", "module_script", "receive_answer", "records",
           "run_cli",
           "start_daemon", "startswith", "wait_for", "wait_record"]

CLI = [sys.executable, "-m", "modcoord.supervisor"]

#: A poisoned config file: 8 levels of 9 YAML aliases, 9**8 (43 million) strings once
#: expanded (~1 GiB as a repr).
ALIAS_BOMB = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
debounce:
  delay_ms: [*g,*g,*g,*g,*g,*g,*g,*g,*g]
"""


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


def module_script(module_id: str, body: str,
                  modes: tuple[str, ...] = ("MANUAL", "HYBRID", "FULLY_AUTO")) -> str:
    """The source of a module process (``python -c``): it connects to the daemon of the
    runtime directory ``sys.argv[1]``, registers a module ``module_id`` of ``modes`` that
    subscribes to nothing and answers ``on_mode_change`` with ``{"ok": True}``, then runs
    ``body`` with ``client`` connected (``sys`` and ``time`` imported; the body's own
    arguments are ``sys.argv[2:]``)."""
    return (textwrap.dedent(f"""\
        import sys, time
        from modcoord.supervisor import connect

        class Module:
            module_id = {module_id!r}
            name = {module_id!r}
            supported_modes = {list(modes)!r}
            subscribe = []

            def on_mode_change(self, mode, strategy, context):
                return {{"ok": True}}

            def on_batch(self, batch):
                pass

        with connect(runtime_dir=sys.argv[1], timeout=10, reconnect=False) as client:
            client.register(Module()).get(10)
        """) + textwrap.indent(textwrap.dedent(body).strip("\n"), "    ") + "\n")


def receive_answer(conn: Any, what: str, timeout: float) -> Any:
    """The next ``(kind, value)`` answer a child process sends on its pipe ``conn``.

    Raises AssertionError naming ``what`` when nothing comes within ``timeout`` seconds or
    the child answers ``("error", message)``.
    """
    if not conn.poll(timeout):
        raise AssertionError(f"{what}: no answer in {timeout} s")
    kind, value = conn.recv()
    if kind == "error":
        raise AssertionError(f"{what} failed: {value}")
    return value


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


def _merge(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def edited_yaml(path: Path, changes: Mapping[str, Any]) -> str:
    """The text of the YAML file ``path`` with ``changes`` merged in (section by section)."""
    return yaml.safe_dump(_merge(yaml.safe_load(path.read_text()) or {}, changes),
                          sort_keys=False)


def copy_configs(target: Path) -> Path:
    """Copy the packaged config files into ``target`` (made if missing); ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    for f in default_config_dir().glob("*.yaml"):
        shutil.copy(f, target / f.name)
    return target


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie waiting for its parent to reap it counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


class DaemonProcess:
    """``modcoord start --foreground`` as a child process.

    Args:
        root: a temporary directory; ``root/run`` is the runtime dir, ``root/configs``
            a copy of the packaged configs (kept if it exists already).
        extra: more ``start`` arguments (``--mode``, ``--allow-fault-injection``...).
        env: variables added to the daemon's environment.
        configs: changes merged into config files by stem, e.g.
            ``{"hybrid": {"cache": {"ttl_ms": 10}}, "daemon": {"logs": {"max_bytes": 4096}}}``.
        preexec_fn: run in the child before the daemon starts (e.g. to set an rlimit).
    """

    def __init__(self, root: Path, *extra: str, env: dict[str, str] | None = None,
                 configs: Mapping[str, Mapping[str, Any]] | None = None,
                 preexec_fn: Callable[[], None] | None = None) -> None:
        self.root = root
        self.runtime_dir = root / "run"
        self.config_dir = root / "configs"
        if not self.config_dir.exists():
            copy_configs(self.config_dir)
            # A dashboard turned on by a test binds any free port, never the default one
            # (tests run in parallel); a test's own ``configs`` may still set another.
            self.edit_config("daemon", {"dashboard": {"port": 0}})
        for stem, changes in (configs or {}).items():
            self.edit_config(stem, changes)
        self.extra = extra
        self.env = env or {}
        self.preexec_fn = preexec_fn
        self.proc: subprocess.Popen[str] | None = None
        #: The daemon's stderr (its human log lines) goes to this file, not to a pipe that
        #: nobody reads and that would block the daemon once full.
        self.stderr_file = root / "daemon.stderr"

    def stderr_text(self) -> str:
        """What the daemon wrote on stderr so far."""
        try:
            return self.stderr_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def edit_config(self, stem: str, changes: Mapping[str, Any]) -> Path:
        """Merge ``changes`` into ``configs/<stem>.yaml`` (section by section); its path."""
        path = self.config_dir / f"{stem}.yaml"
        path.write_text(edited_yaml(path, changes))
        return path

    @property
    def socket(self) -> Path:
        return self.runtime_dir / "modcoord.sock"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def log_file(self) -> Path:
        return self.runtime_dir / "modcoord.jsonl"

    def start(self, timeout: float = 15.0) -> DaemonProcess:
        """Start and wait until it answers ``status``."""
        cmd = [*CLI, "start", "--foreground", "--runtime-dir", str(self.runtime_dir),
               "--config-dir", str(self.config_dir), *self.extra]
        if "--state-dir" not in self.extra:  # each daemon its own history
            cmd += ["--state-dir", str(self.state_dir)]
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.stderr_file, "ab") as err:
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.DEVNULL, stderr=err, text=True,
                env={**os.environ, **self.env}, start_new_session=True,
                preexec_fn=self.preexec_fn,
            )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 15.0) -> None:
        from modcoord.supervisor.client import connect

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"daemon exited with {self.proc.returncode}: {self.stderr_text()}")
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


DaemonFactory = Callable[..., DaemonProcess]  # the ``daemon_factory`` fixture (conftest.py)


def start_daemon(factory: DaemonFactory, root: Path, *extra: str,
                 **files: dict[str, Any]) -> DaemonProcess:
    """Start a daemon on a copy of the packaged configs with ``files`` merged in, e.g.
    ``hybrid={"cache": {"ttl_ms": 10}}`` or ``daemon={"logs": {"max_bytes": 4096}}``."""
    return factory(*extra, root=root, configs=files)


def file_records(log_dir: Path) -> list[dict[str, Any]]:
    """Every complete record of the log files (current and rotated), read directly."""
    out: list[dict[str, Any]] = []
    paths = sorted(p for p in log_dir.glob("modcoord*.jsonl") if p.name != "modcoord.jsonl")
    paths.append(log_dir / "modcoord.jsonl")
    for path in paths:
        try:
            text = path.read_text()
        except FileNotFoundError:
            continue
        for line in text.split("\n")[:-1]:  # the last piece may be a line being written
            out.append(json.loads(line))
    return out


def _matches(rec: dict[str, Any], match: dict[str, Any]) -> bool:
    for key, want in match.items():
        value = rec.get(key)
        if callable(want):
            if not want(value):
                return False
        elif value != want:
            return False
    return True


def records(daemon: DaemonProcess, **match: Any) -> list[dict[str, Any]]:
    """The daemon's log records whose fields equal (or satisfy, for callables) ``match``."""
    return [r for r in file_records(daemon.log_file.parent) if _matches(r, match)]


def wait_record(daemon: DaemonProcess, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
    """The first log record matching ``match``, waiting for it up to ``timeout``."""
    found: list[dict[str, Any]] = wait_for(lambda: records(daemon, **match), timeout,
                                           message=f"a log record {match}")
    return found[0]


def startswith(prefix: str) -> Callable[[Any], bool]:
    """A ``records`` matcher: the field is a string starting with ``prefix``."""
    return lambda value: isinstance(value, str) and value.startswith(prefix)
