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

The parameter base and its decoding (``_params.py``), the actor methods (``_actor_calls.py``)
and the events and callbacks (``_events.py``) live in private modules beside this one; this
module is their public face (import every name from here).

This module imports msgspec and :mod:`modcoord.actors.errors`, :mod:`modcoord.actors.modes`
and :mod:`modcoord.actors.update` only: never pykka, pydantic, loguru or the daemon.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, Literal

import msgspec

from modcoord.actors.errors import InvalidMessageError
from modcoord.actors.modes import MODES, canonical_mode
from modcoord.actors.update import PRIORITIES, PRIORITY_RANK
from modcoord.supervisor.protocol._actor_calls import (
    ACTOR_CALLS,
    ACTOR_NAMES,
    ActorMethod,
    ActorParams,
    bind_actor_args,
    check_actor,
)
from modcoord.supervisor.protocol._events import (
    CALLBACKS,
    EVENTS,
    BatchEvent,
    GetPerformanceMetricsParams,
    OnModeChangeParams,
    SweptEvent,
)
from modcoord.supervisor.protocol._params import Empty, Key, ModuleId, Params, convert_params
from modcoord.supervisor.protocol.limits import MAX_KEY_LENGTH
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
        check_actor(self.actor)
        if self.kind not in CRASH_KINDS:
            raise ValueError(f"'kind' must be one of {', '.join(CRASH_KINDS)}, "
                             f"got {self.kind!r}")


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
        return convert_params(self.name, params, self.params)


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
