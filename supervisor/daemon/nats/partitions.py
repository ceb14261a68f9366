"""PLACEHOLDER (helper L's ``partitions`` replaces it on merge): the key → partition map."""

from __future__ import annotations

import zlib

__all__ = ["DEFAULT_PARTITIONS", "partition_of"]

DEFAULT_PARTITIONS = 64


def partition_of(module_id: str, key: str, partitions: int) -> int:
    """The partition of ``(module_id, key)``: stable across processes and versions."""
    return zlib.crc32(f"{module_id}\0{key}".encode()) % partitions
