"""The daemon process: lifecycle, pidfile lock, signals, readiness.

``modcoord start`` runs :func:`run` in the foreground or :func:`spawn` to detach. The
contract (docs/REFERENCE.md, "Commands"):

- One daemon per runtime directory, enforced by an exclusive ``flock`` on
  ``modcoord.pid``. The kernel drops the lock when the process dies, so a stale pidfile
  left by a killed daemon never blocks a new start.
- Ready means listening: the detached parent returns only then (through a pipe), and
  under systemd ``READY=1`` is sent to ``$NOTIFY_SOCKET``.
- SIGTERM/SIGINT stop gracefully (flush pending updates to connected subscribers, then
  close the socket); a second one forces an immediate exit (code 1). SIGHUP reloads.
- Exit codes: 0 stopped cleanly, 1 failure (including escalation by the supervisor),
  78 invalid config or unsafe/unusable runtime or log directory at start.
- Files: the runtime and log directories must belong to the daemon's user and not be
  writable by group or others (checked before detaching); the pidfile and the log file
  are opened with ``O_NOFOLLOW`` and must be regular files; ``daemon.json`` is written to a
  temporary file and renamed into place (see :mod:`modcoord.supervisor.protocol.paths`).
- Whatever fails before the daemon is ready is reported at once through the readiness
  pipe: ``start`` prints it and exits with its code.
- A detached daemon keeps none of its caller's file descriptors: stdin, stdout and stderr
  are ``/dev/null`` and everything else inherited is closed (:func:`detach_descriptors`),
  so ``out=$(modcoord start 4>&1)`` returns as soon as ``start`` does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import functools
import gc
import json
import os
import signal
import stat
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger

from modcoord.actors.errors import ConfigError, ModcoordError
from modcoord.supervisor.exitcodes import ExitCode
from modcoord.supervisor.protocol.paths import (
    UnsafePathError,
    check_writable_dir,
    open_for_writing,
    prepare_private_dir,
    resolve_state_dir,
    write_file_atomic,
)

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAILURE",
    "EXIT_NOT_RUNNING",
    "EXIT_OK",
    "EXIT_USAGE",
    "DaemonOptions",
    "PidLock",
    "detach_descriptors",
    "preflight",
    "prepare_runtime_dir",
    "run",
    "spawn",
]

# The exit codes' one home is modcoord.supervisor.exitcodes; these names are its members.
EXIT_OK = int(ExitCode.OK)
EXIT_FAILURE = int(ExitCode.FAILURE)
EXIT_USAGE = int(ExitCode.USAGE)
EXIT_NOT_RUNNING = int(ExitCode.NOT_RUNNING)
EXIT_CONFIG = int(ExitCode.CONFIG)

STATE_FILE = "daemon.json"


@dataclass(frozen=True)
class DaemonOptions:
    """What ``modcoord start`` was given."""

    runtime_dir: Path
    config_dir: Path | None = None
    mode: str | None = None
    log_dir: Path | None = None
    allow_fault_injection: bool = False
    state_dir: Path | None = None
    """The state directory (the history database); ``None``: :func:`resolve_state_dir`."""


class AlreadyRunningError(ModcoordError):
    """Another daemon holds the runtime directory's pidfile lock."""


def prepare_runtime_dir(path: Path) -> Path:
    """Create the runtime directory with mode 0700 (removing group/other read bits if it
    exists).

    Raises:
        UnsafePathError: it is not a directory, belongs to another user or is writable by
            group or others (the message names it, its owner and mode).
    """
    return prepare_private_dir(path, "runtime directory", tighten=True)


def preflight(options: DaemonOptions) -> tuple[Path, Path]:
    """Prepare and check the runtime, state and log directories: what ``start`` does before it
    detaches (so that a bad directory fails at once, exit 78), and the daemon again.

    Returns:
        ``(runtime_dir, log_dir)``; the log directory defaults to the runtime directory.

    A state directory the daemon cannot write into (a read-only file system) is no reason
    to refuse: the history is then kept in memory (:func:`state_dir_problem`).

    Raises:
        UnsafePathError: a directory cannot be created, is not a directory, belongs to
            another user, is writable by group or others, or (but the state directory)
            cannot be written.
    """
    runtime = prepare_runtime_dir(options.runtime_dir)
    check_writable_dir(runtime, "runtime directory")
    prepare_private_dir(resolve_state_dir(options.state_dir), "state directory", tighten=True)
    if options.log_dir is None:
        return runtime, runtime
    log_dir = prepare_private_dir(options.log_dir, "log directory", tighten=False)
    check_writable_dir(log_dir, "log directory")
    return runtime, log_dir


def state_dir_problem(state_dir: Path) -> str | None:
    """Why the daemon cannot write into ``state_dir`` (read-only, no permission), or
    ``None``: the history then starts memory-only, saying why, rather than the daemon
    refusing to start."""
    try:
        check_writable_dir(state_dir, "state directory")
    except UnsafePathError as exc:
        return str(exc)
    return None


class PidLock:
    """An exclusive ``flock`` on the pidfile, holding our pid."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock and write our pid.

        Raises:
            AlreadyRunningError: another live process holds it.
            UnsafePathError: the pidfile is a symlink or not a regular file (never written
                through), or cannot be opened.
        """
        fd = open_for_writing(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                pid = read_pid(self.path)
                raise AlreadyRunningError(
                    f"modcoord is already running (pid {pid}) on {self.path.parent}"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None


def _open_pidfile(path: Path) -> int:
    """Open a pidfile for reading: not through a symlink, never blocking (a planted FIFO).

    Raises:
        OSError: missing, a symlink (ELOOP), or not a regular file (EINVAL).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    return fd


def read_pid(path: Path) -> int | None:
    """The pid in a pidfile, or None (also if it is a symlink or not a regular file)."""
    try:
        fd = _open_pidfile(path)
    except OSError:
        return None
    try:
        return int(os.read(fd, 64).decode().strip() or 0) or None
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def is_locked(path: Path) -> bool:
    """Whether a live daemon holds the pidfile lock (a symlink or non-regular file at the
    pidfile's name is never a daemon's: False)."""
    try:
        fd = _open_pidfile(path)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


class _Daemon:
    def __init__(self, options: DaemonOptions, log_to_stderr: bool = False) -> None:
        self.options = options
        self.log_to_stderr = log_to_stderr
        self.stop_requested = threading.Event()
        self.exit_code = EXIT_OK
        self._signals = 0

    def request_stop(self, code: int = EXIT_OK) -> None:
        if code:
            self.exit_code = code
        self.stop_requested.set()

    def _on_term(self, signum: int, frame: Any) -> None:
        self._signals += 1
        if self._signals > 1:
            os.write(2, b"modcoord: second signal, forcing exit\n")
            os._exit(EXIT_FAILURE)
        logger.bind(actor="daemon").info("stopping gracefully",
                                         signal=signal.Signals(signum).name)
        self.stop_requested.set()

    def run(self, ready: Any) -> int:
        from modcoord.supervisor.daemon.config import load_config_dir, normalize_mode
        from modcoord.supervisor.daemon.controller import Controller
        from modcoord.supervisor.daemon.engine import Engine, create_engine
        from modcoord.supervisor.daemon.exporting import ExporterRunner
        from modcoord.supervisor.daemon.logs import setup_logging, shutdown_logging
        from modcoord.supervisor.daemon.reload import ConfigWatcher, Reloader
        from modcoord.supervisor.daemon.server import Server, raise_nofile_limit
        from modcoord.supervisor.daemon.systemd import sd_notify
        from modcoord.supervisor.protocol import paths

        opts = self.options
        # Timers must stay punctual while the I/O thread is busy: a thread woken by a
        # timer waits for the GIL up to the switch interval (5 ms by default).
        sys.setswitchinterval(0.0005)
        # Full (generation 2) collections scan every live object: with 100,000 pending
        # updates that is a 20-30 ms stop of every thread, which would make timers late.
        # Young generations are collected as usual; full collections run in the memory
        # manager's cleanups (every memory.cleanup_interval_ms) and under pressure.
        gc.set_threshold(700, 10, 1_000_000)
        try:
            runtime, log_dir = preflight(opts)
            state_dir = resolve_state_dir(opts.state_dir)
        except UnsafePathError as exc:
            ready.fail(EXIT_CONFIG, str(exc))
            return EXIT_CONFIG
        try:
            config = load_config_dir(opts.config_dir)
            mode = normalize_mode(opts.mode or config.daemon.default_mode)
        except ConfigError as exc:
            ready.fail(EXIT_CONFIG, f"invalid config: {exc}")
            return EXIT_CONFIG
        lock = PidLock(paths.pidfile_path(runtime))
        try:
            lock.acquire()
        except AlreadyRunningError as exc:
            ready.fail(EXIT_FAILURE, str(exc))
            return EXIT_FAILURE
        except UnsafePathError as exc:
            ready.fail(EXIT_CONFIG, str(exc))
            return EXIT_CONFIG
        coordinator: Engine | None = None
        server: Server | None = None
        watcher: ConfigWatcher | None = None
        http: Any = None  # a MetricsHTTPServer, when metrics are enabled
        exporters: ExporterRunner | None = None
        state_file = runtime / STATE_FILE
        reloader: Reloader | None = None
        history: Any = None  # a HistoryRecorder, when history is enabled
        controller: Controller | None = None
        try:
            holder: dict[str, Any] = {}
            setup_logging(
                log_dir, level=config.daemon.logs.level, max_bytes=config.daemon.logs.max_bytes,
                keep=config.daemon.logs.keep,
                context=lambda: {"mode": holder["c"].mode if "c" in holder else mode},
                also_stderr=self.log_to_stderr,
            )
            log = logger.bind(actor="daemon")
            coordinator = create_engine(
                config, mode=mode, fault_injection=opts.allow_fault_injection,
                on_escalate=lambda reason: self.request_stop(EXIT_FAILURE),
            )
            holder["c"] = coordinator
            coordinator.start()
            config_dir = config.directory

            reloader = Reloader(lambda: load_config_dir(config_dir), coordinator.apply_config,
                                notify=sd_notify)
            reloader.prime(config)
            sock = runtime / config.daemon.socket
            info = {"runtime_dir": str(runtime), "socket": str(sock), "log_dir": str(log_dir),
                    "config_dir": str(config_dir), "state_dir": str(state_dir)}
            controller = Controller(coordinator, reloader=reloader,
                                    request_stop=self.request_stop, daemon_info=info,
                                    history_pending=True)
            if sock.exists() or sock.is_symlink():
                sock.unlink()  # stale: we hold the lock, so no daemon owns it
            nofile_before, nofile = raise_nofile_limit()
            log.info("open files limit", limit=nofile, soft_limit_was=nofile_before)
            output = config.daemon.output
            server = Server(controller, str(sock), max_frame_bytes=config.daemon.max_frame_bytes,
                            drain_timeout=config.daemon.shutdown_timeout_s,
                            frame_timeout_s=config.daemon.frame_timeout_s,
                            max_input_bytes=config.daemon.max_input_buffer_bytes,
                            max_buffer_bytes=output.max_connection_bytes,
                            output_budget_bytes=output.max_total_bytes,
                            output_stall_s=output.stall_timeout_s)
            server.start()
            controller.server = server
            def on_change() -> None:
                assert reloader is not None
                reloader.submit("file change")  # runs on the reloader's thread

            watcher = ConfigWatcher(Path(config_dir), on_change)
            watcher.start()
            if config.daemon.metrics.enabled:  # prometheus_client is imported only then
                from modcoord.supervisor.daemon.metrics_endpoint import MetricsHTTPServer

                http = MetricsHTTPServer(config.daemon.metrics.host, config.daemon.metrics.port,
                                         controller.exposition)
                info["metrics_port"] = str(http.start())
            # Never fails the start: a port in use is logged and shown in status. Off, its
            # module (and http.server) is imported only by the first ``dashboard`` call.
            controller.dashboard_factory = functools.partial(
                _make_dashboard, controller, config.daemon.dashboard, runtime)
            if config.daemon.dashboard.enabled:
                controller.dashboard = controller.dashboard_factory()
                controller.dashboard.start()
            write_file_atomic(state_file, json.dumps({"pid": os.getpid(), **info}).encode())
            signal.signal(signal.SIGTERM, self._on_term)
            signal.signal(signal.SIGINT, self._on_term)
            signal.signal(signal.SIGHUP, lambda s, f: threading.Thread(
                target=reloader.submit, args=("SIGHUP",), daemon=True).start())
            # The record's own ``pid`` and ``mode`` fields say which daemon and mode.
            log.bind(socket=str(sock)).info("daemon ready")
            ready.ok(os.getpid(), str(sock))
            sd_notify(f"READY=1\nMAINPID={os.getpid()}")
            # Ready as soon as the socket serves; what requests do not need starts after:
            # the history (opening its database is disk I/O), the exporters, and the
            # full collection that lets later ones skip what start-up built.
            history = _start_history(controller, config, state_dir)
            exporters = ExporterRunner(coordinator.plugins,
                                       lambda: controller.exposition.registry.collect())
            exporters.start()
            gc.collect()
            gc.freeze()  # what start-up built lives for ever: later collections skip it
            while not self.stop_requested.wait(0.5):
                pass
            log.info("daemon stopping")
            sd_notify("STOPPING=1")
            return self.exit_code
        except UnsafePathError as exc:  # the log file or daemon.json
            logger.bind(actor="daemon", path=exc.path, error=str(exc)).critical("daemon failed")
            ready.fail(EXIT_CONFIG, str(exc))
            self.exit_code = EXIT_CONFIG
            return EXIT_CONFIG
        except Exception as exc:
            logger.bind(actor="daemon", error=str(exc)).opt(exception=True).critical(
                "daemon failed")
            ready.fail(EXIT_FAILURE, f"daemon failed: {exc}")
            self.exit_code = EXIT_FAILURE
            return EXIT_FAILURE
        finally:
            if history is not None:
                history.stop()
            if watcher is not None:
                watcher.stop()
            if reloader is not None:
                reloader.close()
            if http is not None:
                http.stop()
            if controller is not None and controller.dashboard is not None:
                controller.dashboard.stop()
            if exporters is not None:
                exporters.stop()
            if server is not None:
                server.pause_reading()  # refuse new requests; deliveries still go out
            if coordinator is not None:
                coordinator.stop(timeout=config.daemon.shutdown_timeout_s)
            if server is not None:
                server.stop()
            state_file.unlink(missing_ok=True)
            logger.bind(actor="daemon").info("daemon stopped", exit_code=self.exit_code)
            shutdown_logging()
            lock.release()


def _make_dashboard(controller: Any, settings: Any, runtime: Path) -> Any:
    """The dashboard page's server, not yet listening (its module imported only now)."""
    from modcoord.supervisor.daemon.dashboard import Dashboard

    return Dashboard(controller, settings, runtime)


def _start_history(controller: Any, config: Any, state_dir: Path) -> Any:
    """Start the performance history; ``None`` (and neither sqlite3 nor the sampler
    imported) when ``history.enabled`` is false. Sets ``controller.history_settled``
    whatever happens (an unusable database gives a memory-only history, see
    :func:`~modcoord.supervisor.daemon.sampling.start_history`)."""
    try:
        if not config.daemon.history.enabled:
            return None
        from modcoord.supervisor.daemon.sampling import start_history

        return start_history(controller, config.daemon.history, state_dir,
                             unusable=state_dir_problem(state_dir))
    finally:
        controller.history_settled.set()


class _Ready:
    """Reports readiness (or failure) to whoever started us."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def _send(self, text: str) -> None:
        if self.fd is None:
            return
        data = memoryview(text.encode() + b"\n")
        try:
            while data:  # the reader reads to EOF: the message may span lines
                data = data[os.write(self.fd, data):]
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None

    def ok(self, pid: int, sock: str) -> None:
        self._send(f"READY {pid} {sock}")

    def fail(self, code: int, message: str) -> None:
        if self.fd is None:
            print(f"modcoord: {message}", file=sys.stderr)
        self._send(f"ERROR {code} {message}")


def run(options: DaemonOptions, ready_fd: int | None = None) -> int:
    """Run the daemon in this process until it is stopped; returns the exit code.

    Whatever fails before the daemon is ready is reported to ``ready_fd`` (or printed on
    stderr without one) as ``ERROR <code> <message>``; an unexpected exception gives 1.
    """
    from modcoord.supervisor.daemon.logs import stderr_is_journal

    ready = _Ready(ready_fd)
    # Human lines on stderr in the foreground, and whenever stderr is the journal (a
    # detached daemon keeps that stderr, see spawn); never to the /dev/null of a detached one.
    to_stderr = ready_fd is None or stderr_is_journal()
    try:
        return _Daemon(options, log_to_stderr=to_stderr).run(ready)
    except Exception as exc:
        ready.fail(EXIT_FAILURE, f"daemon failed: {type(exc).__name__}: {exc}")
        return EXIT_FAILURE


def detach_descriptors(keep: tuple[int, ...] = (), keep_stderr: bool = False) -> None:
    """Let go of every file descriptor inherited from the caller: stdin, stdout and stderr
    go to ``/dev/null`` and every other descriptor is closed except those in ``keep`` (the
    readiness pipe). A caller that reads one of its descriptors to EOF (``out=$(modcoord
    start 4>&1)``, a CI runner, an ssh wrapper) then gets it as soon as ``start`` returns,
    not when the daemon stops. With ``keep_stderr`` (stderr is the journal's stream, which
    no caller reads to EOF) stderr stays as it is, so the daemon's log lines reach the
    journal.

    Run in the detached child before the daemon opens anything of its own.

    Raises:
        OSError: ``/dev/null`` cannot be opened or duplicated (the child then exits 1 and
            ``start`` reports that the daemon exited before it was ready).
    """
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1) if keep_stderr else (0, 1, 2):
        os.dup2(devnull, fd)
    kept = sorted({0, 1, 2, *keep})
    low = 0
    for fd in kept:  # close the gaps between the kept descriptors (devnull's included)
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, max(low, _max_fd()))


def _max_fd() -> int:
    """One above the highest descriptor number this process may hold (the hard limit
    too: a descriptor opened before the soft limit was lowered stays open)."""
    import resource

    limits = [int(v) for v in resource.getrlimit(resource.RLIMIT_NOFILE)
              if v != resource.RLIM_INFINITY and v > 0]
    return max([*limits, int(os.sysconf("SC_OPEN_MAX")), 3])


def spawn(options: DaemonOptions, timeout: float = 15.0) -> tuple[int, str]:
    """Start a detached daemon (double fork, new session) and wait until it is ready.

    The runtime and log directories are checked first (:func:`preflight`), in this
    process; what fails later, before the daemon is ready, comes back through the
    readiness pipe at once.

    Returns:
        ``(exit_code, text)``: ``(0, "pid socket")`` when ready, else the daemon's code and
        error text (78 for an invalid config or an unsafe or unusable directory or file, 1
        otherwise).
    """
    # The daemon changes to "/": relative paths are made absolute first.
    options = dataclasses.replace(
        options, runtime_dir=Path(os.path.abspath(options.runtime_dir)),
        config_dir=None if options.config_dir is None else Path(
            os.path.abspath(options.config_dir)),
        log_dir=None if options.log_dir is None else Path(os.path.abspath(options.log_dir)),
        state_dir=Path(os.path.abspath(resolve_state_dir(options.state_dir))))
    try:
        preflight(options)
    except UnsafePathError as exc:
        return EXIT_CONFIG, str(exc)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # first child
        os.close(r)
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        from modcoord.supervisor.daemon.logs import stderr_is_journal

        detach_descriptors(keep=(w,), keep_stderr=stderr_is_journal())
        os.chdir("/")
        code = EXIT_FAILURE
        try:
            code = run(options, ready_fd=w)
        finally:
            os._exit(code)
    os.close(w)
    os.waitpid(pid, 0)
    deadline = time.monotonic() + timeout
    buf = b""
    import select

    eof = False
    while time.monotonic() < deadline:
        readable, _, _ = select.select([r], [], [], max(0.0, deadline - time.monotonic()))
        if not readable:
            break
        chunk = os.read(r, 4096)
        if not chunk:
            eof = True
            break
        buf += chunk
    os.close(r)
    line = buf.decode(errors="replace").strip()
    if line.startswith("READY "):
        return EXIT_OK, line[len("READY "):]
    if line.startswith("ERROR "):
        _, code_text, message = line.split(" ", 2)
        return int(code_text), message
    if eof:
        return EXIT_FAILURE, "daemon exited before reporting ready (see its log)"
    return EXIT_FAILURE, f"daemon did not report ready within {timeout:.0f} s"
