"""Keys to partitions, and partitions to coordinator instances.

A key's partition is a fixed function of ``(module_id, key)`` and the partition count, the
same in every process and every version (CRC-32), so keys are never rehashed when instances
come and go: per-key order holds because one partition has one owner at a time. Which
instance should own a partition is a deterministic function of the live members, by
rendezvous (highest-random-weight) hashing: when a member joins, the only partitions that
move go to it; when one leaves, only its own partitions move.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable

__all__ = ["DEFAULT_PARTITIONS", "MAX_PARTITIONS", "assign", "partition_of"]

#: Partitions a cluster has unless configured otherwise (``engine.partitions``).
DEFAULT_PARTITIONS = 64
#: The most partitions a cluster may have: each is a lease key and a JetStream consumer
#: (a Raft group when replicated), which cost the servers CPU even when idle.
MAX_PARTITIONS = 4096


def _check_count(partitions: int) -> None:
    if isinstance(partitions, bool) or not isinstance(partitions, int) or not (
            1 <= partitions <= MAX_PARTITIONS):
        raise ValueError(f"partitions must be an integer from 1 to {MAX_PARTITIONS} "
                         f"(MAX_PARTITIONS), not {partitions!r}: set engine.partitions to "
                         f"one in that range")


def partition_of(module_id: str, key: str, partitions: int) -> int:
    """The partition of ``(module_id, key)`` among ``partitions``: ``crc32(module_id NUL
    key) % partitions``, stable across processes, hosts and versions.

    Raises:
        ValueError: ``partitions`` is not an integer from 1 to :data:`MAX_PARTITIONS`.
    """
    _check_count(partitions)
    return zlib.crc32(f"{module_id}\0{key}".encode()) % partitions


def _weight(partition: int, member: str) -> int:
    digest = hashlib.blake2b(f"{partition}:{member}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def assign(partitions: int, members: Iterable[str]) -> dict[int, str]:
    """Which member should own each partition: the member with the highest
    ``blake2b(f"{p}:{member}")`` weight (ties, all but impossible, go to the name that
    sorts first). Duplicates in ``members`` count once; no members give ``{}``.

    Raises:
        ValueError: ``partitions`` is not an integer from 1 to :data:`MAX_PARTITIONS`.
    """
    _check_count(partitions)
    ranked = sorted(set(members))
    if not ranked:
        return {}
    targets: dict[int, str] = {}
    for p in range(partitions):
        best, best_weight = ranked[0], _weight(p, ranked[0])
        for member in ranked[1:]:
            weight = _weight(p, member)
            if weight > best_weight:
                best, best_weight = member, weight
        targets[p] = best
    return targets
