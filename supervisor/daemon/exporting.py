"""Pushing the daemon's metrics to external monitoring through exporter plugins.

:class:`ExporterRunner` runs on a thread of its own in the daemon. Every exporter that the
current mode's ``plugins.exporters`` names is made once from its entry point (group
``modcoord.exporters``: a factory called with the item's ``options``) and then, every
``interval_ms``, given every ``modcoord_*`` gauge and counter sample, as ``/metrics`` shows
them (:func:`samples`). Making, exporting and closing each go through the exporter's
:class:`~modcoord.actors.plugins.PluginGuard` with the item's ``timeout_ms``: an exporter
that raises or hangs is counted and logged, and disabled after ``plugins.max_failures``
failures in a row; the daemon and the other exporters carry on. A change of the list (a
mode switch, a reload) closes the exporters no longer named and makes the new ones.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from loguru import logger

from modcoord.actors.plugins import EXPORTERS, MetricSample, PluginError, PluginHost, load
from modcoord.actors.settings import ExporterSpec

__all__ = ["MAX_WAIT_S", "ExporterRunner", "samples"]

MAX_WAIT_S = 1.0
"""The runner looks at the configured exporters at least this often."""

_log = logger.bind(actor="exporters", event="plugin")


def samples(families: Iterable[Any]) -> list[MetricSample]:
    """The gauge and counter samples of ``prometheus_client`` metric families (the
    ``modcoord_*`` ones; a counter's ``_created`` samples left out; non-finite values too)."""
    out: list[MetricSample] = []
    for family in families:
        if family.type not in ("gauge", "counter") or not family.name.startswith("modcoord_"):
            continue
        for sample in family.samples:
            if family.type == "counter" and not sample.name.endswith("_total"):
                continue
            value = float(sample.value)
            if not math.isfinite(value):
                continue
            out.append(MetricSample(sample.name, family.type, dict(sample.labels), value,
                                    family.documentation, family.unit))
    return out


class _Running:
    def __init__(self, spec: ExporterSpec, exporter: Any, due: float) -> None:
        self.spec, self.exporter, self.due = spec, exporter, due


class ExporterRunner:
    """Makes, feeds and closes the configured exporters (see the module doc).

    Args:
        host: the plugin host (the specs in force, the guards and their counters).
        collect: returns the metric families to export (the daemon's exposition registry
            ``collect``); called at most once per round, only when an exporter is due.
        now: the clock (``time.monotonic``).
    """

    def __init__(self, host: PluginHost, collect: Callable[[], Iterable[Any]],
                 now: Callable[[], float] = time.monotonic) -> None:
        self._host = host
        self._collect = collect
        self._now = now
        self._running: dict[str, _Running] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.exports = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="exporters", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and close every exporter (each close bounded by its timeout)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        for name in list(self._running):
            self._close(name)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                wait = self.tick()
            except Exception:
                _log.opt(exception=True).error("exporting failed")
                wait = MAX_WAIT_S
            self._stop.wait(wait)

    def tick(self) -> float:
        """Bring the exporters in line with the settings, run those that are due, and
        return how long to wait before the next round."""
        settings = self._host.settings
        specs: Sequence[ExporterSpec] = settings.exporters
        wanted = {s.name: s for s in specs}
        for name in [n for n, r in self._running.items() if wanted.get(n) != r.spec]:
            self._close(name)
        now = self._now()
        for spec in specs:
            if spec.name not in self._running:
                self._make(spec, now)
        batch: list[MetricSample] | None = None
        for name, run in list(self._running.items()):
            if now < run.due:
                continue
            if run.exporter is None:
                self._make(run.spec, now)
                continue
            run.due = max(run.due + run.spec.interval_ms / 1000.0, now)
            guard = self._host.guard(EXPORTERS, name, settings, run.spec.timeout_ms / 1000.0)
            if guard.disabled:
                continue
            if batch is None:
                batch = samples(self._collect())
            try:
                guard.call(run.exporter.export, batch)
                self.exports += 1
            except PluginError:
                pass  # counted and logged by the guard
        dues = [r.due for r in self._running.values()]
        return min([MAX_WAIT_S, *(max(0.0, d - self._now()) for d in dues)])

    def _make(self, spec: ExporterSpec, now: float) -> None:
        """Make the exporter (retried every ``interval_ms`` while it fails and is not
        disabled)."""
        guard = self._host.guard(EXPORTERS, spec.name, self._host.settings,
                                 spec.timeout_ms / 1000.0)
        exporter = None
        if not guard.disabled:
            try:
                factory = load(EXPORTERS, spec.name)
            except PluginError as exc:
                guard.failed(f"cannot load: {exc}")
            else:
                try:
                    exporter = guard.call(factory, dict(spec.options))
                except PluginError:
                    pass  # counted and logged by the guard
                else:
                    _log.bind(plugin=spec.name).info("exporter started")
        due = now if exporter is not None else now + spec.interval_ms / 1000.0
        self._running[spec.name] = _Running(spec, exporter, due)

    def _close(self, name: str) -> None:
        run = self._running.pop(name)
        close = getattr(run.exporter, "close", None)
        if callable(close):
            guard = self._host.guard(EXPORTERS, name, self._host.settings,
                                     run.spec.timeout_ms / 1000.0)
            with contextlib.suppress(PluginError):
                guard.call(close)
