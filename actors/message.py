"""Messages: plain, immutable, serializable data exchanged by actors.

Every message an actor accepts is a frozen dataclass deriving from :class:`Message`,
defined beside the actor that handles it. Fields hold only data that msgpack can carry
(``None``, bool, int, float, str, bytes, lists/tuples, dicts, or other messages), so a
message can cross a process boundary: :meth:`Message.to_wire` and :func:`from_wire`
convert it to and from a plain dict tagged with the type name.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, TypeVar

from modcoord.actors.errors import InvalidMessageError

__all__ = ["Message", "from_wire", "message_types"]

M = TypeVar("M", bound="Message")

_REGISTRY: dict[str, type[Message]] = {}


class Message:
    """Base of every actor message. Subclasses must be ``@dataclass(frozen=True)``."""

    wire_name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"
        cls.wire_name = name
        _REGISTRY[name] = cls

    def to_wire(self) -> dict[str, Any]:
        """Return a plain dict (``{"type": ..., field: value, ...}``) for serialization."""
        out: dict[str, Any] = {"type": self.wire_name}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            out[f.name] = _encode(getattr(self, f.name))
        return out


def _encode(value: Any) -> Any:
    if isinstance(value, Message):
        return value.to_wire()
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def from_wire(data: dict[str, Any]) -> Message:
    """Rebuild a message from :meth:`Message.to_wire` output.

    Raises:
        InvalidMessageError: if the type is unknown or the fields do not match.
    """
    try:
        cls = _REGISTRY[data["type"]]
    except (KeyError, TypeError) as exc:
        raise InvalidMessageError(f"unknown message type in {data!r:.80}") from exc
    kwargs = {k: v for k, v in data.items() if k != "type"}
    hints = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for name, value in list(kwargs.items()):
        if name not in hints:
            raise InvalidMessageError(f"{cls.wire_name}: unknown field {name!r}")
        if isinstance(value, dict) and "type" in value and value["type"] in _REGISTRY:
            kwargs[name] = from_wire(value)
        elif isinstance(value, list):
            kwargs[name] = tuple(
                from_wire(v) if isinstance(v, dict) and v.get("type") in _REGISTRY else v
                for v in value
            )
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise InvalidMessageError(f"{cls.wire_name}: {exc}") from exc


def message_types() -> dict[str, type[Message]]:
    """Return every registered message type by wire name (for tests and docs)."""
    return dict(_REGISTRY)
