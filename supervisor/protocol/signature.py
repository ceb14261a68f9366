"""What one call looks like to a client: :class:`CallSignature` and how a field defaults.

The entries of the generated :mod:`.signatures` (the call table's msgspec-free client
view) are of these types.
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

__all__ = ["DEFAULT", "FACTORY", "REQUIRED", "UNSET", "CallSignature"]

REQUIRED: Final = "required"
"""The field has no default: a client must give it."""
DEFAULT: Final = "default"
"""The field has a plain default (the third element of its entry)."""
FACTORY: Final = "factory"
"""The field's default is made by a factory (a client method cannot offer it)."""
UNSET: Final = "unset"
"""The field is left out of the params unless given."""


class CallSignature(NamedTuple):
    """One call as a client sees it (see :class:`.calls.Call`).

    Attributes:
        name: the method name on the wire.
        params: ``(field, how, default)`` per field, in declaration order; ``how`` is
            :data:`REQUIRED`, :data:`DEFAULT`, :data:`FACTORY` or :data:`UNSET`, and
            ``default`` is ``None`` but for :data:`DEFAULT`.
        kind: ``"data"`` or ``"control"``.
        errors: the error type names it may answer with, beside ``InternalError``.
        result_doc: what the result holds.
        doc: what the call does.
    """

    name: str
    params: tuple[tuple[str, str, Any], ...]
    kind: str
    errors: tuple[str, ...]
    result_doc: str
    doc: str
