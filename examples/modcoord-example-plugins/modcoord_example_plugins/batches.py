"""A batch processor: deliver each batch newest first."""

from __future__ import annotations

from collections.abc import Sequence

from modcoord.actors.update import Update


def reverse(updates: Sequence[Update]) -> list[Update]:
    """The batch in reverse order (after ``priority``: lowest priority, newest first)."""
    return list(reversed(updates))


def drop_odd(updates: Sequence[Update]) -> list[Update]:
    """The batch without the updates whose value is an odd integer (a filter: what it
    leaves out is not delivered, and the daemon counts it)."""
    return [u for u in updates if not (isinstance(u.payload, int) and u.payload % 2)]
