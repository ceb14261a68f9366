"""The client API: :func:`connect`, :class:`Client` and its :class:`ActorProxy` objects.

>>> with connect() as coord:                       # doctest: +SKIP
...     coord.register(Editor()).get(timeout=2)
...     coord.publish("editor", "doc-1", {"text": "hi"}).get()
...     result = coord.coordinate("HYBRID", {"user": 7}).get()
...     coord.cache.statistics().get()

Every call returns a :class:`~.future.Future` at once (calls are pipelined over one
socket); ``future.get(timeout)`` waits for the answer, and a future is also awaitable from
asyncio. How requests are written and answers read is :mod:`.connection`'s business; the
modules' callbacks run in the callback thread (:mod:`.callbacks`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modcoord.supervisor.client.results import ClientStatistics, CoordinationResult

from modcoord.actors.errors import InvalidMessageError
from modcoord.supervisor.client.callbacks import CallbackRunner
from modcoord.supervisor.client.connection import Connection
from modcoord.supervisor.client.future import Future, failed_future
from modcoord.supervisor.client.registry import ModuleRegistry
from modcoord.supervisor.protocol.describe import register_params
from modcoord.supervisor.protocol.paths import resolve_runtime_dir, socket_path
from modcoord.supervisor.protocol.signature import FACTORY, REQUIRED, UNSET, CallSignature
from modcoord.supervisor.protocol.signatures import ACTOR_METHODS, CALLS

__all__ = ["CUSTOM_CALLS", "GENERATED_CALLS", "SESSION_CALLS", "ActorProxy", "Client", "connect"]


class ActorProxy:
    """Calls an actor's methods by name: ``client.cache.statistics()``.

    ``proxy.method(*args, **kwargs)`` sends ``actor {actor, method, args: [...],
    kwargs: {...}}`` and returns a :class:`Future`. Which methods exist is the daemon's
    business: an unknown one fails with ``InvalidMessageError``.
    """

    __slots__ = ("_actor", "_client")

    def __init__(self, client: Client, actor: str) -> None:
        self._client = client
        self._actor = actor

    def __repr__(self) -> str:
        return f"<ActorProxy {self._actor}>"

    def __dir__(self) -> list[str]:
        """The actor's methods declared in the call table (for completion)."""
        return sorted(ACTOR_METHODS.get(self._actor, ()))

    def __getattr__(self, method: str) -> Callable[..., Future[Any]]:
        if method.startswith("_"):
            raise AttributeError(method)
        client, actor = self._client, self._actor

        def call(*args: Any, **kwargs: Any) -> Future[Any]:
            return client.request("actor", {"actor": actor, "method": method,
                                            "args": list(args), "kwargs": kwargs})

        call.__name__ = method
        return call


class Client:
    """A connection to the daemon for one module process (use :func:`connect`).

    Use as a context manager, or call :meth:`close`.

    Attributes:
        path: the daemon's socket.
        timeout: default timeout of futures, and of connecting.
        name: how this client introduces itself in ``hello``.
        debouncer, cache, batcher, memory, monitor: :class:`ActorProxy` for each actor.
    """

    debouncer: ActorProxy
    cache: ActorProxy
    batcher: ActorProxy
    memory: ActorProxy
    monitor: ActorProxy

    def __init__(self, path: str | os.PathLike[str], timeout: float = 5.0, *,
                 name: str | None = None, reconnect: bool = True) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self.name = name or Path(sys.argv[0] or "python").name
        self._modules = ModuleRegistry()
        self._callbacks = CallbackRunner(self._modules)
        self._connection = Connection(self.path, timeout, self.name, reconnect,
                                      inbound=self._callbacks,
                                      rejoin=self._modules.registrations)
        self._request = self._connection.request
        for actor in ACTOR_METHODS:
            setattr(self, actor, ActorProxy(self, actor))

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Client:
        """Start the callback thread, connect and say hello; returns once the daemon
        answered. On failure the client is closed and the error is
        :meth:`.connection.Connection.start`'s (``NotRunningError``,
        ``ConnectionLostError``, ``CallTimeoutError``, ``ProtocolVersionError``)."""
        self._callbacks.start(self._connection)
        try:
            self._connection.start()
        except BaseException:
            self.close()
            raise
        return self

    def close(self, timeout: float = 2.0) -> None:
        """Write what is buffered, close the connection and stop reconnecting; pending
        futures fail with :class:`ConnectionLostError`. Idempotent."""
        if self._connection.closed:
            return
        self._connection.close(timeout)
        self._callbacks.stop(timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        """Whether a connection to the daemon is up (calls are sent, not failed fast)."""
        return self._connection.connected

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._connection.closed

    @property
    def daemon_info(self) -> dict[str, Any]:
        """The daemon's answer to the last ``hello`` (pid, mode, max_frame_bytes,
        version); empty before the first."""
        return self._connection.daemon_info

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until connected and the handshake (hello and re-registrations) is answered.

        Returns:
            whether it is, within ``timeout`` (default: the client's timeout).
        """
        return self._connection.wait_connected(timeout)

    def statistics(self) -> ClientStatistics:
        """A snapshot of this client's counters."""
        from modcoord.supervisor.client.results import ClientStatistics

        return ClientStatistics(**self._connection.counters(), **self._callbacks.counters(),
                                modules=len(self._modules))

    # -- sending ---------------------------------------------------------------------------

    def request(self, method: str, params: dict[str, Any] | None = None,
                convert: Callable[[Any], Any] | None = None) -> Future[Any]:
        """Send a request; the future resolves to its result (passed through ``convert``).

        The request is buffered and written soon (see :mod:`._sending`); waiting for
        the future writes it at once.

        Never raises: failures come out of the future — ``ConnectionLostError`` when not
        connected, ``InvalidMessageError`` for params that cannot be serialized or exceed
        the daemon's frame size, any remote error as mapped by
        :func:`~modcoord.supervisor.protocol.wire.error_from_wire`.
        """
        return self._request(method, params, convert)

    # -- the API -----------------------------------------------------------------------------

    def register(self, module: Any) -> Future[dict[str, Any]]:
        """Register a module object; its callbacks then run in this process.

        The client keeps the object and re-registers it after a reconnection.
        Resolves to the daemon's answer (``{"module_id", "mode", "strategy"}`` from the
        real daemon); fails with ``InvalidMessageError`` for a malformed module.
        """
        try:
            params = register_params(module)
        except InvalidMessageError as exc:
            return failed_future(exc, self.timeout)

        module_id: str = params["module_id"]
        modules = self._modules

        def registered(result: Any) -> Any:
            modules.registered(module_id, module)
            return result

        def forget_if_refused(future: Future[Any]) -> None:
            if future.exception(0) is not None:
                modules.refused(module_id, module)

        first = modules.host(module_id, module)
        future = self._request("register", params, registered)
        if first:
            future.add_done_callback(forget_if_refused)
        return future

    def unregister(self, module_id: str) -> Future[dict[str, Any]]:
        """Unregister a module (it is not re-registered after a reconnection)."""
        self._modules.forget(module_id)
        return self._request("unregister", {"module_id": module_id})

    if TYPE_CHECKING:
        # The typed signatures of the calls generated from the call table below (for
        # IDEs and mypy; a test checks they match the table's parameters and defaults).

        def publish(self, module_id: str, key: str, payload: Any,
                    priority: str = "medium") -> Future[int]: ...

        def coordinate(self, mode: str, context: dict[str, Any] | None = None,
                       ) -> Future[CoordinationResult]: ...

        def set_mode(self, mode: str) -> Future[dict[str, Any]]: ...

        def status(self) -> Future[dict[str, Any]]: ...

        def insights(self) -> Future[dict[str, Any]]: ...

        def history(self, metrics: list[str] | None = None, since_s: float = 3600.0,
                    ) -> Future[dict[str, Any]]: ...

        def dashboard(self) -> Future[dict[str, Any]]: ...

        def optimize(self) -> Future[dict[str, Any]]: ...

        def reload(self) -> Future[dict[str, Any]]: ...

        def config(self) -> Future[dict[str, Any]]: ...

        def metrics(self) -> Future[str]: ...

        def crash(self, actor: str, kind: str = "exception",
                  kill: bool = False) -> Future[None]: ...

        def stop(self) -> Future[dict[str, Any]]: ...

    def actor(self, name: str) -> ActorProxy:
        """The proxy of actor ``name`` (same as the attribute); its methods send the
        ``actor`` call."""
        return ActorProxy(self, name)


# -- the calls, from the call table ---------------------------------------------------------

SESSION_CALLS: frozenset[str] = frozenset({"hello"})
"""Calls the connection itself sends (``hello``, on every connection): no client method."""

CUSTOM_CALLS: frozenset[str] = frozenset({"register", "unregister", "actor"})
"""Calls whose client method is written out above: ``register`` takes a module object and
``unregister`` forgets it (both keep the client's module registry), ``actor`` is sent by
the :class:`ActorProxy` objects (``client.cache.statistics()``, ``client.actor(name)``)."""

def _coordination_result(data: Any) -> CoordinationResult:
    """``coordinate``'s converter: :meth:`.results.CoordinationResult.from_wire`, its module
    imported on the first use (it needs :mod:`dataclasses`, and with it :mod:`inspect`:
    some 20 ms that a client which never coordinates does not pay at import).

    Raises:
        InvalidMessageError: a malformed result (see ``from_wire``).
    """
    global _from_wire
    if _from_wire is None:
        from modcoord.supervisor.client.results import CoordinationResult

        _from_wire = CoordinationResult.from_wire
    return _from_wire(data)


_from_wire: Callable[[Any], CoordinationResult] | None = None

_CONVERTERS: dict[str, Callable[[Any], Any]] = {"coordinate": _coordination_result}
"""Calls whose result the client converts (call name → converter)."""


def _call_method(call: CallSignature) -> Callable[..., Future[Any]]:
    """A client method for ``call``: its parameters are the params struct's fields, in
    order, with the table's defaults; it sends every field and returns the future.

    Raises:
        TypeError: a field whose default is a factory or unset (a client method cannot
            offer it).
    """
    signature: list[str] = ["self"]
    items: list[str] = []
    namespace: dict[str, Any] = {"_convert": _CONVERTERS.get(call.name)}
    for n, (name, how, default) in enumerate(call.params):
        if how in (FACTORY, UNSET):
            raise TypeError(f"{call.name}.{name}: a default factory or an unset default "
                            "cannot be a client method's default; give the field a plain "
                            "default")
        if how == REQUIRED:
            signature.append(name)
        else:
            namespace[f"_default{n}"] = default
            signature.append(f"{name}=_default{n}")
        items.append(f"{name!r}: {name}")
    source = (f"def {call.name}({', '.join(signature)}):\n"
              f"    return self._request({call.name!r}, {{{', '.join(items)}}}, _convert)\n")
    exec(source, namespace)
    method: Callable[..., Future[Any]] = namespace[call.name]
    method.__qualname__ = f"Client.{call.name}"
    method.__module__ = __name__
    errors = ", ".join((*call.errors, "ConnectionLostError"))
    method.__doc__ = (f"{call.doc}\n\nResolves to {call.result_doc}. Fails with {errors}.")
    return method


def _add_call_methods() -> tuple[str, ...]:
    """Give :class:`Client` one method per call of the table (but the session and custom
    calls); returns their names."""
    added = []
    for name, call in CALLS.items():
        if name in SESSION_CALLS or name in CUSTOM_CALLS:
            continue
        setattr(Client, name, _call_method(call))
        added.append(name)
    return tuple(added)


GENERATED_CALLS: tuple[str, ...] = _add_call_methods()
"""The client methods made from the call table."""


def connect(runtime_dir: str | os.PathLike[str] | None = None, timeout: float = 5.0, *,
            name: str | None = None, reconnect: bool = True) -> Client:
    """Connect to the daemon of ``runtime_dir`` (default: the runtime-directory
    resolution: ``$MODCOORD_RUNTIME_DIR``, ``$XDG_RUNTIME_DIR/modcoord``,
    ``/tmp/modcoord-$UID``).

    Args:
        runtime_dir: the daemon's runtime directory; its socket is ``modcoord.sock``.
        timeout: for connecting, and the default of every future's ``get``.
        name: how this client introduces itself (default: the program name).
        reconnect: whether to reconnect (and re-register) after losing the daemon.

    Raises:
        NotRunningError: no daemon listens there (start one with ``modcoord start``).
        ConnectionLostError: the daemon closed the connection (e.g. refused this user).
        CallTimeoutError: the daemon did not answer hello within ``timeout``.
        ProtocolVersionError: the daemon speaks another protocol version (a
            ``ModcoordError`` naming both).
    """
    path = socket_path(resolve_runtime_dir(runtime_dir))
    return Client(path, timeout, name=name, reconnect=reconnect).start()
