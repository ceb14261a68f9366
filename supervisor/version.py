"""modcoord's version: the one place it is written.

``setup.cfg`` reads :data:`VERSION` (``version = attr: ...``), so the distribution's
metadata and this constant cannot disagree in an install made from this tree.
:func:`version` prefers the installed distribution's metadata and falls back to the
constant when modcoord runs from a tree that was never installed.
"""

from __future__ import annotations

from typing import Final

__all__ = ["DISTRIBUTION", "VERSION", "version"]

#: The version of this tree.
VERSION: Final = "0.1.0"

#: The name of the distribution whose metadata :func:`version` reads.
DISTRIBUTION: Final = "modcoord"


def version() -> str:
    """The installed distribution's version, else :data:`VERSION` (never raises).

    ``importlib.metadata`` is imported here, on call, not at import: it costs a sizeable
    part of a bare interpreter start and only ``--version`` needs it.
    """
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return VERSION
