"""The CLI's contract through the real CLI and a real daemon: ``--json`` on every reading
or changing command (errors too, with the same exit code), the same exit code for the
same mistake (an unknown mode is a usage error everywhere), no wire wording, a stale
pidfile after ``kill -9``, the uptime for humans, ``top`` on a real terminal, and the shell
completion scripts."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import CLI, DaemonFactory, DaemonProcess, run_cli
from tools import tool_or_skip

from modcoord.actors.modes import MODES
from modcoord.supervisor.cli import COMMANDS, json_commands
from modcoord.supervisor.exitcodes import ExitCode

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

MODE_LIST = ", ".join(MODES)


def json_of(result: Any) -> dict[str, Any]:
    answer: dict[str, Any] = json.loads(result.out)
    return answer


# ------------------------------------------------------------------------------- --json

#: One command line for every command that takes the shared --json (``logs`` has its own
#: --json, JSON lines: tested by its owner). ``stop`` goes last.
JSON_WORDS: list[list[str]] = [
    ["status"], ["mode"], ["mode", "manual"], ["reload"], ["config", "show"],
    ["config", "validate"], ["insights"], ["history", "--since", "1m"], ["optimize"],
    ["dashboard"],
    ["debug", "crash", "cache"], ["stop"],
]


def test_every_reading_or_changing_command_answers_one_json_object(
        daemon: DaemonProcess) -> None:
    assert {w[0] for w in JSON_WORDS} | {"start", "logs"} == set(json_commands())
    answers: dict[str, dict[str, Any]] = {}
    for words in JSON_WORDS:
        result = daemon.cli(*words, "--json")
        assert result.code == 0, (words, result.err)
        answer = json_of(result)
        assert answer["ok"] is True, (words, answer)
        answers[" ".join(words)] = answer
    assert answers["status"]["pid"] == daemon.pid and answers["status"]["running"] is True
    assert answers["mode"]["mode"] == "HYBRID"
    assert (answers["mode manual"]["previous"], answers["mode manual"]["mode"]) == (
        "HYBRID", "MANUAL")
    assert answers["reload"]["changed"] is False
    assert answers["config show"]["directory"] == str(daemon.config_dir)
    assert answers["config validate"]["errors"] == []
    assert isinstance(answers["insights"]["insights"], list)
    assert answers["history --since 1m"]["resolution_s"] == 1
    assert "cache_cleared" in answers["optimize"]
    assert answers["dashboard"]["url"].startswith("http://127.0.0.1:")
    assert answers["debug crash cache"]["actor"] == "cache"
    assert answers["stop"] == {"ok": True, "stopped": True, "pid": daemon.pid}
    assert daemon.wait_exit() == 0


def test_a_detached_start_answers_json(tmp_path: Path) -> None:
    runtime = tmp_path / "run"
    started = run_cli("start", "--json", "--log-dir", str(tmp_path), runtime_dir=runtime)
    try:
        assert started.code == 0, started.err
        answer = json_of(started)
        assert answer["ok"] is True
        assert answer["socket"] == str(runtime / "modcoord.sock")
        status = json_of(run_cli("status", "--json", runtime_dir=runtime))
        assert status["pid"] == answer["pid"]
        again = run_cli("--json", "start", runtime_dir=runtime)
        assert again.code == ExitCode.FAILURE
        assert json_of(again) == {"ok": False, "exit_code": 1,
                                  "error": again.err.removeprefix("modcoord: ").strip()}
        assert f"already running (pid {answer['pid']})" in again.err
    finally:
        assert run_cli("stop", runtime_dir=runtime).code == 0


#: Failures with no daemon: (command line, exit code, words the message must hold).
FAILURES: list[tuple[list[str], int, str]] = [
    (["status"], ExitCode.NOT_RUNNING, "start one with `modcoord start`"),
    (["mode"], ExitCode.NOT_RUNNING, "no modcoord daemon"),
    (["mode", "turbo"], ExitCode.USAGE, f"unknown mode 'turbo'; choose one of {MODE_LIST}"),
    (["start", "--mode", "turbo"], ExitCode.USAGE,
     f"unknown mode 'turbo'; choose one of {MODE_LIST}"),
    (["start", "--foreground"], ExitCode.USAGE, "--json goes with a detached start"),
    (["config", "show", "--mode", "turbo"], ExitCode.USAGE, "unknown mode 'turbo'"),
    (["config", "show", "--yaml"], ExitCode.USAGE, "--yaml and --json exclude each other"),
    (["config", "validate", "/nonexistent-config-dir"], ExitCode.FAILURE, "not a directory"),
    (["stop"], ExitCode.NOT_RUNNING, "nothing to stop"),
    (["stop", "--timeout", "0"], ExitCode.USAGE, "--timeout must be more than 0"),
    (["reload"], ExitCode.NOT_RUNNING, "no modcoord daemon"),
    (["insights"], ExitCode.NOT_RUNNING, "no modcoord daemon"),
    (["optimize"], ExitCode.NOT_RUNNING, "no modcoord daemon"),
    (["dashboard"], ExitCode.NOT_RUNNING, "no modcoord daemon"),
    (["debug", "crash", "turbo"], ExitCode.USAGE, "invalid choice: 'turbo'"),
    (["status", "--bogus"], ExitCode.USAGE, "unrecognized arguments: --bogus"),
]


#: The command lines of FAILURES that fail only with --json (without it they would run).
ONLY_WITH_JSON = (["start", "--foreground"], ["config", "show", "--yaml"])


def test_errors_are_json_too_with_the_same_exit_code(tmp_path: Path) -> None:
    for words, code, words_in_message in FAILURES:
        as_json = run_cli(*words, "--json", runtime_dir=tmp_path)
        assert as_json.code == code, (words, as_json)
        if words not in ONLY_WITH_JSON:
            plain = run_cli(*words, runtime_dir=tmp_path)
            assert plain.code == code, (words, plain)
            assert plain.out == "", (words, plain.out)
        answer = json_of(as_json)
        assert answer["ok"] is False and answer["exit_code"] == code, (words, answer)
        assert words_in_message in answer["error"], (words, answer)
        assert answer["error"] in as_json.err, (words, as_json.err)


def test_an_unknown_mode_is_the_same_usage_error_for_mode_and_start(
        daemon: DaemonProcess) -> None:
    switched = daemon.cli("mode", "turbo")
    started = run_cli("start", "--mode", "turbo", runtime_dir=daemon.runtime_dir)
    for result in (switched, started):
        assert result.code == ExitCode.USAGE, result
        assert f"unknown mode 'turbo'; choose one of {MODE_LIST}" in result.err
        assert "set_mode" not in result.err and "$." not in result.err  # no wire wording
    assert daemon.cli("mode").out.strip() == "HYBRID"  # nothing changed
    assert daemon.cli("mode", "fully-auto").code == 0  # any spelling of a real mode
    assert daemon.cli("mode").out.strip() == "FULLY_AUTO"


def test_a_refusal_by_the_daemon_reads_without_wire_wording(
        daemon_factory: DaemonFactory) -> None:
    d = daemon_factory()  # no --allow-fault-injection
    result = d.cli("debug", "crash", "cache")
    assert result.code == ExitCode.FAILURE
    assert result.err == ("modcoord: the daemon refused it: fault injection is disabled; "
                          "start the daemon with --allow-fault-injection\n")


# ----------------------------------------------------------------------------- status


def test_status_after_kill_9_reports_the_stale_pidfile(
        daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    d = daemon_factory()
    pidfile = d.runtime_dir / "modcoord.pid"
    d.signal(signal.SIGKILL)
    assert d.wait_exit() == -signal.SIGKILL
    assert pidfile.exists()  # what SIGKILL leaves behind

    plain = d.cli("status")
    assert plain.code == ExitCode.FAILURE, plain
    assert f"pid {d.pid}" in plain.err and str(pidfile) in plain.err
    assert "modcoord start" in plain.err and f"remove {pidfile}" in plain.err
    answer = json_of(d.cli("status", "--json"))
    assert answer["running"] is False and answer["exit_code"] == ExitCode.FAILURE
    assert answer["stale_pidfile"] == {"path": str(pidfile), "pid": d.pid, "pid_alive": False}

    # The suggestion works: a new daemon starts over the stale files.
    started = run_cli("start", "--config-dir", str(d.config_dir), "--log-dir", str(tmp_path),
                      runtime_dir=d.runtime_dir)
    assert started.code == 0, started.err
    assert d.cli("status").code == 0
    assert d.cli("stop").code == 0

    # A daemon that stopped cleanly leaves no pidfile: "not running", 3.
    gone = d.cli("status", "--json")
    assert gone.code == ExitCode.NOT_RUNNING
    assert json_of(gone)["stale_pidfile"] is None and not pidfile.exists()


def test_status_shows_the_uptime_for_humans_and_seconds_in_json(daemon: DaemonProcess) -> None:
    line = daemon.cli("status").out.splitlines()[0]
    assert re.fullmatch(rf"modcoord running: pid {daemon.pid}, up (\d+h )?(\d+m )?\d+s, "
                        r"mode HYBRID", line), line
    assert isinstance(json_of(daemon.cli("status", "--json"))["uptime_s"], float)


# -------------------------------------------------------------------------------- top


def _terminal_env() -> dict[str, str]:
    """The environment of a program on the test's terminal: its size is the terminal's
    (pytest-xdist's workers set COLUMNS=80 and LINES=24, which would override it)."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return {**env, "TERM": "xterm"}


def _top_on_a_terminal(daemon: DaemonProcess, key: bytes) -> tuple[int, float, str, bool]:
    """Run ``top`` on a new pseudo-terminal (its controlling terminal, 100x60), wait until
    it has drawn its insights section, type ``key``; (exit code, seconds from the key to
    the exit, what it drew, whether the terminal's settings were put back)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 60, 100, 0, 0))
    before = termios.tcgetattr(slave)

    def controlling_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [*CLI, "top", "--interval", "0.2", "--runtime-dir", str(daemon.runtime_dir)],
        stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
        preexec_fn=controlling_terminal, env=_terminal_env())
    drawn = b""
    try:
        deadline = time.monotonic() + 20
        while b"press q to quit" not in drawn:
            assert time.monotonic() < deadline, drawn.decode(errors="replace")
            if select.select([master], [], [], 0.2)[0]:
                drawn += os.read(master, 1 << 16)
        assert not termios.tcgetattr(slave)[3] & termios.ICANON  # cbreak while it runs
        typed = time.monotonic()
        os.write(master, key)
        code = proc.wait(timeout=5)
        took = time.monotonic() - typed
        restored = termios.tcgetattr(slave) == before
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        os.close(master)
        os.close(slave)
    return code, took, drawn.decode(errors="replace"), restored


@pytest.mark.parametrize("key", [b"q", b"\x03"], ids=["q", "ctrl-c"])
def test_top_on_a_terminal_shows_the_insights_and_quits_on_q(
        daemon: DaemonProcess, key: bytes) -> None:
    insights = json_of(daemon.cli("insights", "--json"))["insights"]
    code, took, drawn, restored = _top_on_a_terminal(daemon, key)
    assert code == 0, drawn
    assert took < 2.0, took
    assert restored, "the terminal's settings were not put back"
    assert f"modcoord pid {daemon.pid}" in drawn
    assert f"insights ({len(insights)})" in drawn
    for insight in insights:
        assert insight["id"] in drawn, (insight, drawn)


# ------------------------------------------------------------------------- completion


def _bash_complete(line_words: list[str]) -> list[str]:
    """What bash completes for ``modcoord WORDS...`` (the last word being typed), with the
    script that ``modcoord completion bash`` prints sourced."""
    script = run_cli("completion", "bash")
    assert script.code == 0, script.err
    words = " ".join(f"'{w}'" for w in ["modcoord", *line_words])
    program = (f"{script.out}\n"
               f"COMP_WORDS=({words}); COMP_CWORD={len(line_words)}\n"
               f"COMP_LINE=\"${{COMP_WORDS[*]}}\"; COMP_POINT=${{#COMP_LINE}}\n"
               "_shtab_modcoord\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n")
    proc = subprocess.run(["bash", "--norc", "--noprofile"], input=program, text=True,
                          capture_output=True, timeout=20)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_bash_completion_completes_the_commands_and_the_modes() -> None:
    assert _bash_complete([""]) == list(COMMANDS)
    assert _bash_complete(["st"]) == ["start", "stop", "status"]
    assert _bash_complete(["mode", ""]) == list(MODES)
    assert _bash_complete(["--runtime-dir", "/tmp", "mode", "FU"]) == ["FULLY_AUTO"]
    assert _bash_complete(["start", "--mode", ""]) == list(MODES)
    assert _bash_complete(["config", ""]) == ["validate", "show"]
    assert "--json" in _bash_complete(["reload", "--"])
    assert _bash_complete(["completion", ""]) == ["bash", "zsh"]


def test_the_zsh_completion_script_parses_and_defines_its_function(tmp_path: Path) -> None:
    zsh = tool_or_skip("zsh")
    script = run_cli("completion", "zsh")
    assert script.code == 0 and script.out.startswith("#compdef modcoord")
    (tmp_path / "_modcoord").write_text(script.out)
    syntax = subprocess.run([zsh, "-n", str(tmp_path / "_modcoord")],
                            capture_output=True, text=True, timeout=20)
    assert syntax.returncode == 0, syntax.stderr
    loaded = subprocess.run(
        [zsh, "-f", "-c", f"fpath=({tmp_path} $fpath); autoload -Uz compinit; "
         "compinit -u -D; autoload -Uz _modcoord; whence -w _modcoord; "
         "print -r -- $_comps[modcoord]"],
        capture_output=True, text=True, timeout=20)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == ["_modcoord:", "function", "_modcoord"], loaded.stdout


def test_an_unknown_shell_is_a_usage_error() -> None:
    result = run_cli("completion", "fish")
    assert result.code == ExitCode.USAGE and "invalid choice: 'fish'" in result.err
