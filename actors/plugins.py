"""Extension points: plugins found through Python entry points, enabled by name in the mode
files (``plugins:``), and contained when they fail.

Four entry-point groups (:data:`GROUPS`), one per kind of plugin, each named by a key of
``plugins:``:

- ``modcoord.insight_rules`` (``insight_rules``): an
  :class:`~modcoord.actors.rules.InsightRule` subclass (or instance);
- ``modcoord.cache_policies`` (``cache_policy``): a
  :class:`~modcoord.actors.shared.cache_store.CachePolicy` class (or instance);
- ``modcoord.batch_processors`` (``batch_processors``): a :class:`BatchProcessor` class, or
  a function ``(updates) -> updates``;
- ``modcoord.exporters`` (``exporters``): a factory ``(options) -> Exporter``.

The built-ins are plugins of the same kinds under reserved names (:data:`BUILTINS`):
``lru`` (expired first, then least recently used) and ``priority`` (priority, then module
grouping); they run inline. Every other plugin runs through a :class:`PluginGuard`: the call
is made on the guard's own worker thread and waited for at most ``plugins.timeout_ms``, so a
plugin that hangs cannot stall the actor that calls it. A call that raises, returns
something unusable, or times out is a *failure*: counted, logged (``event="plugin"``), and
the caller falls back to the built-in behaviour for that call. ``plugins.max_failures``
failures in a row disable the plugin (logged once, at ERROR) until the ``plugins:`` settings
change; a success resets the run. :class:`PluginHost` keeps the guards (they outlive actor
restarts: it is part of :class:`~modcoord.actors.shared.Shared`) and their counters, which
``status`` shows under ``plugins``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from queue import SimpleQueue
from typing import Any, Protocol, runtime_checkable

from loguru import logger

from modcoord.actors.payload import payload_value
from modcoord.actors.settings import ExporterSpec, PluginSettings

__all__ = [
    "BATCH_PROCESSORS",
    "BUILTINS",
    "CACHE_POLICIES",
    "EXPORTERS",
    "GROUPS",
    "INSIGHT_RULES",
    "MAX_ERROR_CHARS",
    "BatchProcessor",
    "Exporter",
    "MetricSample",
    "PluginError",
    "PluginGuard",
    "PluginHost",
    "available",
    "check_names",
    "load",
]

INSIGHT_RULES = "modcoord.insight_rules"
CACHE_POLICIES = "modcoord.cache_policies"
BATCH_PROCESSORS = "modcoord.batch_processors"
EXPORTERS = "modcoord.exporters"

GROUPS: dict[str, str] = {
    "insight_rules": INSIGHT_RULES,
    "cache_policy": CACHE_POLICIES,
    "batch_processors": BATCH_PROCESSORS,
    "exporters": EXPORTERS,
}
"""``plugins:`` key → the entry-point group its names are looked up in."""

BUILTINS: dict[str, frozenset[str]] = {
    INSIGHT_RULES: frozenset(),
    CACHE_POLICIES: frozenset({"lru"}),
    BATCH_PROCESSORS: frozenset({"priority"}),
    EXPORTERS: frozenset(),
}
"""Names each group has without any plugin installed (they run inline, unguarded)."""

MAX_ERROR_CHARS = 300
"""A plugin's error is kept (``last_error`` in ``status``) in at most this many characters."""

_log = logger.bind(event="plugin")


class PluginError(Exception):
    """A plugin's call failed: it raised, timed out, or returned something unusable."""


# -- the kinds' interfaces -----------------------------------------------------------------


@runtime_checkable
class BatchProcessor(Protocol):
    """``modcoord.batch_processors``: transform or reorder a batch before delivery.

    ``process`` gets the batch's updates (already in the order of the processors before it)
    and returns the updates to deliver, as a list or tuple of
    :class:`~modcoord.actors.update.Update`. Anything else is a failure (the batch goes out
    as it came in). Updates it leaves out, or adds, are counted in the batcher's statistics
    (``processor_removed``, ``processor_added``) and logged.
    """

    def process(self, updates: Sequence[Any]) -> Sequence[Any]: ...


@dataclass(frozen=True, slots=True)
class MetricSample:
    """One value an exporter is given: a sample of a ``modcoord_*`` family as ``/metrics``
    shows it (gauges and counters; a counter's ``name`` ends in ``_total``).

    Attributes:
        name: the sample's name.
        kind: ``gauge`` or ``counter``.
        labels: label name → value.
        value: the value (finite).
        help: the family's help text.
        unit: its unit (``seconds``, ``bytes``, ``""``).
    """

    name: str
    kind: str
    labels: Mapping[str, str]
    value: float
    help: str = ""
    unit: str = ""


@runtime_checkable
class Exporter(Protocol):
    """``modcoord.exporters``: push the daemon's metrics to external monitoring.

    The entry point is a factory called once with the item's ``options`` (a dict); it may
    raise ``ValueError`` for bad options (logged, the exporter stays off). ``export`` is
    called every ``interval_ms`` with every sample; ``close`` when the exporter is
    replaced or the daemon stops.
    """

    def export(self, samples: Sequence[MetricSample]) -> None: ...

    def close(self) -> None: ...


# -- finding plugins -----------------------------------------------------------------------


def _entry_points(group: str) -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=group)}


def available(group: str) -> list[str]:
    """Every name ``group`` offers: its built-ins and the installed entry points, sorted."""
    return sorted(BUILTINS.get(group, frozenset()) | set(_entry_points(group)))


def check_names(plugins: PluginSettings) -> tuple[str, str] | None:
    """The first name in ``plugins`` that no built-in nor installed entry point has, as
    ``(dotted key, problem)``; ``None`` when every name is known. The problem names the
    group and lists what is available."""
    listed: list[tuple[str, str, str]] = [("cache_policy", CACHE_POLICIES, plugins.cache_policy)]
    listed += [(f"insight_rules.{i}", INSIGHT_RULES, n)
               for i, n in enumerate(plugins.insight_rules)]
    listed += [(f"batch_processors.{i}", BATCH_PROCESSORS, n)
               for i, n in enumerate(plugins.batch_processors)]
    listed += [(f"exporters.{i}.name", EXPORTERS, e.name) for i, e in enumerate(plugins.exporters)]
    cache: dict[str, list[str]] = {}
    for key, group, name in listed:
        if name in BUILTINS[group]:
            continue  # no entry-point scan for the built-ins (the packaged configs)
        if group not in cache:
            cache[group] = available(group)
        names = cache[group]
        if name not in names:
            offer = ", ".join(names) if names else "none installed"
            return f"plugins.{key}", (
                f"unknown plugin {name!r} in entry-point group {group} (available: {offer}); "
                "install the package that provides it, or fix the name")
    return None


def load(group: str, name: str) -> Any:
    """Import the object the entry point ``name`` of ``group`` names.

    Raises:
        PluginError: no such entry point, or importing it raised (the cause attached).
    """
    ep = _entry_points(group).get(name)
    if ep is None:
        raise PluginError(f"no entry point {name!r} in group {group}")
    try:
        return ep.load()
    except Exception as exc:
        raise PluginError(f"loading {group}:{name} ({ep.value}) failed: "
                          f"{type(exc).__name__}: {exc}") from exc


def instantiate(obj: Any) -> Any:
    """A loaded entry point made ready to call: a class is instantiated without arguments,
    anything else is returned as it is."""
    return obj() if isinstance(obj, type) else obj


# -- containment ---------------------------------------------------------------------------


class _Worker:
    """One daemon thread running a guard's calls in order (a hung call blocks only it)."""

    def __init__(self, name: str) -> None:
        self._queue: SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], Future[Any]] | None]
        self._queue = SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"plugin-{name}", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Future[Any]:
        future: Future[Any] = Future()
        self._queue.put((fn, args, future))
        return future

    def close(self) -> None:
        self._queue.put(None)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, args, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to the caller, never lost
                future.set_exception(exc)


@dataclass(frozen=True)
class GuardStatistics:
    """A guard's counters (``status`` → ``plugins.guards``).

    Attributes:
        kind: the entry-point group. name: the plugin's name.
        calls: calls made. failures: of those, how many failed (timeouts included).
        timeouts: calls that took longer than the limit. disabled: off after
        ``max_failures`` failures in a row. last_error: the last failure's text.
    """

    kind: str
    name: str
    calls: int
    failures: int
    timeouts: int
    disabled: bool
    last_error: str | None


class PluginGuard:
    """Runs one plugin's calls bounded in time, and disables it after repeated failures.

    Args:
        kind: the entry-point group (for logs and ``status``).
        name: the plugin's name.
        timeout_s: how long a call may take.
        max_failures: failures in a row after which the plugin is disabled.
        inline: call in the caller's thread (the built-ins; no time limit).

    A call still running when the next one comes (it hung past its limit) makes the next
    one fail at once: the worker is busy, and nothing queues behind a hung plugin.
    """

    def __init__(self, kind: str, name: str, timeout_s: float, max_failures: int,
                 inline: bool = False) -> None:
        self.kind, self.name = kind, name
        self.timeout_s, self.max_failures = timeout_s, max_failures
        self.inline = inline
        self._lock = threading.Lock()
        self._worker: _Worker | None = None
        self._running: Future[Any] | None = None
        self.calls = self.failures = self.timeouts = self._run = 0
        self.disabled = False
        self.last_error: str | None = None

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.name}"

    def call(self, fn: Callable[..., Any], *args: Any,
             check: Callable[[Any], str | None] | None = None) -> Any:
        """Return ``fn(*args)``, run within the time limit.

        Args:
            check: judges the result: returns why it is unusable, or ``None``. An unusable
                result is a failure like an exception.

        Raises:
            PluginError: the plugin is disabled, still busy with a call that hung, raised
                (the cause attached), took longer than ``timeout_s``, or its result failed
                ``check``. Each but the first is counted as a failure.
        """
        if self.disabled:
            raise PluginError(f"{self.label} is disabled")
        with self._lock:
            self.calls += 1
        if self.inline:
            try:
                result = fn(*args)
            except Exception as exc:
                self.failed(f"{type(exc).__name__}: {exc}")
                raise PluginError(f"{self.label} raised {type(exc).__name__}: {exc}") from exc
            return self._checked(result, check)
        with self._lock:
            running = self._running
            if running is not None and not running.done():
                busy = True
            else:
                busy = False
                if self._worker is None:
                    self._worker = _Worker(self.label)
                future = self._running = self._worker.submit(fn, args)
        if busy:
            self.failed(f"still running a call that exceeded {self.timeout_s * 1000:g} ms",
                        timeout=True)
            raise PluginError(f"{self.label} is still running a call that hung")
        try:
            result = future.result(timeout=self.timeout_s)
        except FutureTimeout:
            self.failed(f"took longer than plugins.timeout_ms ({self.timeout_s * 1000:g} ms)",
                        timeout=True)
            raise PluginError(f"{self.label} timed out after {self.timeout_s * 1000:g} ms; "
                              "raise plugins.timeout_ms or fix the plugin") from None
        except Exception as exc:
            self.failed(f"{type(exc).__name__}: {exc}")
            raise PluginError(f"{self.label} raised {type(exc).__name__}: {exc}") from exc
        return self._checked(result, check)

    def _checked(self, result: Any, check: Callable[[Any], str | None] | None) -> Any:
        why = check(result) if check is not None else None
        if why is not None:
            self.failed(why)
            raise PluginError(f"{self.label}: {why}")
        self.succeeded()
        return result

    def count_call(self) -> None:
        """Count a call made without :meth:`call` (a built-in run inline by its caller)."""
        with self._lock:
            self.calls += 1

    def succeeded(self) -> None:
        with self._lock:
            self._run = 0

    def failed(self, why: str, timeout: bool = False) -> None:
        """Count a failure (also for a result the caller could not use), log it, and
        disable the plugin after ``max_failures`` in a row."""
        why = why[:MAX_ERROR_CHARS]
        with self._lock:
            self.failures += 1
            self.timeouts += timeout
            self._run += 1
            self.last_error = why
            disable = not self.disabled and self._run >= self.max_failures
            if disable:
                self.disabled = True
            failures = self.failures
        _log.bind(plugin=self.name, kind=self.kind, failures=failures, error=why).warning(
            "plugin failed; the built-in behaviour is used for this call")
        if disable:
            _log.bind(plugin=self.name, kind=self.kind, failures=failures,
                      max_failures=self.max_failures).error(
                "plugin disabled after max_failures failures in a row (plugins.max_failures);"
                " fix it, then reload or switch mode to enable it again")

    def close(self) -> None:
        """Stop the worker thread (after the call it runs, if any)."""
        with self._lock:
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.close()

    def statistics(self) -> GuardStatistics:
        with self._lock:
            return GuardStatistics(self.kind, self.name, self.calls, self.failures,
                                   self.timeouts, self.disabled, self.last_error)


# -- the host ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Loaded:
    """A plugin ready to call: its object (instantiated) and its guard."""

    name: str
    obj: Any
    guard: PluginGuard


class PluginHost:
    """The plugins of the settings in force, their guards and counters.

    :meth:`configure` (the coordinator calls it at start, on a mode switch and on a reload)
    loads what the ``plugins:`` section names; a plugin whose import or construction fails
    is logged, counted as a failure and left out (the built-in behaviour stands). Settings
    equal to those in force change nothing; other settings (a reload, a switch to a mode
    whose ``plugins:`` differ) start every plugin again with fresh guards: a disabled plugin
    stays disabled until then.
    """

    def __init__(self, settings: PluginSettings | None = None) -> None:
        self._lock = threading.Lock()
        self._settings: PluginSettings | None = None
        self._guards: dict[tuple[str, str], PluginGuard] = {}
        self._rules: tuple[Loaded, ...] = ()
        self._processors: tuple[Loaded, ...] = ()
        self._cache_policy: Loaded | None = None
        self._load_failures = 0
        self.configure(settings or PluginSettings())

    @property
    def settings(self) -> PluginSettings:
        assert self._settings is not None
        return self._settings

    def guard(self, group: str, name: str, settings: PluginSettings | None = None,
              timeout_s: float | None = None) -> PluginGuard:
        """The guard of ``name`` in ``group`` (made on first use, and anew when its limits
        change): ``timeout_s`` defaults to ``plugins.timeout_ms``."""
        s = settings or self.settings
        limit = timeout_s if timeout_s is not None else s.timeout_ms / 1000.0
        with self._lock:
            g = self._guards.get((group, name))
            if g is None or (g.timeout_s, g.max_failures) != (limit, s.max_failures):
                if g is not None:
                    g.close()
                g = PluginGuard(group, name, limit, s.max_failures)
                self._guards[group, name] = g
            return g

    def _load(self, group: str, name: str, settings: PluginSettings) -> Loaded | None:
        guard = self.guard(group, name, settings)
        if guard.disabled:
            return Loaded(name, None, guard)
        try:
            obj = instantiate(load(group, name))
        except Exception as exc:
            with self._lock:
                self._load_failures += 1
            guard.failed(f"cannot load: {exc}")
            return None
        return Loaded(name, obj, guard)

    def configure(self, settings: PluginSettings) -> None:
        """Load the plugins ``settings`` names (nothing is reloaded when they are the
        settings in force)."""
        if settings == self._settings:
            return
        with self._lock:  # new settings: every plugin starts again with fresh counters
            stale, self._guards = list(self._guards.values()), {}
        for g in stale:
            g.close()
        rules = tuple(x for n in settings.insight_rules
                      if (x := self._load(INSIGHT_RULES, n, settings)) is not None)
        chain: list[Loaded] = []
        for n in settings.batch_processors:
            if n in BUILTINS[BATCH_PROCESSORS]:
                chain.append(self._builtin(BATCH_PROCESSORS, n))
            elif (x := self._load(BATCH_PROCESSORS, n, settings)) is not None:
                chain.append(x)
        procs = tuple(chain)
        policy = None
        if settings.cache_policy not in BUILTINS[CACHE_POLICIES]:
            policy = self._load(CACHE_POLICIES, settings.cache_policy, settings)
        with self._lock:
            self._settings = settings
            self._rules, self._processors, self._cache_policy = rules, procs, policy
        loaded = [p.name for p in (*rules, *procs) if p.obj is not None]
        if policy is not None:
            loaded.append(policy.name)
        if loaded:
            logger.bind(actor="plugins", plugins=loaded).info("plugins loaded")

    def _builtin(self, group: str, name: str) -> Loaded:
        with self._lock:
            g = self._guards.get((group, name))
            if g is None:
                g = self._guards[group, name] = PluginGuard(group, name, 0.0, 1 << 30,
                                                            inline=True)
        return Loaded(name, None, g)

    def insight_rules(self) -> tuple[Loaded, ...]:
        """The plugin rules configured (each with its guard; ``obj`` None if disabled)."""
        return self._rules

    def batch_processors(self) -> tuple[Loaded, ...]:
        """The processor chain in order; a built-in has ``obj`` None and an inline guard."""
        return self._processors

    def cache_policy(self) -> Loaded | None:
        """The plugin cache policy, or ``None`` for the built-in ``lru``."""
        return self._cache_policy

    def exporter_specs(self) -> tuple[ExporterSpec, ...]:
        return self.settings.exporters

    def close(self) -> None:
        """Stop every guard's worker thread."""
        with self._lock:
            guards, self._guards = list(self._guards.values()), {}
        for g in guards:
            g.close()

    def statistics(self) -> dict[str, Any]:
        """``status`` → ``plugins``: what is configured, and each guard's counters."""
        s = self.settings
        with self._lock:
            guards = [g.statistics() for g in self._guards.values()]
            load_failures = self._load_failures
        return {
            "insight_rules": list(s.insight_rules),
            "cache_policy": s.cache_policy,
            "batch_processors": list(s.batch_processors),
            "exporters": [e.name for e in s.exporters],
            "load_failures": load_failures,
            "failures": sum(g.failures for g in guards),
            "disabled": sorted(f"{g.kind}:{g.name}" for g in guards if g.disabled),
            "guards": {f"{g.kind}:{g.name}": {
                "calls": g.calls, "failures": g.failures, "timeouts": g.timeouts,
                "disabled": g.disabled, "last_error": g.last_error} for g in guards},
        }


def finite_number(value: Any) -> float | None:
    """``value`` as a float if it is a real, finite number (not a bool), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


class GuardedCachePolicy:
    """A plugin :class:`~modcoord.actors.shared.cache_store.CachePolicy` run through its
    guard; any failure (or a disabled plugin) gives the built-in ``lru`` answer.

    ``victims`` is given a copy of the entries, made in the caller's thread, so a plugin
    that outlives its time limit never reads the live store.
    """

    def __init__(self, loaded: Loaded) -> None:
        from modcoord.actors.shared.cache_store import LRU

        self.name = loaded.name
        self._obj = loaded.obj
        self._guard = loaded.guard
        self._builtin = LRU

    def ttl_s(self, key: str, value: Any, default_s: float) -> float:
        guard = self._guard
        if guard.disabled or self._obj is None:
            return default_s
        try:
            ttl = guard.call(self._obj.ttl_s, key, value, default_s, check=_check_ttl)
        except PluginError:
            return default_s
        return float(ttl)

    def victims(self, entries: Mapping[str, tuple[Any, float]], n: int,
                now: float) -> list[str]:
        guard = self._guard
        if guard.disabled or self._obj is None:
            return list(self._builtin.victims(entries, n, now))
        # The store keeps each value encoded (actors/payload.py): a plugin sees it decoded.
        snapshot = {k: (payload_value(v), at) for k, (v, at) in entries.items()}
        obj = self._obj

        def check(keys: list[Any]) -> str | None:
            if any(type(k) is str and k in snapshot for k in keys):
                return None
            return f"victims named none of the {len(snapshot)} entries"

        try:
            keys = guard.call(lambda: list(obj.victims(snapshot, n, now)), check=check)
        except PluginError:
            return list(self._builtin.victims(entries, n, now))
        return [k for k in keys if type(k) is str and k in entries]


def _check_ttl(ttl: Any) -> str | None:
    number = finite_number(ttl)
    if number is None or number <= 0:
        return f"ttl_s returned {ttl!r}, not a positive number of seconds"
    return None
