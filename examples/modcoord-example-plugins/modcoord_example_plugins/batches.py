"""A batch processor: deliver each batch newest first."""

from __future__ import annotations

from collections.abc import Sequence

from modcoord.actors.update import Update


def reverse(updates: Sequence[Update]) -> list[Update]:
    """The batch in reverse order (after ``priority``: lowest priority, newest first)."""
    return list(reversed(updates))
