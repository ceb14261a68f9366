"""Tests of the structured log: writing, rotation, reading, following, formatting."""

from __future__ import annotations

import json
import os
import queue
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from modcoord.supervisor.daemon.logs import (
    LEVELS,
    LOG_FILE,
    ReadStats,
    follow_records,
    format_record,
    iter_records,
    log_files,
    setup_logging,
    shutdown_logging,
)

ISO_MS_TZ = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}[+-]\d{2}:\d{2}$")
ROTATED = re.compile(r"^modcoord\.\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}_\d{6}(\.\d+)?\.jsonl$")
WAIT = 5.0


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    shutdown_logging()


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_records_are_flat_json_with_core_fields(tmp_path: Path) -> None:
    mode = ["HYBRID"]
    setup_logging(tmp_path, level="DEBUG", context=lambda: {"mode": mode[0]})
    logger.bind(actor="cache", module="editor", severity="warning", reason="ttl").info(
        "evicted {n} entries", n=3
    )
    mode[0] = "MANUAL"
    logger.debug("unbound")
    logger.bind(actor="monitor", blob=object(), nested={"s": {1}}).warning("odd extras")
    try:
        raise RuntimeError("kaput")
    except RuntimeError:
        logger.bind(actor="batcher").exception("delivery failed")
    shutdown_logging()

    recs = read_lines(tmp_path / LOG_FILE)
    assert [r["message"] for r in recs] == [
        "evicted 3 entries", "unbound", "odd extras", "delivery failed"]
    first, second, third, fourth = recs
    for rec in recs:
        assert ISO_MS_TZ.match(rec["time"]), rec["time"]
        assert rec["pid"] == os.getpid()
        for key in ("time", "level", "message", "actor", "mode", "pid"):
            assert key in rec
    assert first["level"] == "INFO"
    assert first["actor"] == "cache"
    assert first["module"] == "editor"
    assert first["severity"] == "warning" and first["reason"] == "ttl"
    assert first["mode"] == "HYBRID"
    assert second["mode"] == "MANUAL"  # the context is read for every record
    assert second["actor"] == "daemon"
    assert "module" not in second
    assert second["level"] == "DEBUG"
    assert third["blob"].startswith("<object object at")
    assert third["nested"] == {"s": "{1}"}
    assert fourth["level"] == "ERROR"
    assert "RuntimeError: kaput" in fourth["exception"]
    assert "Traceback" in fourth["exception"]


def test_level_threshold_and_braces_and_markup_survive(tmp_path: Path) -> None:
    setup_logging(tmp_path, level="WARNING", context=lambda: {"mode": "FULLY_AUTO"})
    logger.info("not written")
    logger.bind(key="a{b}c", file="</red>").warning("text with {braces} and <b>tags</b>")
    shutdown_logging()
    recs = read_lines(tmp_path / LOG_FILE)
    assert len(recs) == 1
    assert recs[0]["message"] == "text with {braces} and <b>tags</b>"
    assert recs[0]["key"] == "a{b}c"
    assert recs[0]["file"] == "</red>"


def test_a_failing_context_does_not_lose_the_record(tmp_path: Path) -> None:
    def broken() -> dict[str, Any]:
        raise LookupError("no mode yet")

    setup_logging(tmp_path, context=broken)
    logger.info("still here")
    shutdown_logging()
    (rec,) = read_lines(tmp_path / LOG_FILE)
    assert rec["message"] == "still here"
    assert rec["mode"] is None
    assert "no mode yet" in rec["context_error"]


def test_rotation_by_size_keeps_at_most_keep_old_files(tmp_path: Path) -> None:
    setup_logging(tmp_path, max_bytes=1000, keep=2)
    for i in range(80):
        logger.bind(actor="debouncer", seq=i).info("update {}", i)
    shutdown_logging()
    rotated = [p for p in tmp_path.iterdir() if p.name != LOG_FILE]
    assert 1 <= len(rotated) <= 2
    assert len(rotated) == 2  # 80 records of ~200 bytes need many more than 2 rotations
    for p in rotated:
        assert ROTATED.match(p.name), p.name
        assert p.stat().st_size <= 1000
    # What is kept is the newest part of the log, contiguous and in order.
    seqs = [r["seq"] for r in iter_records(tmp_path)]
    assert seqs == list(range(80 - len(seqs), 80))
    assert len(seqs) > 5
    assert log_files(tmp_path)[-1].name == LOG_FILE


def test_log_files_orders_rotated_names_by_time_then_counter(tmp_path: Path) -> None:
    names = [
        "modcoord.2026-01-02_00-00-00_000000.jsonl",
        "modcoord.2026-01-01_10-00-00_000000.2.jsonl",
        "modcoord.2026-01-01_10-00-00_000000.jsonl",
        "modcoord.2025-12-31_23-59-59_999999.jsonl",
        "other.jsonl",
        LOG_FILE,
    ]
    for name in names:
        (tmp_path / name).write_text("")
    assert [p.name for p in log_files(tmp_path)] == [
        "modcoord.2025-12-31_23-59-59_999999.jsonl",
        "modcoord.2026-01-01_10-00-00_000000.jsonl",
        "modcoord.2026-01-01_10-00-00_000000.2.jsonl",
        "modcoord.2026-01-02_00-00-00_000000.jsonl",
        LOG_FILE,
    ]
    assert log_files(tmp_path / "missing") == []


def _write_mixed_log(tmp_path: Path) -> None:
    setup_logging(tmp_path, level="DEBUG", max_bytes=1500, keep=50)
    levels = ["DEBUG", "INFO", "WARNING", "ERROR"]
    for i in range(40):
        actor = ("cache", "batcher")[i % 2]
        bound = logger.bind(actor=actor, seq=i, **({"module": "editor"} if i % 3 == 0 else {}))
        bound.log(levels[i % 4], "event {}", i)
    shutdown_logging()


def test_iter_records_filters_by_level_actor_module(tmp_path: Path) -> None:
    _write_mixed_log(tmp_path)
    assert len(log_files(tmp_path)) > 2  # the reads below span rotated files
    every = list(iter_records(tmp_path))
    assert [r["seq"] for r in every] == list(range(40))

    warn = list(iter_records(tmp_path, level="warning"))
    assert {r["level"] for r in warn} == {"WARNING", "ERROR"}
    assert [r["seq"] for r in warn] == [i for i in range(40) if i % 4 >= 2]

    assert [r["seq"] for r in iter_records(tmp_path, level="ERROR")] == list(range(3, 40, 4))
    assert [r["seq"] for r in iter_records(tmp_path, actor="batcher")] == list(range(1, 40, 2))
    assert [r["seq"] for r in iter_records(tmp_path, module="editor")] == list(range(0, 40, 3))
    both = list(iter_records(tmp_path, actor="cache", module="editor", level="INFO"))
    assert [r["seq"] for r in both] == [i for i in range(0, 40, 6) if i % 4 != 0]

    with pytest.raises(ValueError, match="unknown log level"):
        list(iter_records(tmp_path, level="LOUD"))


def test_iter_records_n_takes_the_last_matching_across_rotation(tmp_path: Path) -> None:
    _write_mixed_log(tmp_path)
    current = read_lines(tmp_path / LOG_FILE)
    n = len(current) + 4  # more than the current file holds
    last = list(iter_records(tmp_path, n=n))
    assert [r["seq"] for r in last] == list(range(40 - n, 40))
    assert [r["seq"] for r in iter_records(tmp_path, n=3, actor="cache")] == [34, 36, 38]
    assert list(iter_records(tmp_path, n=0)) == []
    assert len(list(iter_records(tmp_path, n=1000))) == 40


def test_malformed_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    good = {"time": "2026-01-01T00:00:00.000+00:00", "level": "INFO", "message": "ok",
            "actor": "daemon", "mode": "HYBRID", "pid": 1}
    lines = [
        json.dumps(good),
        "not json at all",
        json.dumps([1, 2, 3]),
        "",
        json.dumps({**good, "message": "ok2"}),
        '{"time": "truncat',
    ]
    (tmp_path / LOG_FILE).write_text("\n".join(lines) + "\n" + '{"partial": ')
    stats = ReadStats()
    recs = list(iter_records(tmp_path, stats=stats))
    assert [r["message"] for r in recs] == ["ok", "ok2"]
    snap = stats.statistics()
    assert snap.malformed == 3
    assert snap.records == 2
    assert snap.lines == 5  # blank line ignored, unterminated last line not read yet


def _follow_in_thread(tmp_path: Path, stop: threading.Event, **kw: Any
                      ) -> tuple[threading.Thread, queue.Queue[dict[str, Any]]]:
    out: queue.Queue[dict[str, Any]] = queue.Queue()

    def run() -> None:
        for rec in follow_records(tmp_path, stop=stop, poll_interval=0.01, **kw):
            out.put(rec)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_follow_yields_new_records_and_continues_across_rotation(tmp_path: Path) -> None:
    setup_logging(tmp_path, max_bytes=1200, keep=20)
    for i in range(3):
        logger.bind(seq=-3 + i).info("before")
    stop = threading.Event()
    thread, out = _follow_in_thread(tmp_path, stop, n=1)
    try:
        # The backlog of one record tells us the follower has reached the end of the file.
        assert out.get(timeout=WAIT)["seq"] == -1
        files_before = len(log_files(tmp_path))
        for i in range(40):
            logger.bind(actor="cache", seq=i).info("after {}", i)
        assert len(log_files(tmp_path)) > files_before  # it rotated at least once
        got = [out.get(timeout=WAIT)["seq"] for _ in range(40)]
        assert got == list(range(40))
        # And keeps following the newest file.
        logger.bind(seq=99).warning("last")
        assert out.get(timeout=WAIT)["seq"] == 99
    finally:
        stop.set()
        thread.join(WAIT)
    assert not thread.is_alive()
    assert out.empty()


def test_follow_filters_and_handles_truncation(tmp_path: Path) -> None:
    path = tmp_path / LOG_FILE

    def line(seq: int, level: str = "INFO", actor: str = "cache") -> str:
        return json.dumps({"time": "2026-01-01T00:00:00.000+00:00", "level": level,
                           "message": f"m{seq}", "actor": actor, "mode": "MANUAL",
                           "pid": 1, "seq": seq}) + "\n"

    path.write_text(line(0, "ERROR"))
    stop = threading.Event()
    thread, out = _follow_in_thread(tmp_path, stop, n=5, level="ERROR", actor="cache")
    try:
        assert out.get(timeout=WAIT)["seq"] == 0
        with path.open("a") as fh:
            fh.write(line(1, "INFO") + line(2, "ERROR", "batcher") + line(3, "CRITICAL"))
        assert out.get(timeout=WAIT)["seq"] == 3
        path.write_text(line(4, "ERROR"))  # truncated and rewritten in place
        assert out.get(timeout=WAIT)["seq"] == 4
        with path.open("a") as fh:  # a line written in two parts is read once whole
            text = line(5, "ERROR")
            fh.write(text[:20])
            fh.flush()
            fh.write(text[20:])
        assert out.get(timeout=WAIT)["seq"] == 5
    finally:
        stop.set()
        thread.join(WAIT)
    assert not thread.is_alive()
    assert out.empty()


class _PollProbe(threading.Event):
    """A stop event that also tells when the follower has waited for a poll interval."""

    def __init__(self) -> None:
        super().__init__()
        self.polled = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.polled.set()
        return super().wait(timeout)


def test_follow_waits_for_a_missing_file_and_stops_promptly(tmp_path: Path) -> None:
    stop = _PollProbe()
    thread, out = _follow_in_thread(tmp_path, stop)
    try:
        assert stop.polled.wait(WAIT)  # it found no file and is polling for it
        assert not (tmp_path / LOG_FILE).exists()
        setup_logging(tmp_path)
        logger.bind(module="editor").info("first ever")
        assert out.get(timeout=WAIT)["message"] == "first ever"
    finally:
        stop.set()
        thread.join(WAIT)
    assert not thread.is_alive()


def test_format_record_plain_and_coloured() -> None:
    rec = {"time": "2026-11-27T04:31:45.123+01:00", "level": "WARNING",
           "message": "cache hit rate low", "actor": "monitor", "mode": "HYBRID", "pid": 7,
           "module": "editor", "insight": "cache_hit_rate", "observed": 0.25,
           "reason": "two words"}
    plain = format_record(rec, color=False)
    assert plain == ('04:31:45.123 WARNING  monitor[editor] cache hit rate low '
                     'insight=cache_hit_rate observed=0.25 reason="two words"')
    coloured = format_record(rec, color=True)
    assert "\x1b[" in coloured
    assert "\x1b[1;33m" in coloured  # warnings in yellow
    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured) == plain

    bare = format_record({"time": "2026-11-27T23:00:00.004+00:00", "level": "ERROR",
                          "message": "boom", "exception": "Traceback\nValueError: x"})
    assert bare.splitlines() == ["23:00:00.004 ERROR    daemon boom", "Traceback",
                                 "ValueError: x"]


# --------------------------------------------------------------------------- stderr, journal


def test_color_wanted_only_on_a_terminal_and_never_with_no_color(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from modcoord.supervisor.daemon.logs import color_wanted

    class Tty:
        def isatty(self) -> bool:
            return True

    class Closed:
        def isatty(self) -> bool:
            raise ValueError("I/O operation on closed file")

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert color_wanted(Tty()) is True
    assert color_wanted(Closed()) is False and color_wanted(object()) is False
    monkeypatch.setenv("NO_COLOR", "")
    assert color_wanted(Tty()) is True  # set but empty does not count
    monkeypatch.setenv("NO_COLOR", "1")
    assert color_wanted(Tty()) is False


def test_stderr_is_journal_compares_device_and_inode(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from modcoord.supervisor.daemon.logs import stderr_is_journal

    with open(tmp_path / "journal", "wb") as journal, open(tmp_path / "other", "wb") as other:
        st = os.fstat(journal.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert stderr_is_journal(journal.fileno()) is True
        assert stderr_is_journal(other.fileno()) is False  # set, but not this file
        for bad in ("", "garbage", f"{st.st_dev}", f"{st.st_dev}:x"):
            monkeypatch.setenv("JOURNAL_STREAM", bad)
            assert stderr_is_journal(journal.fileno()) is False
    monkeypatch.delenv("JOURNAL_STREAM")
    assert stderr_is_journal(0) is False


def test_journal_lines_carry_priorities_on_every_line_and_no_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from modcoord.supervisor.daemon.logs import JOURNAL_PRIORITIES

    journal = open(tmp_path / "journal", "w")  # noqa: SIM115 - closed below
    st = os.fstat(journal.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    monkeypatch.setattr(sys, "stderr", journal)
    os_stderr = os.dup(2)
    os.dup2(journal.fileno(), 2)  # the check looks at descriptor 2
    try:
        setup_logging(tmp_path / "logs", level="DEBUG", also_stderr=True)
        logger.bind(actor="cache").debug("purged expired entries", entries=3)
        logger.bind(actor="reloader").warning("config reload rejected", key="cache.ttl_ms")
        try:
            raise RuntimeError("kaput")
        except RuntimeError:
            logger.bind(actor="batcher").exception("batch delivery failed")
        shutdown_logging()
    finally:
        os.dup2(os_stderr, 2)
        os.close(os_stderr)
        journal.close()
    lines = (tmp_path / "journal").read_text().splitlines()
    assert lines[0] == "<7>DEBUG    cache purged expired entries entries=3"
    assert lines[1] == "<4>WARNING  reloader config reload rejected key=cache.ttl_ms"
    assert lines[2] == "<3>ERROR    batcher batch delivery failed"
    assert len(lines) > 4 and all(line.startswith("<3>") for line in lines[2:])
    assert lines[-1] == "<3>RuntimeError: kaput"
    assert set(JOURNAL_PRIORITIES) == set(LEVELS)


def test_format_record_without_time() -> None:
    rec = {"time": "2026-12-01T23:50:05.852+00:00", "level": "INFO", "message": "optimized",
           "actor": "coordinator", "flushed": 2, "delivered": 2, "cache_cleared": 20}
    assert format_record(rec) == (
        "23:50:05.852 INFO     coordinator optimized flushed=2 delivered=2 cache_cleared=20")
    assert format_record(rec, with_time=False) == (
        "INFO     coordinator optimized flushed=2 delivered=2 cache_cleared=20")
