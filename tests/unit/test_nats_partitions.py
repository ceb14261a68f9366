"""Keys to partitions and partitions to members (supervisor/daemon/nats/partitions.py)."""

from __future__ import annotations

import math
import random
import subprocess
import sys
import zlib
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modcoord.supervisor.daemon.nats.partitions import (
    DEFAULT_PARTITIONS,
    MAX_PARTITIONS,
    assign,
    partition_of,
)

names = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12)
member_sets = st.sets(names, min_size=1, max_size=12)


def test_partition_of_is_crc32_of_module_and_key() -> None:
    assert partition_of("sensor", "temp", 64) == zlib.crc32(b"sensor\0temp") % 64
    # the separator keeps ("ab", "c") and ("a", "bc") apart
    assert zlib.crc32(b"ab\0c") != zlib.crc32(b"a\0bc")
    assert all(0 <= partition_of("m", f"k{i}", 7) < 7 for i in range(200))


def test_partition_of_is_the_same_in_another_process() -> None:
    """Stable across processes (no per-process hash seed)."""
    code = ("from modcoord.supervisor.daemon.nats.partitions import partition_of;"
            "print([partition_of('mod', f'key{i}', 64) for i in range(50)])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=30, env={"PYTHONHASHSEED": "123"})
    assert out.stdout.strip() == str([partition_of("mod", f"key{i}", 64) for i in range(50)])


def test_keys_spread_over_the_partitions() -> None:
    counts = Counter(partition_of(f"mod{i % 10}", f"key{i}", DEFAULT_PARTITIONS)
                     for i in range(64_000))
    assert len(counts) == DEFAULT_PARTITIONS
    assert max(counts.values()) < 1.2 * 1000 and min(counts.values()) > 0.8 * 1000


@pytest.mark.parametrize("bad", [0, -1, MAX_PARTITIONS + 1, 2.0, True, "64"])
def test_a_bad_partition_count_is_refused_naming_the_limit(bad: object) -> None:
    with pytest.raises(ValueError, match="MAX_PARTITIONS"):
        partition_of("m", "k", bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"engine\.partitions"):
        assign(bad, ["a"])  # type: ignore[arg-type]


def test_no_members_no_targets() -> None:
    assert assign(8, []) == {}


@given(member_sets)
def test_every_partition_gets_one_of_the_members_whatever_their_order(
        members: set[str]) -> None:
    targets = assign(16, members)
    assert set(targets) == set(range(16))
    assert set(targets.values()) <= members
    shuffled = list(members)
    random.Random(1).shuffle(shuffled)
    assert assign(16, shuffled + shuffled) == targets  # order and duplicates do not matter


@given(member_sets, names)
def test_a_joining_member_only_takes_partitions(members: set[str], new: str) -> None:
    """Minimal movement: when a member joins, every partition that moves moves to it."""
    before = assign(DEFAULT_PARTITIONS, members)
    after = assign(DEFAULT_PARTITIONS, members | {new})
    moved = {p for p in before if before[p] != after[p]}
    assert all(after[p] == new for p in moved)


@given(st.sets(names, min_size=2, max_size=12), st.data())
def test_a_leaving_member_only_gives_up_its_own(members: set[str], data: st.DataObject) -> None:
    """Minimal movement: when a member leaves, only its partitions move."""
    gone = data.draw(st.sampled_from(sorted(members)))
    before = assign(DEFAULT_PARTITIONS, members)
    after = assign(DEFAULT_PARTITIONS, members - {gone})
    assert {p for p in before if before[p] != after[p]} == {
        p for p, m in before.items() if m == gone}


@pytest.mark.parametrize("n", [2, 3, 10])
def test_partitions_are_balanced_within_a_bound(n: int) -> None:
    """Over 200 clusters of realistic instance ids (host-pid), every member's share of 64
    partitions stays within 4 standard deviations of the even share, and the shares' mean
    and variance are those of rendezvous hashing's Bin(64, 1/n). (With 10 members that
    bound reaches 0: a member may get no partition, which plain rendezvous allows.)"""
    rng = random.Random(n)
    shares: list[int] = []
    for _ in range(200):
        members = {f"host{rng.randrange(1000)}-{rng.randrange(1 << 22)}" for _ in range(n)}
        counts = Counter(assign(DEFAULT_PARTITIONS, members).values())
        shares += [counts.get(m, 0) for m in members]
    even = DEFAULT_PARTITIONS / n
    variance = DEFAULT_PARTITIONS * (1 / n) * (1 - 1 / n)
    low, high = even - 4 * math.sqrt(variance), even + 4 * math.sqrt(variance)
    assert low <= min(shares) and max(shares) <= high, (min(shares), max(shares), low, high)
    mean = sum(shares) / len(shares)
    assert mean == pytest.approx(even)  # every partition has exactly one target
    var = sum((s - mean) ** 2 for s in shares) / len(shares)
    assert 0.6 * variance < var < 1.5 * variance
