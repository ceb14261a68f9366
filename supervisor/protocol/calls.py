"""THE call table: every wire method, declared once.

Each request method the daemon answers is one :class:`Call` in :data:`CALLS`: its name,
its parameter struct (a :class:`msgspec.Struct`: field names, types, defaults and checks),
what it returns, whether it is a *data* call (served by the socket server itself) or a
*control* call (run on a control thread by the controller), and the error types it may
answer with. Everything else derives from this table: the server's decoding, validation
and dispatch, the controller's control dispatch, the client's methods, the CLI commands
and ``docs/PROTOCOL.md`` (a test checks that the document lists every call).

The actor methods callable through the ``actor`` call are declared the same way, in
:data:`ACTOR_CALLS` (actor name → method name → :class:`ActorMethod`); their names give
:data:`ACTOR_NAMES`.

Public API:

- :data:`PROTOCOL_VERSION` — the version a client announces in ``hello`` (``protocol``)
  and the daemon reports back; a mismatch is refused with
  :class:`~modcoord.supervisor.protocol.errors.ProtocolVersionError`.
- :class:`Call` — ``name``, ``params`` (the struct type), ``result`` (a type, for
  annotations), ``result_doc``, ``kind`` (:data:`DATA` or :data:`CONTROL`), ``errors``
  (error type names as they travel on the wire), ``doc``; ``call.decode(params)`` and
  ``call.fields`` (the params' field names in declaration order).
- :data:`CALLS` (name → :class:`Call`, in table order), :data:`METHODS`,
  :data:`DATA_METHODS`, :data:`CONTROL_METHODS` (frozensets of names).
- :func:`decode_params` ``(method, params_map) -> Params``: decode and validate a
  request's params in one step. Raises
  :class:`~modcoord.actors.errors.InvalidMessageError` ``"<method>: <what> - at `$.field`"``
  for a wrong type, a missing or unknown field, an out-of-range value, or an unknown
  method (the message lists the known ones).
- :func:`params_of` ``(method, **fields) -> dict``: the wire params map for a call (what a
  client sends), checked against the declaration (same errors as :func:`decode_params`).
- :func:`publish_item` — the publish hot path: the declaration's checks as plain type
  tests, returning ``(module_id, key, payload, priority)`` or ``None`` (then
  :func:`decode_params` says exactly what is wrong). A test checks it accepts exactly what
  :class:`PublishParams` accepts.
- :class:`ActorMethod`, :data:`ACTOR_CALLS`, :data:`ACTOR_NAMES`, :data:`CRASH_KINDS`,
  :func:`bind_actor_args` (positional and keyword arguments → the method's validated
  params).
- The parameter and result structs (``HelloParams``, ``PublishParams``, ...), the event
  structs (:class:`BatchEvent`, :class:`SweptEvent`, :data:`EVENTS`) and the callback
  structs (:class:`OnModeChangeParams`, :class:`GetPerformanceMetricsParams`,
  :data:`CALLBACKS`) — what the daemon sends a client.
- :class:`CoordinationResult` — the answer to ``coordinate``: the one type the daemon's
  engine returns and a client's ``coordinate`` resolves to (``from_wire`` builds it from
  the result map).

This module imports msgspec and :mod:`modcoord.actors.errors`, :mod:`modcoord.actors.modes`
and :mod:`modcoord.actors.update` only: never pykka, pydantic, loguru or the daemon.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, Literal, TypeVar

import msgspec

from modcoord.actors.errors import InvalidMessageError
from modcoord.actors.modes import MODES, canonical_mode
from modcoord.actors.update import PRIORITIES, PRIORITY_RANK
from modcoord.supervisor.protocol.limits import MAX_KEY_LENGTH, MAX_MODULE_ID_LENGTH
from modcoord.supervisor.protocol.module import ModuleInfo

__all__ = [
    "ACTOR_CALLS",
    "ACTOR_NAMES",
    "CALLBACKS",
    "CALLS",
    "CONTROL",
    "CONTROL_METHODS",
    "CRASH_KINDS",
    "DATA",
    "DATA_METHODS",
    "EVENTS",
    "METHODS",
    "PROTOCOL_VERSION",
    "ActorMethod",
    "ActorParams",
    "BatchEvent",
    "Call",
    "CoordinateParams",
    "CoordinationResult",
    "CrashParams",
    "Empty",
    "GetPerformanceMetricsParams",
    "HelloParams",
    "HelloResult",
    "HistoryParams",
    "ModuleIdParams",
    "OnModeChangeParams",
    "Params",
    "PublishParams",
    "RegisterParams",
    "RegisterResult",
    "SetModeParams",
    "SetModeResult",
    "SweptEvent",
    "bind_actor_args",
    "decode_params",
    "params_of",
    "publish_item",
]

PROTOCOL_VERSION: Final = 1
"""The wire protocol's version. Raised when a change would break a client of the previous
version (a field removed or retyped, a call's meaning changed); adding an optional field
or a new call does not raise it."""

DATA: Final = "data"
CONTROL: Final = "control"

CRASH_KINDS: tuple[str, ...] = ("exception", "base_exception")

ModuleId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_MODULE_ID_LENGTH)]
Key = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_KEY_LENGTH)]


class Params(msgspec.Struct, forbid_unknown_fields=True):
    """Base of every parameter struct: unknown fields are refused."""

    def to_wire(self) -> dict[str, Any]:
        """The params as the map that goes on the wire (every field set, defaults
        included; a field left unset is left out)."""
        return {f: v for f in self.__struct_fields__
                if (v := getattr(self, f)) is not msgspec.UNSET}


P = TypeVar("P", bound=Params)


class Empty(Params):
    """No parameters (``{}``)."""


# -- session and data calls ----------------------------------------------------------------


class HelloParams(Params):
    """``hello``: who the client is. ``protocol`` is the client's protocol version
    (``PROTOCOL_VERSION``; 0, or left out, by clients that predate versioning: then not checked)."""

    client: str = ""
    pid: int = 0
    protocol: int = 0


class HelloResult(msgspec.Struct):
    """The daemon's answer to ``hello``. ``version`` and ``protocol`` are both the
    daemon's :data:`PROTOCOL_VERSION` (``version`` is the older name)."""

    pid: int
    mode: str
    max_frame_bytes: int
    version: int
    protocol: int


def _modes_ok(name: str, modes: Sequence[str]) -> None:
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"'{name}': unknown mode(s) {unknown}; choose from {', '.join(MODES)}")


class RegisterParams(Params):
    """``register``: a module on this connection. ``name`` defaults to the module id,
    ``supported_modes`` to every mode; ``subscribe`` is a list of source module ids
    (``"*"``: all), a single string is taken as a one-element list."""

    module_id: ModuleId
    name: str | msgspec.UnsetType = msgspec.UNSET
    supported_modes: list[str] | msgspec.UnsetType = msgspec.UNSET
    subscribe: list[str] | str = msgspec.field(default_factory=list)
    has_metrics: bool = False

    def __post_init__(self) -> None:
        if self.supported_modes is not msgspec.UNSET:
            _modes_ok("supported_modes", self.supported_modes)

    def info(self) -> ModuleInfo:
        """The module's :class:`~modcoord.supervisor.protocol.module.ModuleInfo`."""
        subscribe = self.subscribe
        return ModuleInfo(
            module_id=self.module_id,
            name=self.module_id if self.name is msgspec.UNSET else self.name,
            supported_modes=frozenset(MODES if self.supported_modes is msgspec.UNSET
                                      else self.supported_modes),
            subscribe=(subscribe,) if isinstance(subscribe, str) else tuple(subscribe),
            has_metrics=self.has_metrics)


class RegisterResult(msgspec.Struct):
    """The answer to ``register``: the module id, the daemon's mode and its strategy."""

    module_id: str
    mode: str
    strategy: str


class ModuleIdParams(Params):
    """``unregister``: the module id (registered on this connection)."""

    module_id: ModuleId


class PublishParams(Params):
    """``publish``: one update. ``priority`` is one of ``critical``, ``high``, ``medium``,
    ``low``. The payload is any msgpack value nesting at most ``MAX_NESTING_DEPTH``
    levels whose delivery fits one frame."""

    module_id: Annotated[str, msgspec.Meta(min_length=1)]
    key: Key
    payload: Any
    priority: str = "medium"

    def __post_init__(self) -> None:
        if self.priority not in PRIORITY_RANK:
            raise ValueError(
                f"'priority' must be one of {', '.join(PRIORITIES)}, got {self.priority!r}")

    def item(self) -> tuple[str, str, Any, str]:
        """``(module_id, key, payload, priority)``, as the engine's ``publish_many`` takes."""
        return self.module_id, self.key, self.payload, self.priority


class CoordinateParams(Params):
    """``coordinate``: a coordination round in ``mode`` (any case, ``-`` or ``_``; made
    canonical), with an optional context map (``null`` is ``{}``)."""

    mode: str
    context: dict[Any, Any] | None = None

    def __post_init__(self) -> None:
        self.mode = _mode_field(self.mode)
        if self.context is None:
            self.context = {}


@dataclass(frozen=True)
class CoordinationResult:
    """The answer to ``coordinate`` (what the daemon's in-process engine returns and a
    client's ``coordinate`` resolves to).

    Attributes:
        mode: the canonical mode coordinated.
        strategy: the mode's memory strategy.
        results: module id → what its ``on_mode_change`` returned.
        errors: module id → error text (modules that failed or timed out).
        cached: whether it came from the daemon's cache.
        latency_ms: the daemon's time to answer.
    """

    mode: str
    strategy: str
    results: dict[str, Any]
    errors: dict[str, str]
    cached: bool
    latency_ms: float

    @classmethod
    def from_wire(cls, data: Any) -> CoordinationResult:
        """Build from the daemon's result map.

        Raises:
            InvalidMessageError: the map lacks ``mode`` or has fields of the wrong type.
        """
        if type(data) is not dict or type(data.get("mode")) is not str:
            raise InvalidMessageError(f"coordinate: malformed result {data!r:.120}")
        results = data.get("results") or {}
        errors = data.get("errors") or {}
        if type(results) is not dict or type(errors) is not dict:
            raise InvalidMessageError("coordinate: results and errors must be maps")
        if errors:
            errors = {str(k): str(v) for k, v in errors.items()}
        strategy = data.get("strategy", "")
        # Every cached coordinate builds one: fill the fields directly, without the frozen
        # dataclass's per-field object.__setattr__ (half the cost).
        result = _object_new(cls)
        result.__dict__.update(
            mode=data["mode"],
            strategy=strategy if type(strategy) is str else str(strategy),
            results=results,
            errors=errors,
            cached=bool(data.get("cached", False)),
            latency_ms=float(data.get("latency_ms", 0.0)),
        )
        return result


_object_new = object.__new__


# -- control calls -------------------------------------------------------------------------


def _mode_field(value: str) -> str:
    try:
        return canonical_mode(value)
    except ValueError as exc:
        raise ValueError(f"'mode' {exc}") from None


class SetModeParams(Params):
    """``set_mode``: the new mode (any case, ``-`` or ``_``; made canonical)."""

    mode: str

    def __post_init__(self) -> None:
        self.mode = _mode_field(self.mode)


class SetModeResult(msgspec.Struct):
    """The answer to ``set_mode``: the new and previous mode, the strategy, and each
    module's ``on_mode_change`` result or error."""

    mode: str
    previous: str
    strategy: str
    results: dict[str, Any]
    errors: dict[str, str]


HISTORY_MAX_SINCE_S: Final = 30 * 86_400
"""The longest ``history`` query (the history's longest retention)."""
HISTORY_MAX_METRICS: Final = 64
"""The most metrics one ``history`` query names."""


class HistoryParams(Params):
    """``history``: the series of ``metrics`` (null or empty: all) over the last ``since_s``
    seconds (at most 30 days); the resolution is the finest that covers it (1 s up to an
    hour, 1 min up to a day, else 10 min)."""

    metrics: Annotated[list[Annotated[str, msgspec.Meta(min_length=1, max_length=200)]],
                       msgspec.Meta(max_length=HISTORY_MAX_METRICS)] | None = None
    since_s: Annotated[float, msgspec.Meta(gt=0, le=HISTORY_MAX_SINCE_S)] = 3600.0


class CrashParams(Params):
    """``crash``: make an actor fail (fault injection, only when the daemon allows it)."""

    actor: str
    kind: str = "exception"
    kill: bool = False
    """SIGKILL the actor's process instead (an actor in a process of its own only)."""

    def __post_init__(self) -> None:
        _actor_field(self.actor)
        if self.kind not in CRASH_KINDS:
            raise ValueError(f"'kind' must be one of {', '.join(CRASH_KINDS)}, "
                             f"got {self.kind!r}")


class ActorParams(Params, dict=True):
    """``actor``: call ``method`` of actor ``actor``. ``args`` is a list of positional
    arguments (a map is taken as keyword arguments), ``kwargs`` a map of keyword
    arguments. Decoding binds and validates them against the method's declaration
    (:data:`ACTOR_CALLS`, :func:`bind_actor_args`): :attr:`arguments` holds the result."""

    actor: str
    method: str
    # Typed ``Any`` and checked below by exact type: msgspec would take any sequence (an
    # ``ExtType``, a named tuple) as a list.
    args: Any = None
    """A list of positional arguments, a map of keyword arguments, or null."""
    kwargs: Any = None
    """A map of keyword arguments, or null."""

    def __post_init__(self) -> None:
        _actor_field(self.actor)
        if not self.method.isidentifier() or self.method.startswith("_"):
            raise ValueError(f"'method' must be a public method name, got {self.method!r}")
        args = self.args
        if args is not None and type(args) is not list and type(args) is not dict:
            raise ValueError("'args' must be a list (or a map of keyword arguments), "
                             f"got {type(args).__name__}")
        if self.kwargs is not None and type(self.kwargs) is not dict:
            raise ValueError(f"'kwargs' must be a map, got {type(self.kwargs).__name__}")
        kwargs = dict(self.kwargs or {})
        for name in (*kwargs, *(args if isinstance(args, dict) else ())):
            if type(name) is not str or not name.isidentifier():
                raise ValueError(
                    f"keyword argument names must be identifiers, got {name!r}")
        if isinstance(args, dict):
            kwargs = {**args, **kwargs}
            args = None
        try:
            self.arguments: Params = bind_actor_args(self.actor, self.method, args or [],
                                                     kwargs)
        except InvalidMessageError as exc:
            raise ValueError(str(exc)) from None

    def keywords(self) -> dict[str, Any]:
        """The bound arguments as keyword arguments of the actor method."""
        return self.arguments.to_wire()


# -- actor methods -------------------------------------------------------------------------


class FlushDebounceParams(Params):
    """``debouncer.flush``: flush pending debounces now (all, one module's, or one key)."""

    module_id: str | None = None
    key: str | None = None


class CancelDebounceParams(Params):
    """``debouncer.cancel``: drop the pending debounce of one module's key."""

    module_id: str
    key: str


class ShrinkParams(Params):
    """``cache.shrink``: evict this fraction of the cache's entries (0 to 1)."""

    fraction: Annotated[float, msgspec.Meta(ge=0, le=1)]


@dataclass(frozen=True)
class ActorMethod:
    """One actor method callable over the ``actor`` call.

    Attributes:
        actor: the actor's name.
        name: the method's name.
        params: its argument struct (positional arguments bind to its fields in order).
        doc: what it does and returns.
    """

    actor: str
    name: str
    params: type[Params]
    doc: str


def _actor_methods(actor: str, *methods: tuple[str, type[Params], str]
                   ) -> dict[str, ActorMethod]:
    table = {"statistics": ActorMethod(actor, "statistics", Empty,
                                       "the actor's statistics snapshot (a map)")}
    for name, params, doc in methods:
        table[name] = ActorMethod(actor, name, params, doc)
    return table


ACTOR_CALLS: Mapping[str, Mapping[str, ActorMethod]] = {
    "debouncer": _actor_methods(
        "debouncer",
        ("flush", FlushDebounceParams, "flush pending debounces now; returns how many"),
        ("cancel", CancelDebounceParams, "drop one pending debounce; returns whether "
                                         "there was one"),
        ("pending", Empty, "the number of pending debounces"),
    ),
    "cache": _actor_methods(
        "cache",
        ("clear", Empty, "drop every entry; returns how many"),
        ("purge", Empty, "drop the expired entries; returns how many"),
        ("shrink", ShrinkParams, "evict a fraction of the entries; returns how many"),
    ),
    "batcher": _actor_methods(
        "batcher",
        ("flush", Empty, "deliver every queued batch now; returns how many updates"),
        ("queue_depth", Empty, "the number of queued updates"),
    ),
    "memory": _actor_methods(
        "memory",
        ("force_cleanup", Empty, "run the memory cleanup now; returns what it freed"),
    ),
    "monitor": _actor_methods(
        "monitor",
        ("latencies", Empty, "the coordination latency histogram snapshot"),
        ("trim", Empty, "drop the monitor's old samples"),
    ),
}
"""Actor name → method name → :class:`ActorMethod`."""

ACTOR_NAMES: tuple[str, ...] = tuple(ACTOR_CALLS)
"""The actors of the daemon, by name (the order in which ``status`` lists them)."""


def _actor_field(actor: str) -> None:
    if actor not in ACTOR_CALLS:
        raise ValueError(f"'actor' must be one of {', '.join(ACTOR_NAMES)}, got {actor!r}")


def bind_actor_args(actor: str, method: str, args: Sequence[Any],
                    kwargs: Mapping[str, Any]) -> Params:
    """Bind an actor call's positional and keyword arguments to the method's declared
    params and validate them.

    Raises:
        InvalidMessageError: unknown actor or method (naming the valid ones), too many
            positional arguments, an argument given twice, or an argument of the wrong
            type or range (``at `$.name```).
    """
    methods = ACTOR_CALLS.get(actor)
    if methods is None:
        raise InvalidMessageError(
            f"unknown actor {actor!r}; choose one of {', '.join(ACTOR_NAMES)}")
    decl = methods.get(method)
    if decl is None:
        raise InvalidMessageError(
            f"{actor} has no method {method!r}; choose one of {', '.join(methods)}")
    fields = decl.params.__struct_fields__
    where = f"{actor}.{method}"
    if len(args) > len(fields):
        raise InvalidMessageError(
            f"{where}: takes {len(fields)} argument(s) ({', '.join(fields) or 'none'}), "
            f"got {len(args)} positional")
    bound: dict[Any, Any] = dict(zip(fields, args, strict=False))
    for name, value in kwargs.items():
        if name in bound:
            raise InvalidMessageError(f"{where}: argument {name!r} given twice")
        bound[name] = value
    return _convert(where, bound, decl.params)


# -- events and callbacks (daemon → client) -----------------------------------------------


class BatchEvent(msgspec.Struct):
    """Event ``batch``: updates delivered to ``module_id`` (the subscriber). Each update
    is ``[source_module_id, key, payload, priority, seq]``; a batch too large for one
    frame comes as several events with the same ``batch_id``."""

    module_id: str
    batch_id: int
    reason: str
    updates: list[tuple[str, str, Any, str, int]]


class SweptEvent(msgspec.Struct):
    """Event ``swept``: the memory manager removed ``module_id``'s subscriptions after
    ``idle_s`` seconds idle (the limit is ``inactive_after_ms``); register it again."""

    module_id: str
    reason: str
    idle_s: float
    inactive_after_ms: int


EVENTS: Mapping[str, type[msgspec.Struct]] = {"batch": BatchEvent, "swept": SweptEvent}
"""Event name → its params struct."""


class OnModeChangeParams(msgspec.Struct):
    """Callback ``on_mode_change``: call the module's ``on_mode_change(mode, strategy,
    context)`` and answer with its result."""

    module_id: str
    mode: str
    strategy: str
    context: dict[str, Any]


class GetPerformanceMetricsParams(msgspec.Struct):
    """Callback ``get_performance_metrics``: answer with the module's metrics map."""

    module_id: str


CALLBACKS: Mapping[str, type[msgspec.Struct]] = {
    "on_mode_change": OnModeChangeParams,
    "get_performance_metrics": GetPerformanceMetricsParams,
}
"""Callback method name → its params struct."""


# -- the table -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One wire method.

    Attributes:
        name: the method name on the wire.
        params: the parameter struct (its fields, in order, are the call's parameters).
        result: the result's type (a struct, or a plain type), for annotations.
        result_doc: what the result holds.
        kind: :data:`DATA` (served by the socket server) or :data:`CONTROL` (run by the
            controller on a control thread).
        errors: the error type names it may answer with, beside ``InternalError``.
        doc: what the call does.
    """

    name: str
    params: type[Params]
    result: Any
    result_doc: str
    kind: Literal["data", "control"]
    errors: tuple[str, ...]
    doc: str
    fields: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", tuple(self.params.__struct_fields__))

    def decode(self, params: Any) -> Params:
        """Decode and validate this call's params map.

        Raises:
            InvalidMessageError: ``"<name>: <problem> - at `$.field`"``.
        """
        return _convert(self.name, params, self.params)


_INVALID = ("InvalidMessageError",)
_CONTROL_ERRORS = ("InvalidMessageError", "ActorStoppedError", "CallTimeoutError")


def _calls(*calls: Call) -> dict[str, Call]:
    return {c.name: c for c in calls}


CALLS: Mapping[str, Call] = _calls(
    Call("hello", HelloParams, HelloResult,
         "{pid, mode, max_frame_bytes, version, protocol}", DATA,
         ("InvalidMessageError", "ProtocolVersionError"),
         "Introduce the client; the first request on a connection. A client announcing "
         "another protocol version is refused (ProtocolVersionError naming both)."),
    Call("register", RegisterParams, RegisterResult, "{module_id, mode, strategy}", DATA,
         _INVALID,
         "Register a module on this connection; it then receives the batches of the "
         "modules it subscribes to and the mode-change callbacks."),
    Call("unregister", ModuleIdParams, dict[str, Any], "{module_id}", DATA, _INVALID,
         "Unregister a module registered on this connection."),
    Call("publish", PublishParams, int, "the update's sequence number", DATA,
         ("InvalidMessageError", "QueueFullError", "ActorStoppedError"),
         "Publish one update of a module registered on this connection; it is debounced, "
         "cached and batched to the subscribers."),
    Call("coordinate", CoordinateParams, CoordinationResult,
         "{mode, strategy, results, errors, cached, latency_ms}", DATA,
         ("InvalidMessageError", "ActorStoppedError", "CallTimeoutError"),
         "Run a coordination round: every module supporting the mode gets on_mode_change; "
         "a repeated round may be answered from the cache."),
    Call("set_mode", SetModeParams, SetModeResult,
         "{mode, previous, strategy, results, errors}", CONTROL, _CONTROL_ERRORS,
         "Switch the daemon's mode (actors reconfigured live, every module told)."),
    Call("status", Empty, dict[str, Any], "the status map (as `modcoord status --json`)",
         CONTROL, _CONTROL_ERRORS, "The daemon's status."),
    Call("insights", Empty, dict[str, Any], "{insights: [...], recommendations: [...]}",
         CONTROL, _CONTROL_ERRORS, "The monitor's insights and recommendations."),
    Call("history", HistoryParams, dict[str, Any],
         "{resolution_s, since_s, now, state, columns, series: {metric: [[ts, min, max, "
         "mean, last], ...]}}", CONTROL, _CONTROL_ERRORS,
         "The performance history's series (as `modcoord history --json`)."),
    Call("dashboard", Empty, dict[str, Any],
         "{url, address, started, token_file, error}", CONTROL, _CONTROL_ERRORS,
         "Serve the dashboard page if it is not served yet (dashboard.enabled: false, or "
         "it could not bind before) and answer its URL with the access token; `error` "
         "says why it cannot be served (then `url` is null)."),
    Call("optimize", Empty, dict[str, Any], "what was flushed, delivered and freed",
         CONTROL, _CONTROL_ERRORS,
         "Flush pending debounces and batches, clear the cache, run memory cleanup."),
    Call("actor", ActorParams, Any, "the actor method's result", CONTROL,
         ("InvalidMessageError", "ActorStoppedError", "ActorCrashedError",
          "CallTimeoutError"),
         "Call a public method of one actor (see the actor methods)."),
    Call("reload", Empty, dict[str, Any], "{ok, changed, error, pending}", CONTROL,
         _CONTROL_ERRORS, "Re-read the config directory now."),
    Call("config", Empty, dict[str, Any], "the effective configuration", CONTROL,
         _CONTROL_ERRORS, "The effective configuration."),
    Call("metrics", Empty, str, "the Prometheus text exposition", CONTROL,
         _CONTROL_ERRORS, "The metrics in the Prometheus text format."),
    Call("crash", CrashParams, None, "null", CONTROL, _CONTROL_ERRORS,
         "Fault injection: make an actor fail (refused unless the daemon enables it)."),
    Call("stop", Empty, dict[str, Any], "{stopping: true}", CONTROL, _CONTROL_ERRORS,
         "Ask the daemon to stop gracefully."),
)
"""Method name → :class:`Call`, in table order (data calls first)."""

METHODS: frozenset[str] = frozenset(CALLS)
DATA_METHODS: frozenset[str] = frozenset(n for n, c in CALLS.items() if c.kind == DATA)
CONTROL_METHODS: frozenset[str] = frozenset(n for n, c in CALLS.items() if c.kind == CONTROL)
_METHOD_LIST = ", ".join(sorted(METHODS))


# -- decoding ------------------------------------------------------------------------------


def _convert(where: str, params: Any, struct: type[P]) -> P:
    try:
        return msgspec.convert(params, struct, strict=True)
    except msgspec.ValidationError as exc:
        raise InvalidMessageError(f"{where}: {_wording(exc, params)}") from None


def _wording(exc: msgspec.ValidationError, params: Any) -> str:
    text = str(exc)
    if text == "Expected `str` - at `key` in `$`" and type(params) is dict:
        # A field name that is not a string: no field of any call has one.
        odd = ", ".join(repr(k) for k in params if type(k) is not str)
        return f"Object contains unknown field(s) {odd} (field names are strings)"
    if text.startswith("Expected `object`"):  # the params themselves are not a map
        return "params must be a map" + text[len("Expected `object`"):].split(" - at")[0]
    return text


def decode_params(method: Any, params: Any) -> Params:
    """Decode and validate a request's params map into the method's struct.

    Raises:
        InvalidMessageError: unknown method (listing the known ones), params that are not
            a map, or params that do not fit the declaration (naming the field).
    """
    call = CALLS.get(method) if type(method) is str else None
    if call is None:
        raise InvalidMessageError(f"unknown method {method!r}; expected one of {_METHOD_LIST}")
    if type(params) is not dict:
        raise InvalidMessageError(f"{method}: params must be a map, got {type(params).__name__}")
    return call.decode(params)


def params_of(method: str, **fields: Any) -> dict[str, Any]:
    """The wire params map of a call, checked against its declaration (what a client
    sends; fields left out keep their defaults and are not sent).

    Raises:
        InvalidMessageError: as :func:`decode_params`.
    """
    decode_params(method, fields)
    return fields


_RANKS = PRIORITY_RANK


def publish_item(params: dict[Any, Any]) -> tuple[str, str, Any, str] | None:
    """The hot path's check of ``publish`` params: :class:`PublishParams`'s rules as
    plain type tests. Returns ``(module_id, key, payload, priority)`` when they pass,
    ``None`` otherwise (decode with :func:`decode_params` to learn why). Never raises."""
    n = len(params)
    priority: Any = "medium"
    if n == 4:
        priority = params.get("priority")
        if type(priority) is not str or priority not in _RANKS:
            return None
    elif n != 3:
        return None
    module_id = params.get("module_id")
    key = params.get("key")
    if (type(module_id) is str and module_id and type(key) is str
            and 0 < len(key) <= MAX_KEY_LENGTH and "payload" in params):
        return module_id, key, params["payload"], priority
    return None
