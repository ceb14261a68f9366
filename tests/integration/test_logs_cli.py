"""``modcoord logs`` as operators use it: in a pipeline whose reader goes away
(``logs -f | head -2``), on a terminal with and without ``NO_COLOR``, on a runtime directory
with no log; and the packaged lnav format file against a real daemon's records."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import CLI, DaemonFactory, DaemonProcess, file_records, run_cli, wait_for
from tools import tool_or_skip

from modcoord.supervisor.daemon.logs import LEVELS, LOG_FILE, lnav_format_path

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ANSI = "\x1b["
#: How long ``logs -f`` may take to notice that its reader went away.
READER_GONE_WITHIN_S = 5.0


class Module:
    """The least a module is: an id, a name, its modes; it subscribes to nothing."""

    supported_modes = ("MANUAL", "HYBRID", "FULLY_AUTO")
    subscribe: tuple[str, ...] = ()

    def __init__(self, module_id: str) -> None:
        self.module_id = module_id
        self.name = f"Module {module_id}"

    def on_mode_change(self, mode: str, strategy: str, context: dict[str, Any]) -> str:
        return mode

    def on_batch(self, batch: Any) -> None:
        pass


def _poke(d: DaemonProcess, name: str = "poke") -> None:
    """Make the daemon write a few records (a register and an unregister)."""
    with d.connect() as c:
        c.register(Module(name)).get(timeout=5)
        c.unregister(name).get(timeout=5)


# --------------------------------------------------------------------------- pipes


def test_logs_follow_into_head_exits_when_head_does_while_nothing_is_logged(
        daemon: DaemonProcess) -> None:
    # `modcoord logs -f | head -2` with an idle daemon: head exits after two lines and
    # nothing more is written, yet the follower must go too (not at its next write).
    _poke(daemon)
    wait_for(lambda: len(file_records(daemon.runtime_dir)) >= 5, 10, message="some records")
    logs = " ".join(shlex.quote(w) for w in [*CLI, "logs", "-f", "--runtime-dir",
                                               str(daemon.runtime_dir)])
    script = f'{logs} | head -2; echo "logs exit ${{PIPESTATUS[0]}}" >&2'
    started = time.monotonic()
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                            timeout=30)
    took = time.monotonic() - started
    assert len(result.stdout.splitlines()) == 2, result.stdout
    assert "logs exit 1" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
    # Start-up of the CLI included; the follower polls its reader every 0.25 s.
    assert took < READER_GONE_WITHIN_S + 5, took


def test_logs_follow_exits_promptly_once_its_pipe_reader_closes(daemon: DaemonProcess) -> None:
    follower = subprocess.Popen(
        [*CLI, "logs", "-f", "-n", "2", "--runtime-dir", str(daemon.runtime_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert follower.stdout is not None
        lines = [follower.stdout.readline(), follower.stdout.readline()]
        assert all(line.endswith("\n") for line in lines), lines
        follower.stdout.close()  # the reader goes away; the daemon logs nothing new
        closed = time.monotonic()
        code = follower.wait(timeout=READER_GONE_WITHIN_S)
        assert time.monotonic() - closed < READER_GONE_WITHIN_S
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait(timeout=5)
    err = follower.stderr.read() if follower.stderr else ""
    assert code == 1, err
    assert "Traceback" not in err and "BrokenPipe" not in err


# --------------------------------------------------------------------------- colour


def _logs_on_a_terminal(d: DaemonProcess, env: dict[str, str]) -> str:
    """``modcoord logs -n 3`` with stdout on a pseudo-terminal; what it printed."""
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [*CLI, "logs", "-n", "3", "--runtime-dir", str(d.runtime_dir)],
            stdout=follower, stderr=subprocess.PIPE, env=env)
        os.close(follower)
        out = b""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # EIO: the terminal's other side closed
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        assert proc.wait(timeout=10) == 0
    finally:
        os.close(leader)
    return out.decode(errors="replace")


def test_logs_colours_a_terminal_unless_no_color_is_set(daemon: DaemonProcess) -> None:
    _poke(daemon)
    base = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    coloured = _logs_on_a_terminal(daemon, base)
    assert ANSI in coloured and "module unregistered" in coloured
    plain = _logs_on_a_terminal(daemon, {**base, "NO_COLOR": "1"})
    assert ANSI not in plain and "module unregistered" in plain
    # NO_COLOR set but empty does not count (no-color.org).
    assert ANSI in _logs_on_a_terminal(daemon, {**base, "NO_COLOR": ""})


# --------------------------------------------------------------------------- no log


def test_logs_on_a_runtime_directory_without_a_log_says_so_and_exits_1(tmp_path: Path) -> None:
    empty = tmp_path / "run"
    empty.mkdir()
    for words in (["logs"], ["logs", "-f"], ["logs", "-n", "3", "--json"]):
        result = run_cli(*words, runtime_dir=empty, timeout=20)
        assert result.code == 1, (words, result.out, result.err)
        if "--json" in words:  # the CLI's JSON error object, as for every command
            error = json.loads(result.out)
            assert error["ok"] is False and error["exit_code"] == 1
            assert f"no log in {empty}" in error["error"]
        else:
            assert result.out == ""
        assert f"no log in {empty}" in result.err and LOG_FILE in result.err
        assert "--log-dir" in result.err
    missing = run_cli("logs", "--log-dir", str(tmp_path / "nowhere"))
    assert missing.code == 1 and f"no log in {tmp_path / 'nowhere'}" in missing.err


# --------------------------------------------------------------------------- lnav


def _lnav() -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(lnav_format_path().read_text())
    [(name, fmt)] = [(k, v) for k, v in spec.items() if k != "$schema"]
    assert re.fullmatch(r"\w+", name) and isinstance(fmt, dict)
    return dict(fmt)


def _a_daemons_records(d: DaemonProcess) -> list[dict[str, Any]]:
    _poke(d, "editor")
    assert d.cli("optimize").code == 0
    (d.config_dir / "hybrid.yaml").write_text("cache:\n  ttl_ms: -1\n")
    assert d.cli("reload").code == 1  # an ERROR record
    d.stop()
    found = file_records(d.runtime_dir)
    assert {"INFO", "ERROR"} <= {r["level"] for r in found}
    return found


def test_the_lnav_format_matches_a_real_daemons_records(daemon_factory: DaemonFactory) -> None:
    fmt = _lnav()
    assert fmt["json"] is True
    d = daemon_factory()
    recs = _a_daemons_records(d)
    # The file names: the current log and the rotated ones.
    pattern = re.compile(fmt["file-pattern"])
    assert pattern.search(str(d.runtime_dir / LOG_FILE))
    assert pattern.search("/var/log/modcoord.2026-12-01_23-59-01_123456.jsonl")
    assert pattern.search("modcoord.2026-12-01_23-59-01_123456.2.jsonl")
    assert not pattern.search("modcoord.yaml")
    # The timestamp, level and body fields are the records' names, in every record.
    for key in ("timestamp-field", "level-field", "body-field"):
        assert all(fmt[key] in r for r in recs), key
    assert (fmt["timestamp-field"], fmt["level-field"], fmt["body-field"]) == (
        "time", "level", "message")
    # Every level the daemon can write maps to exactly one lnav level.
    for level in LEVELS:
        hits = [lv for lv, rx in fmt["level"].items() if re.search(rx, level)]
        assert len(hits) == 1, (level, hits)
    assert all(any(re.search(rx, r["level"]) for rx in fmt["level"].values()) for r in recs)
    # Declared values: present in the records (module where a module is concerned), of
    # the declared kind; the line format names only declared or core fields.
    kinds = {"string": str, "integer": int}
    for key, decl in fmt["value"].items():
        having = [r for r in recs if key in r]
        if key != "exception":
            assert having, f"no record has {key!r}"
        assert all(isinstance(r[key], kinds[decl["kind"]]) for r in having), key
    for part in fmt["line-format"]:
        if isinstance(part, dict) and part["field"] != "__timestamp__":
            assert part["field"] in fmt["value"], part
            assert all(part["field"] in r for r in recs) or "default-value" in part, part
    assert fmt["opid-field"] in fmt["value"]


def test_lnav_installs_the_format_and_parses_a_real_daemons_log(
        daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    lnav = tool_or_skip("lnav")
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "TERM": "dumb"}
    path = run_cli("logs", "--lnav-format-path").out.strip()
    installed = subprocess.run([lnav, "-i", path], capture_output=True, text=True,
                               env=env, timeout=30)
    assert installed.returncode == 0, installed.stderr
    d = daemon_factory()
    recs = _a_daemons_records(d)
    name = next(k for k in json.loads(Path(path).read_text()) if k != "$schema")
    query = (f";SELECT log_level, actor, log_body FROM {name}")
    out = subprocess.run([lnav, "-n", "-c", query, str(d.runtime_dir / LOG_FILE)],
                         capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()[1:] if line.strip()]
    assert len(rows) == len(recs), out.stdout
    levels = {"INFO": "info", "ERROR": "error", "WARNING": "warning", "DEBUG": "debug"}
    assert [r[0] for r in rows] == [levels[rec["level"]] for rec in recs]
    assert [r[1] for r in rows] == [rec["actor"] for rec in recs]
