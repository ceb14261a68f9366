"""Live config reloads: watching the config directory, and applying a new config safely.

:class:`ConfigWatcher` watches the config *directory* (editors save by writing a temporary
file and renaming it over the old one, which a watch on the file itself would lose) with
watchdog's inotify observer, and coalesces a burst of events on ``*.yaml`` files into one
``on_change()`` call, ``debounce_s`` after the last of them.

:class:`Reloader` does one reload: load and validate the whole directory, skip it when
nothing changed (same digest), otherwise apply it. An invalid config is rejected as a
whole: the running config stays, the error (file, key, problem) is kept as ``last_error``
until a later load succeeds, and it is logged. Under systemd every reload is bracketed by
``RELOADING=1`` (with ``MONOTONIC_USEC``) and ``READY=1`` notifications; the shipped unit
(``Type=notify``) reloads with ``ExecReload=modcoord reload``, which waits for the outcome
and exits 1 on a rejected config, so ``systemctl reload`` reports it.

In the daemon every reload (a ``reload`` request, SIGHUP, a file change) runs on the
reloader's own thread (:meth:`Reloader.submit`), one at a time, with at most one more
queued behind it. A ``reload`` request waits for its outcome at most
:data:`RELOAD_WAIT_S` (:meth:`Reloader.request`) and only one request waits at a time, so a
reload that hangs can hold at most one control thread, and only for that long: ``status``
and ``stop`` always get through.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger
from watchdog.events import (
    EVENT_TYPE_CREATED,
    EVENT_TYPE_DELETED,
    EVENT_TYPE_MODIFIED,
    EVENT_TYPE_MOVED,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from modcoord.actors.clock import Clock, MonotonicClock, TimerHandle
from modcoord.actors.errors import ConfigError
from modcoord.supervisor.daemon.config import ConfigSet
from modcoord.supervisor.daemon.systemd import reloading_state, sd_notify

__all__ = [
    "RELOAD_WAIT_S",
    "ConfigWatcher",
    "ReloadResult",
    "Reloader",
    "ReloaderStatistics",
    "WatcherStatistics",
    "is_config_file",
]

#: How long a ``reload`` request waits for the outcome before answering "still running".
RELOAD_WAIT_S = 5.0

_RELEVANT_EVENTS = frozenset(
    (EVENT_TYPE_CREATED, EVENT_TYPE_MODIFIED, EVENT_TYPE_MOVED, EVENT_TYPE_DELETED)
)


def is_config_file(path: str | os.PathLike[str]) -> bool:
    """Return True if ``path`` names a config file: ``*.yaml``, not hidden (``.#x.yaml``)."""
    name = os.path.basename(os.fsdecode(path))
    return name.endswith(".yaml") and not name.startswith(".")


# --------------------------------------------------------------------------- watcher


@dataclass(frozen=True)
class WatcherStatistics:
    """Counts of a :class:`ConfigWatcher`.

    Attributes:
        events: paths notified (relevant or not).
        relevant: of those, config files.
        changes: ``on_change`` calls made.
        failures: ``on_change`` calls that raised.
        pending: whether a coalesced change is waiting for the quiet period to end.
        running: whether the filesystem observer runs.
    """

    events: int
    relevant: int
    changes: int
    failures: int
    pending: bool
    running: bool


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: ConfigWatcher) -> None:
        super().__init__()
        self._watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or event.event_type not in _RELEVANT_EVENTS:
            return
        paths = [event.src_path]
        dest = getattr(event, "dest_path", "")
        if dest:
            paths.append(dest)
        for path in paths:
            if self._watcher.notify(os.fsdecode(path)):
                break


class ConfigWatcher:
    """Calls ``on_change()`` once a burst of changes to ``*.yaml`` files in a directory settles.

    Every relevant event (a config file created, modified, moved to or from, or deleted)
    pushes the call back to ``debounce_s`` after it; events on other files are ignored.

    Args:
        directory: the config directory to watch (not recursively).
        on_change: called with no arguments, in a timer thread. With a shared ``clock`` it
            runs in that clock's scheduler thread and must be quick (hand the reload off);
            without one the watcher has its own scheduler thread, where it may block.
            If it raises, the error is logged and watching goes on.
        debounce_s: the quiet period that ends a burst.
        clock: where the coalescing timer is scheduled (``MockClock`` in tests); by
            default a private :class:`MonotonicClock`, closed by :meth:`stop`.
    """

    def __init__(self, directory: Path, on_change: Callable[[], None], *,
                 debounce_s: float = 0.2, clock: Clock | None = None) -> None:
        if debounce_s < 0:
            raise ValueError("debounce_s must not be negative")
        self.directory = Path(directory)
        self._on_change = on_change
        self.debounce_s = debounce_s
        self._own_clock = clock is None
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._lock = threading.Lock()
        self._timer: TimerHandle | None = None
        self._last_event = 0.0
        self._closed = False
        self._observer: Any = None
        self._events = 0
        self._relevant = 0
        self._changes = 0
        self._failures = 0

    def start(self) -> None:
        """Start watching the directory.

        Raises:
            OSError: if the directory does not exist or cannot be watched (e.g. the
                inotify watch limit is reached).
            RuntimeError: if already started or stopped.
        """
        with self._lock:
            if self._observer is not None or self._closed:
                raise RuntimeError("ConfigWatcher can be started once")
            if not self.directory.is_dir():
                raise FileNotFoundError(f"config directory not found: {self.directory}")
            observer = Observer()
            observer.daemon = True
            observer.schedule(_Handler(self), str(self.directory), recursive=False)
            observer.start()
            self._observer = observer
        logger.bind(actor="reloader", directory=str(self.directory)).debug(
            "watching the config directory")

    def stop(self) -> None:
        """Stop watching; a change still waiting for its quiet period is dropped (idempotent)."""
        with self._lock:
            self._closed = True
            observer, self._observer = self._observer, None
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        if observer is not None:
            observer.stop()
            if observer is not threading.current_thread():
                observer.join(timeout=5.0)
        if self._own_clock and isinstance(self._clock, MonotonicClock):
            self._clock.close()

    def notify(self, path: str | os.PathLike[str]) -> bool:
        """Note an event on ``path`` (the watchdog handler calls this).

        Returns:
            True if ``path`` is a config file, so a change is (re)scheduled; False if the
            event is ignored (other file, or the watcher is stopped).
        """
        relevant = is_config_file(path)
        with self._lock:
            self._events += 1
            if not relevant or self._closed:
                return False
            self._relevant += 1
            self._last_event = self._clock.monotonic()
            if self._timer is None:
                self._timer = self._clock.call_at(self._last_event + self.debounce_s,
                                                  self._fire)
        return True

    _on_event = notify

    def _fire(self) -> None:
        with self._lock:
            if self._timer is None or self._closed:
                return
            due = self._last_event + self.debounce_s
            if self._clock.monotonic() < due:  # more events came: wait for the quiet
                self._timer = self._clock.call_at(due, self._fire)
                return
            self._timer = None
            self._changes += 1
        try:
            self._on_change()
        except Exception as exc:
            with self._lock:
                self._failures += 1
            logger.bind(actor="reloader").opt(exception=exc).error(
                "config change handler failed")

    def statistics(self) -> WatcherStatistics:
        """Return a snapshot of the watcher's counts."""
        with self._lock:
            return WatcherStatistics(
                events=self._events, relevant=self._relevant, changes=self._changes,
                failures=self._failures, pending=self._timer is not None,
                running=self._observer is not None,
            )


# --------------------------------------------------------------------------- reloader


@dataclass(frozen=True)
class ReloadResult:
    """The outcome of one reload.

    Attributes:
        ok: the config loaded (and, if changed, was applied).
        changed: a new config was applied.
        error: why it was rejected (``file: key: problem``), else None.
        digest: the digest of the config now running (None if none is known yet).
        pending: the reload had not finished when the caller stopped waiting
            (:meth:`Reloader.request`); its outcome shows later in the statistics
            (``last_error``). ``ok`` and ``changed`` are then False.
    """

    ok: bool
    changed: bool
    error: str | None
    digest: str | None
    pending: bool = False


@dataclass(frozen=True)
class ReloaderStatistics:
    """Counts of a :class:`Reloader`: applied, rejected and unchanged reloads; ``running``:
    a reload is under way on the reloader's thread; ``unanswered``: requests that stopped
    waiting before their reload finished (:meth:`Reloader.request`)."""

    reloads_ok: int
    rejected: int
    skipped: int
    last_error: str | None
    digest: str | None
    last_reason: str | None
    running: bool = False
    unanswered: int = 0


class Reloader:
    """Loads the config directory and applies it when it changed; rejects invalid ones whole.

    Args:
        load: loads and validates the whole config (normally
            ``lambda: load_config_dir(dir)``); raises :class:`ConfigError` naming the
            file, the key and the problem.
        apply: applies a new config to the running system (mode settings to the actors,
            daemon settings such as the log level).
        notify: sends a systemd notification (default :func:`sd_notify`, a no-op without
            ``$NOTIFY_SOCKET``).
        digest: the digest of the config already running, so that reloading an
            unchanged directory is skipped from the first time on.
        wait_s: how long :meth:`request` waits for an outcome by default.
    """

    def __init__(self, load: Callable[[], ConfigSet], apply: Callable[[ConfigSet], None], *,
                 notify: Callable[[str], Any] | None = None,
                 digest: str | None = None, wait_s: float = RELOAD_WAIT_S) -> None:
        self.wait_s = wait_s
        self._load = load
        self._apply = apply
        self._notify = notify if notify is not None else sd_notify
        self._reload_lock = threading.Lock()  # one reload at a time
        self._lock = threading.Lock()  # the counters, read by statistics() at any time
        self._digest = digest
        self._last_error: str | None = None
        self._last_reason: str | None = None
        self._ok = 0
        self._rejected = 0
        self._skipped = 0
        self._unanswered = 0
        # The reloader's own thread (started on first submit) and its one-slot queue.
        self._queue = threading.Condition(threading.Lock())
        self._queued: tuple[str, Future[ReloadResult]] | None = None
        self._running = False
        self._waiting = False
        self._closed = False
        self._worker: threading.Thread | None = None

    def prime(self, config: ConfigSet) -> None:
        """Record ``config`` as the one already running (applied at start), so that reloading
        an unchanged directory is skipped; counts as no reload."""
        with self._lock:
            self._digest = config.digest

    @property
    def last_error(self) -> str | None:
        """The last rejection's text, or None once a later load succeeded."""
        return self._last_error

    @property
    def digest(self) -> str | None:
        """The digest of the config now running."""
        return self._digest

    def _send(self, state: str) -> None:
        try:
            self._notify(state)
        except Exception as exc:  # notifications are best effort
            logger.bind(actor="reloader", error=str(exc)).debug("notification failed")

    def reload(self, reason: str) -> ReloadResult:
        """Load the config and apply it if it changed; concurrent calls run one at a time.

        Args:
            reason: why (``"SIGHUP"``, ``"file change"``, ``"command"``), for the log.

        Returns:
            The outcome. It never raises for a bad config: a :class:`ConfigError` from
            ``load`` or ``apply`` — or any other exception from ``apply`` — rejects the
            reload (the running config is kept, ``apply`` having left it as it was), is
            logged at ERROR and kept as :attr:`last_error`.
        """
        with self._reload_lock:
            with self._lock:
                self._last_reason = reason
            self._send(reloading_state())
            try:
                return self._reload_locked(reason)
            finally:
                self._send("READY=1")

    def submit(self, reason: str) -> Future[ReloadResult]:
        """Queue a reload on the reloader's own thread and return at once.

        One reload runs at a time and at most one waits behind it: a request made while one
        is already waiting joins that one (it reads the files as they are when it starts)
        and gets its future. The future never raises for a bad config (see :meth:`reload`);
        it is cancelled if the reloader is closed before the reload starts.
        """
        with self._queue:
            if self._queued is not None:
                return self._queued[1]
            future: Future[ReloadResult] = Future()
            if self._closed:
                future.cancel()
                return future
            self._queued = (reason, future)
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="modcoord-reload",
                                                daemon=True)
                self._worker.start()
            self._queue.notify()
            return future

    def request(self, reason: str, wait_s: float | None = None) -> ReloadResult:
        """Reload on the reloader's thread and wait for the outcome, at most ``wait_s``
        (default: the reloader's ``wait_s``, :data:`RELOAD_WAIT_S`).

        Only one caller waits at a time; another caller meanwhile gets a pending answer at
        once. So a reload that hangs holds at most one calling thread, for ``wait_s``.

        Returns:
            The outcome, or one with ``pending=True`` (counted in ``unanswered`` and logged)
            if the reload had not finished: its outcome shows later in :meth:`statistics`.
        """
        future = self.submit(reason)
        with self._queue:
            wait = 0.0 if self._waiting else (self.wait_s if wait_s is None else wait_s)
            self._waiting = self._waiting or wait > 0
        try:
            return future.result(timeout=wait)
        except (FutureTimeout, CancelledError):
            with self._lock:
                self._unanswered += 1
            logger.bind(actor="reloader", reason=reason, wait_s=wait).warning(
                "reload still running; answered as pending (its outcome will show in "
                "status: last_reload_error)")
            return ReloadResult(ok=False, changed=False, error=None, digest=self._digest,
                                pending=True)
        finally:
            if wait > 0:
                with self._queue:
                    self._waiting = False

    def close(self) -> None:
        """Stop the reloader's thread once the reload under way (if any) ends; a queued
        reload is cancelled. A reload that hangs is abandoned (the thread is a daemon)."""
        with self._queue:
            self._closed = True
            queued, self._queued = self._queued, None
            self._queue.notify_all()
        if queued is not None:
            queued[1].cancel()

    def _work(self) -> None:
        while True:
            with self._queue:
                while self._queued is None and not self._closed:
                    self._queue.wait()
                if self._queued is None:
                    return
                (reason, future), self._queued = self._queued, None
                self._running = True
            try:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(self.reload(reason))
                    except BaseException as exc:  # reload() rejects bad configs itself
                        logger.bind(actor="reloader", reason=reason).opt(
                            exception=exc).error("reload failed")
                        future.set_exception(exc)
            finally:
                with self._queue:
                    self._running = False

    def _reload_locked(self, reason: str) -> ReloadResult:
        try:
            config = self._load()
        except ConfigError as exc:
            return self._reject(reason, exc, exc.file, exc.key, exc.problem)
        except Exception as exc:  # a loader bug must not take the reloader's thread down
            return self._reject(reason, exc, "", "",
                                f"load failed: {type(exc).__name__}: {exc}")
        if config.digest == self._digest:
            with self._lock:
                self._skipped += 1
                self._last_error = None
            logger.bind(actor="reloader", reason=reason, digest=config.digest[:12]).info(
                "config unchanged")
            return ReloadResult(ok=True, changed=False, error=None, digest=self._digest)
        try:
            self._apply(config)
        except ConfigError as exc:
            return self._reject(reason, exc, exc.file, exc.key, exc.problem)
        except Exception as exc:
            return self._reject(reason, exc, str(config.directory), "",
                                f"apply failed: {type(exc).__name__}: {exc}")
        with self._lock:
            self._digest = config.digest
            self._ok += 1
            self._last_error = None
        logger.bind(actor="reloader", reason=reason, digest=config.digest[:12],
                    directory=str(config.directory)).info("config reloaded")
        return ReloadResult(ok=True, changed=True, error=None, digest=config.digest)

    def _reject(self, reason: str, exc: Exception, file: str, key: str, problem: str
                ) -> ReloadResult:
        if isinstance(exc, ConfigError):
            text = str(exc)
        else:
            text = f"{file}: {problem}" if file else problem
        with self._lock:
            self._rejected += 1
            self._last_error = text
        bound = logger.bind(actor="reloader", reason=reason, file=file, key=key,
                            problem=problem)
        if not isinstance(exc, ConfigError):
            bound = bound.opt(exception=exc)
        bound.error("config reload rejected")
        return ReloadResult(ok=False, changed=False, error=text, digest=self._digest)

    def statistics(self) -> ReloaderStatistics:
        """Return a snapshot of the counts and the last error."""
        with self._lock:
            return ReloaderStatistics(
                reloads_ok=self._ok, rejected=self._rejected, skipped=self._skipped,
                last_error=self._last_error, digest=self._digest,
                last_reason=self._last_reason, running=self._running,
                unanswered=self._unanswered,
            )
