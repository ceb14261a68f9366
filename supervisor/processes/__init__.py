"""Actors in processes of their own: the parent's side (:mod:`.host`), the child's side
(:mod:`.child`), what travels between them (:mod:`.codec`, :mod:`.channel`), the ledger
that keeps accepted updates safe while a child holds them (:mod:`.ledger`) and the
heartbeat that tells a hung child from a busy one (:mod:`.heartbeat`).

Which actors run out of process is ``daemon.yaml``'s ``supervisor.out_of_process``; the
supervisor (:mod:`modcoord.supervisor.supervisor`) starts, watches and restarts them under
the same strategy, intensity and backoff as the actors in the daemon.
"""

from __future__ import annotations

__all__ = ["HOSTABLE"]

HOSTABLE: tuple[str, ...] = ("batcher", "debouncer")
"""The actors that may run out of process: the data path. The cache, memory and monitor
actors share objects with the request path (the cache store, the activity table, the
metrics registry) that a process boundary would put behind a hop, so they stay in the
daemon."""
