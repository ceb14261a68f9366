"""The daemon under a service manager: human log lines on stderr (the journal), with
sd-daemon priorities when stderr is the journal's stream, and the shipped unit's ExecStart
and ExecReload run as written, against a real daemon."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import CLI, copy_configs, file_records, run_cli, wait_for

from modcoord.supervisor.daemon.logs import JOURNAL_PRIORITIES

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "scripts" / "modcoord.service"

#: A journal line: ``<N>LEVEL    actor message key=value ...`` (no time: journald stamps it).
JOURNAL_LINE = re.compile(r"^<(?P<prio>[0-7])>(?P<level>[A-Z]+) +(?P<who>\S+) (?P<rest>.*)$")
#: A foreground line on a plain stderr: ``HH:MM:SS.mmm LEVEL    actor message key=value ...``.
PLAIN_LINE = re.compile(r"^\d{2}:\d{2}:\d{2}\.\d{3} (?P<level>[A-Z]+) +(?P<who>\S+) (?P<rest>.*)$")


def unit_service() -> dict[str, list[str]]:
    """The ``[Service]`` section of the shipped unit, key -> values."""
    service: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        if section == "Service":
            key, value = line.split("=", 1)
            service.setdefault(key, []).append(value)
    return service


def command_of(line: str) -> list[str]:
    """A unit's command line as argv, with ``modcoord`` run from this test environment."""
    argv = shlex.split(line)
    assert Path(argv[0]).name == "modcoord", line
    return [*CLI, *argv[1:]]


def unit_env(runtime_root: Path) -> dict[str, str]:
    """The unit's ``Environment=`` with ``%t`` (the runtime root) and ``%S`` (the state
    root, beside it) filled in."""
    env: dict[str, str] = {}
    for value in unit_service().get("Environment", []):
        for item in shlex.split(value):
            key, val = item.split("=", 1)
            env[key] = val.replace("%t", str(runtime_root)).replace(
                "%S", str(runtime_root.parent / "state"))
    return env


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify.sock"))
    listener.settimeout(10.0)
    yield listener
    listener.close()


def _until(listener: socket.socket, state: str, got: list[str]) -> None:
    while not any(state in m.splitlines() for m in got):
        got.append(listener.recv(4096).decode())  # socket.timeout: bounded


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
        raise


def test_the_units_exec_start_logs_to_the_journal_and_exec_reload_reports_rejection(
        tmp_path: Path, notify_socket: socket.socket) -> None:
    service = unit_service()
    # The unit and the code agree: a notify service (READY=1 from the main process) that
    # reloads through `modcoord reload`, which waits for the outcome.
    assert service["Type"] == ["notify"] and service["NotifyAccess"] == ["main"]
    [reload_line] = service["ExecReload"]
    assert shlex.split(reload_line)[1:] == ["reload"]
    [start_line] = service["ExecStart"]

    configs = copy_configs(tmp_path / "configs")
    env = {**os.environ, **unit_env(tmp_path / "xdg"),
           "NOTIFY_SOCKET": str(tmp_path / "notify.sock")}
    env.pop("NO_COLOR", None)
    runtime = Path(env["MODCOORD_RUNTIME_DIR"])
    stderr_path = tmp_path / "journal"
    with open(stderr_path, "wb") as journal:
        st = os.fstat(journal.fileno())
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"  # stderr *is* the journal
        daemon = subprocess.Popen([*command_of(start_line), "--config-dir", str(configs)],
                                  stdout=subprocess.DEVNULL, stderr=journal, env=env,
                                  start_new_session=True)
    try:
        got: list[str] = []
        _until(notify_socket, "READY=1", got)

        # ExecReload as written, with the unit's environment: a good config -> 0 ...
        ok = subprocess.run(command_of(reload_line), env=env, capture_output=True, text=True,
                            timeout=30)
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.strip() == "config unchanged"
        got.clear()
        # ... a broken one -> non-zero, naming the problem; the daemon keeps running.
        (configs / "hybrid.yaml").write_text("cache:\n  ttl_ms: -5\n")
        bad = subprocess.run(command_of(reload_line), env=env, capture_output=True, text=True,
                             timeout=30)
        assert bad.returncode == 1, (bad.stdout, bad.stderr)
        assert "reload rejected" in bad.stderr and "ttl_ms" in bad.stderr
        # The daemon bracketed the reload for systemd, the time included (as notify-reload
        # would need), and was READY again before the command returned.
        _until(notify_socket, "READY=1", got)
        reloading = next(m for m in got if "RELOADING=1" in m.splitlines())
        assert re.search(r"^MONOTONIC_USEC=\d+$", reloading, re.M), reloading
        assert daemon.poll() is None
        assert run_cli("status", env={"MODCOORD_RUNTIME_DIR": str(runtime)}).code == 0
    finally:
        code = _stop(daemon)
    assert code == 0

    lines = stderr_path.read_text().splitlines()
    parsed = [JOURNAL_LINE.match(line) for line in lines]
    assert lines and all(parsed), [line for line, m in zip(lines, parsed, strict=True) if not m]
    assert "\x1b[" not in stderr_path.read_text()
    by_level = {m.group("level"): int(m.group("prio")) for m in parsed if m}
    assert all(JOURNAL_PRIORITIES[level] == prio for level, prio in by_level.items())
    assert by_level.get("INFO") == 6 and by_level.get("ERROR") == 3, by_level
    # The same events as the JSON file, in words: the rejected reload with its fields.
    rejected = [m for m in parsed if m and m.group("rest").startswith("config reload rejected")]
    assert rejected and rejected[0].group("who") == "reloader"
    assert "key=cache.ttl_ms" in rejected[0].group("rest")
    # The file watcher may see the edit before the request comes (on a loaded machine):
    # the same rejection, logged once, for whichever came first.
    assert re.search(r'reason=(request|"file change")', rejected[0].group("rest")), rejected[0]
    file_messages = [r["message"] for r in file_records(runtime)]
    assert "config reload rejected" in file_messages and "daemon stopped" in file_messages
    assert any(m.group("rest").startswith("daemon stopped") for m in parsed if m)


@pytest.mark.parametrize("journal_stream", ["unset", "elsewhere"])
def test_foreground_writes_plain_human_lines_on_stderr(tmp_path: Path,
                                                       journal_stream: str) -> None:
    # Not the journal (JOURNAL_STREAM unset, or naming another file as when a service's
    # child redirects its stderr): time-stamped lines, no priorities, no colour.
    configs = copy_configs(tmp_path / "configs")
    runtime = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "NOTIFY_SOCKET")}
    if journal_stream == "elsewhere":
        st = os.stat(tmp_path / "configs")
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    stderr_path = tmp_path / "stderr"
    with open(stderr_path, "wb") as err:
        daemon = subprocess.Popen(
            [*CLI, "start", "--foreground", "--runtime-dir", str(runtime),
             "--config-dir", str(configs)],
            stdout=subprocess.DEVNULL, stderr=err, env=env, start_new_session=True)
    try:
        wait_for(lambda: "daemon ready" in stderr_path.read_text(), 15,
                 message="the ready line on stderr")
    finally:
        code = _stop(daemon)
    assert code == 0
    lines = stderr_path.read_text().splitlines()
    parsed = [PLAIN_LINE.match(line) for line in lines]
    assert lines and all(parsed), [line for line, m in zip(lines, parsed, strict=True) if not m]
    assert "\x1b[" not in stderr_path.read_text()
    ready = next(m for m in parsed if m and m.group("rest").startswith("daemon ready"))
    assert ready.group("level") == "INFO" and ready.group("who") == "daemon"
    assert f"socket={runtime / 'modcoord.sock'}" in ready.group("rest")
    assert any(m.group("rest").startswith("daemon stopped") for m in parsed if m)


def test_a_detached_daemon_keeps_a_journal_stderr_and_logs_there(tmp_path: Path) -> None:
    # `modcoord start` from a service (Type=forking, systemd-run): stderr is the journal,
    # which no caller reads to EOF, so the detached daemon keeps it and logs there.
    configs = copy_configs(tmp_path / "configs")
    runtime = tmp_path / "run"
    stderr_path = tmp_path / "journal"
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    with open(stderr_path, "wb") as journal:
        st = os.fstat(journal.fileno())
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        started = subprocess.run([*CLI, "start", "--runtime-dir", str(runtime),
                                  "--config-dir", str(configs)],
                                 stdout=subprocess.PIPE, stderr=journal, env=env, timeout=30)
    assert started.returncode == 0
    try:
        wait_for(lambda: "<6>INFO     daemon daemon ready" in stderr_path.read_text(), 15,
                 message="the detached daemon's ready line on the journal")
    finally:
        assert run_cli("stop", runtime_dir=runtime).code == 0
    wait_for(lambda: "daemon stopped" in stderr_path.read_text(), 15,
             message="the stop on the journal")
