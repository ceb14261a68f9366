"""The callback thread: runs the modules' code in a client's process, in arrival order.

The connection's reading thread hands it every event and callback request (see
:class:`~.connection.Inbound`); it runs ``on_batch`` for ``batch`` events,
``on_mode_change`` and ``get_performance_metrics`` for callback requests (and sends their
answers), and handles ``swept`` events.

A module whose subscriptions the daemon swept (its connection took none of its output for
``memory.inactive_after_ms``: the process was stopped, or its reader stuck) is told by a
``swept`` event, read when the connection moves again: the client logs a warning, counts
it (``ClientStatistics.sweeps_notified``), registers the module again (which restores its
subscriptions; updates published while it was swept were not delivered to it) and then
calls the module's optional ``on_swept(notice)`` with the event's params (``module_id``,
``reason``, ``idle_s``, ``inactive_after_ms``).

A module callback that raises is counted (``callback_errors``) and logged; a callback
request's error goes back to the daemon as the answer's error text.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any, Protocol

from modcoord.supervisor.client._log import log
from modcoord.supervisor.client._rows import LazyUpdates
from modcoord.supervisor.client.future import Future
from modcoord.supervisor.client.registry import ModuleRegistry, log_reregistration
from modcoord.supervisor.protocol.describe import register_params

__all__ = ["CallbackRunner", "Sender"]


_Item = tuple[Callable[..., None], tuple[Any, ...]]


class Sender(Protocol):
    """What the callback thread needs of the connection."""

    def request(self, method: str, params: dict[str, Any] | None = None,
                convert: Callable[[Any], Any] | None = None) -> Future[Any]:
        """Send a request (never raises; failures come out of the future)."""

    def send_callback_response(self, generation: int, cid: int, error: str | None,
                               result: Any) -> bool:
        """Answer a callback; False if the result had to be replaced by an error."""


class CallbackRunner:
    """The callback thread of one client and its counters."""

    def __init__(self, registry: ModuleRegistry) -> None:
        self._registry = registry
        self._sender: Sender | None = None
        self._queue: SimpleQueue[_Item | None] = SimpleQueue()
        self._thread = threading.Thread(
            target=self._main, name="modcoord-client-callbacks", daemon=True)
        self._batches_received = 0
        self._callbacks_run = 0
        self._callback_errors = 0
        self._sweeps_notified = 0

    def start(self, sender: Sender) -> None:
        """Start the thread; answers and re-registrations go through ``sender``."""
        self._sender = sender
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Run what is queued, then end the thread (waits up to ``timeout`` s for it,
        unless called from it). Idempotent."""
        self._queue.put(None)
        thread = self._thread
        if thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout)

    def counters(self) -> dict[str, Any]:
        """This thread's part of :class:`~.results.ClientStatistics`."""
        return {"batches_received": self._batches_received,
                "callbacks_run": self._callbacks_run,
                "callback_errors": self._callback_errors,
                "sweeps_notified": self._sweeps_notified}

    # -- handed over by the reading thread (see Inbound) -----------------------------------

    def on_event(self, name: str, params: Any) -> None:
        """Queue a ``batch`` or ``swept`` event; log and ignore any other."""
        if name == "batch" and isinstance(params, dict):
            self._queue.put((self._deliver_batch, (params,)))
        elif name == "swept" and isinstance(params, dict):
            self._queue.put((self._on_swept, (params,)))
        else:
            log.warning("ignoring unknown event from the daemon: %.80r",
                         [2, name, params])

    def on_callback(self, generation: int, cid: Any, method: Any, params: Any) -> None:
        """Queue a callback request."""
        self._queue.put((self._run_callback, (generation, cid, method, params)))

    # -- the thread ------------------------------------------------------------------------

    def _main(self) -> None:
        queue = self._queue
        while True:
            item = queue.get()
            if item is None:
                return
            fn, args = item
            try:
                fn(*args)
            except Exception:
                self._callback_errors += 1
                log.exception("module callback failed")

    def _deliver_batch(self, params: dict[str, Any]) -> None:
        module_id = params.get("module_id")
        module = self._registry.hosted(module_id)
        if module is None:
            log.warning("batch for %s, which this client has not registered", module_id,
                         extra={"module_id": module_id})
            return
        # Imported on the first batch: modcoord.actors.update needs dataclasses and with it
        # inspect (~20 ms), which a client that receives no batches never pays for.
        from modcoord.actors.update import Batch, updates_from_rows

        rows = params["updates"]
        updates = rows if type(rows) is LazyUpdates else updates_from_rows(rows)
        batch = Batch(params["batch_id"], updates, params.get("reason", "window"))
        self._batches_received += 1
        module.on_batch(batch)

    def _on_swept(self, params: dict[str, Any]) -> None:
        """The daemon removed a module's subscriptions: register it again, then tell it.

        Raises:
            Exception: whatever the module's ``on_swept`` raises (counted and logged by
                :meth:`_main`; the re-registration is already sent).
        """
        module_id = str(params.get("module_id"))
        self._sweeps_notified += 1
        module = self._registry.registered_object(module_id)
        if module is None:
            log.warning("the daemon swept %s, which this client has not registered",
                         module_id, extra={"module_id": module_id})
            return
        log.warning("the daemon removed the subscriptions of %s (%s); registering it again",
                     module_id, params.get("reason", "inactive"), extra={"module_id": module_id})
        assert self._sender is not None  # started before any connection exists
        future = self._sender.request("register", register_params(module))
        future.add_done_callback(functools.partial(log_reregistration, module_id))
        hook = getattr(module, "on_swept", None)
        if callable(hook):
            hook(dict(params))

    def _run_callback(self, generation: int, cid: Any, method: Any, params: Any) -> None:
        result: Any = None
        error: str | None = None
        try:
            if not isinstance(params, dict):
                raise TypeError("callback params must be a map")
            module_id = params.get("module_id")
            module = self._registry.hosted(module_id)
            if module is None:
                raise LookupError(f"module {module_id!r} is not registered in this client")
            if method == "on_mode_change":
                result = module.on_mode_change(params["mode"], params["strategy"],
                                               params.get("context") or {})
            elif method == "get_performance_metrics":
                fn = getattr(module, "get_performance_metrics", None)
                if fn is None:
                    raise AttributeError(f"module {module_id!r} has no get_performance_metrics")
                result = fn()
            else:
                raise ValueError(f"unknown callback {method!r}")
        except Exception as exc:
            self._callback_errors += 1
            error = f"{type(exc).__name__}: {exc}"
            result = None
        self._callbacks_run += 1
        assert self._sender is not None
        if not self._sender.send_callback_response(generation, cid, error, result):
            self._callback_errors += 1
