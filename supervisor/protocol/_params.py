"""The base of every wire parameter struct, and their decoding (private: the public names
are those of :mod:`modcoord.supervisor.protocol.calls`)."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import msgspec

from modcoord.actors.errors import InvalidMessageError
from modcoord.supervisor.protocol.limits import MAX_KEY_LENGTH, MAX_MODULE_ID_LENGTH

__all__ = ["Empty", "Key", "ModuleId", "P", "Params", "convert_params"]

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


def convert_params(where: str, params: Any, struct: type[P]) -> P:
    """``params`` (a map) as ``struct``, validated.

    Raises:
        InvalidMessageError: ``"<where>: <problem> - at `$.field`"``.
    """
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
