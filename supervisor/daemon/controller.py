"""The controller: what the server calls for each request (circus's "controller").

It forwards the data calls (register, publish, coordinate) straight to the
:class:`~modcoord.supervisor.daemon.coordinator.ModuleCoordinator` and answers the control calls
(``status``, ``mode``, ``reload``, ``stop``, ...), adding what only the daemon knows: the
reloader's last error, the metrics exposition, the request to stop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from modcoord.actors.errors import InvalidMessageError
from modcoord.supervisor.daemon.engine import Engine
from modcoord.supervisor.daemon.reload import Reloader
from modcoord.supervisor.protocol.calls import (
    CONTROL_METHODS,
    ActorParams,
    CrashParams,
    HistoryParams,
    Params,
    SetModeParams,
)
from modcoord.supervisor.protocol.module import ModuleEndpoint, ModuleInfo

if TYPE_CHECKING:
    from modcoord.supervisor.daemon.exposition import Exposition

__all__ = ["Controller"]


HISTORY_START_WAIT_S = 5.0
"""How long a ``history`` call waits for the history to finish opening its database (it
opens right after the daemon reports ready)."""


class Controller:
    """Dispatches requests to the coordinator and the daemon.

    Args:
        coordinator: the running actor system.
        reloader: re-reads the config directory (``None``: reload unsupported).
        request_stop: asks the daemon to stop gracefully.
        daemon_info: static facts for ``status`` (runtime dir, socket, log dir, config dir).
        history_pending: the daemon starts the history later (after readiness) and sets
            ``history_settled`` then; until that, ``status`` shows the history as
            ``starting`` and ``history`` calls wait for it (``HISTORY_START_WAIT_S``).
    """

    def __init__(self, coordinator: Engine, *, reloader: Reloader | None = None,
                 request_stop: Callable[[], None] | None = None,
                 daemon_info: dict[str, Any] | None = None,
                 history_pending: bool = False) -> None:
        self.coordinator = coordinator
        self.reloader = reloader
        self.request_stop = request_stop
        # Shared, not copied: the daemon adds facts known only later (``metrics_port``).
        self.daemon_info = daemon_info if daemon_info is not None else {}
        # The socket server, once the daemon started it: its counters go into ``status``.
        self.server: Any = None
        # The performance history (a HistoryRecorder), once the daemon started it: after
        # readiness (opening its database is disk I/O); ``history_settled`` is set then,
        # or at once when history is off.
        self.history: Any = None
        self.history_settled = threading.Event()
        if not history_pending:
            self.history_settled.set()
        self._exposition: Exposition | None = None
        self._exposition_lock = threading.Lock()  # also guards making the dashboard
        # The dashboard page (a Dashboard), made at start when enabled, else by the first
        # ``dashboard`` call (``dashboard_factory``: its module is imported only then).
        self.dashboard: Any = None
        self.dashboard_factory: Callable[[], Any] | None = None
        # Every control call of the table, answered by its ``on_<name>`` method.
        self._calls: dict[str, Callable[[Any], Any]] = {
            name: getattr(self, f"on_{name}") for name in CONTROL_METHODS}

    @property
    def exposition(self) -> Exposition:
        """The metrics (``metrics`` call, the HTTP endpoint, exporters): status and
        histograms. Built on first use, so that a daemon whose metrics nobody asks for
        never imports ``prometheus_client`` (start to ready: ``scripts/bench`` figure 12)."""
        with self._exposition_lock:
            if self._exposition is None:
                from modcoord.supervisor.daemon.exposition import Exposition

                self._exposition = Exposition(self.status, self.coordinator.metrics)
            return self._exposition

    # -- data calls (hot path) --

    def register(self, info: ModuleInfo, endpoint: ModuleEndpoint) -> dict[str, Any]:
        return self.coordinator.register(info, endpoint).as_dict()

    def unregister(self, module_id: str, endpoint: ModuleEndpoint | None = None) -> bool:
        if self.history is not None:
            self.history.rates.forget(module_id)
        return self.coordinator.unregister(module_id, endpoint)

    def publish_many(self, items: Any) -> Sequence[Any]:
        if self.history is not None:  # per-module rates for the history
            items = items if isinstance(items, list) else list(items)
            self.history.rates.count(items)
        return self.coordinator.publish_many(items)

    def publish_backlog(self) -> int:
        return self.coordinator.publish_backlog()

    def timers_overdue(self) -> bool:
        return self.coordinator.timers_overdue()

    def coordinate(self, mode: str, context: dict[str, Any],
                   reply: Callable[[Any, BaseException | None], None],
                   caller: Sequence[str] = ()) -> None:
        self.coordinator.coordinate(mode, context, reply, caller)

    # -- control calls --

    def call(self, method: str, params: Params) -> Any:
        """Answer a control call, its params decoded by the call table.

        Raises:
            InvalidMessageError: not a control call of the table.
            ModcoordError: whatever the coordinator raises for the call.
        """
        handler = self._calls.get(method)
        if handler is None:
            raise InvalidMessageError(
                f"unknown control call {method!r}; expected one of "
                f"{', '.join(sorted(self._calls))}")
        return handler(params)

    # One method per control call (``on_<name>``), named after the table.

    def on_status(self, params: Params) -> dict[str, Any]:
        return self.status()

    def on_insights(self, params: Params) -> dict[str, Any]:
        result = self.coordinator.insights()
        if self.history is not None:  # the trend rules over the history
            trends = self.history.trends()
            result["insights"] = [*result.get("insights", []), *trends]
            result["recommendations"] = [*result.get("recommendations", []),
                                         *(t["recommendation"] for t in trends)]
        result["ok"] = True  # as every --json answer; `insights --json` prints this dict
        return result

    def on_history(self, params: HistoryParams) -> dict[str, Any]:
        if not self.history_settled.wait(HISTORY_START_WAIT_S):
            raise InvalidMessageError(
                f"the history is still opening its database after {HISTORY_START_WAIT_S} s "
                "(HISTORY_START_WAIT_S); retry in a moment, or see the daemon's log")
        if self.history is None:
            raise InvalidMessageError("history is off (history.enabled: false in daemon.yaml; "
                                      "set it to true and restart the daemon)")
        result: dict[str, Any] = self.history.query(params.metrics, params.since_s)
        return result

    def on_dashboard(self, params: Params) -> dict[str, Any]:
        if self.dashboard is None and self.dashboard_factory is not None:
            with self._exposition_lock:  # two first calls at once make one page server
                if self.dashboard is None:
                    self.dashboard = self.dashboard_factory()
        if self.dashboard is None:
            raise InvalidMessageError("the dashboard is not available in this process")
        result: dict[str, Any] = self.dashboard.enable()
        return result

    def on_optimize(self, params: Params) -> dict[str, Any]:
        return self.coordinator.optimize().as_dict()

    def on_set_mode(self, params: SetModeParams) -> dict[str, Any]:
        return self.coordinator.set_mode(params.mode).as_dict()

    def on_actor(self, params: ActorParams) -> Any:
        return self.coordinator.actor_call(params.actor, params.method, params.keywords())

    def on_reload(self, params: Params) -> dict[str, Any]:
        return self.reload()

    def on_config(self, params: Params) -> dict[str, Any]:
        return self.coordinator.config.as_dict()

    def on_metrics(self, params: Params) -> str:
        return self.exposition.text()

    def on_crash(self, params: CrashParams) -> None:
        self.coordinator.crash(params.actor, params.kind, kill=params.kill)

    def on_stop(self, params: Params) -> dict[str, Any]:
        return self.stop()

    def status_brief(self) -> dict[str, Any]:
        return self.coordinator.status_brief().as_dict()

    def status(self) -> dict[str, Any]:
        out = self.coordinator.status()
        out["running"] = True  # what `status --json` says when no daemon answers: false
        # The CLI's --json answers all say "ok"; `status --json` prints this very dict.
        out["ok"] = True
        out["last_reload_error"] = None
        if self.reloader is not None:
            reloads = self.reloader.statistics()
            out["last_reload_error"] = reloads.last_error
            out["reloads"] = {"ok": reloads.reloads_ok, "rejected": reloads.rejected,
                              "skipped": reloads.skipped, "running": reloads.running,
                              "unanswered": reloads.unanswered}
        out["daemon"] = dict(self.daemon_info)
        if self.server is not None:
            out["server"] = asdict(self.server.statistics())
        if self.history is not None:
            out["history"] = self.history.status()
        elif not self.history_settled.is_set():
            out["history"] = {"path": None, "state": "starting", "reason": None, "rows": 0}
        else:
            out["history"] = {"path": None, "state": "off",
                              "reason": "history.enabled is false", "rows": 0}
        out["dashboard"] = (self.dashboard.status() if self.dashboard is not None else
                            {"enabled": False, "url": None, "error": None})
        return out

    def reload(self) -> dict[str, Any]:
        """Reload on the reloader's own thread, waiting a bounded time for the outcome
        (``pending: true`` if it had not finished), so the control threads stay free."""
        if self.reloader is None:
            raise InvalidMessageError("reload is not available in this process")
        result = self.reloader.request("request")
        return {"ok": result.ok, "changed": result.changed, "error": result.error,
                "pending": result.pending}

    def stop(self) -> dict[str, Any]:
        if self.request_stop is not None:
            self.request_stop()
        return {"stopping": True}
