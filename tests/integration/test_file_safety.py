"""The files the daemon writes, and the directories it writes them in (issue 8, items 8-9).

Every test runs the real ``modcoord start`` (detached or ``--foreground``) as a process.

- A symlink planted at the pidfile or the log file is refused (exit 78, naming it) and its
  target is never written; one planted at ``daemon.json`` is replaced, not followed.
- A runtime or log directory that belongs to another user or is writable by group/others
  is refused, naming the directory, its owner and mode (exit 78).
- A log directory that is a regular file, or cannot be written, is refused at once with
  its path (exit 78), instead of "did not report ready within 15 s".
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import CliResult, gone, run_cli, wait_for

from modcoord.supervisor.daemon.config import default_config_dir

pytestmark = pytest.mark.integration

#: The daemon's readiness timeout is 15 s; an error must arrive well before it.
PROMPT_S = 10.0
VICTIM_TEXT = "precious contents\n"

MODES = ["foreground", "detached"]


@pytest.fixture
def runtime_dirs() -> Iterator[list[Path]]:
    """Runtime directories used by a test: any daemon left on one is stopped afterwards
    (so that a test failing on a daemon that started anyway leaves nothing behind)."""
    dirs: list[Path] = []
    yield dirs
    for d in dirs:
        pidfile = d / "modcoord.pid"  # read through a planted symlink too: a daemon
        if not pidfile.is_file():        # that wrote its pid there must be stopped
            continue
        with contextlib.suppress(ValueError, OSError):
            pid = int(pidfile.read_text().strip())
            if not gone(pid):
                os.kill(pid, signal.SIGTERM)
                with contextlib.suppress(AssertionError):
                    wait_for(lambda p=pid: gone(p), 20, message="daemon exit")
                if not gone(pid):
                    os.kill(pid, signal.SIGKILL)


def _start(runtime: Path, mode: str, *extra: str) -> tuple[CliResult, float]:
    """Run ``modcoord start`` and return its result and how long it took."""
    args = ["start", "--config-dir", str(default_config_dir()), *extra]
    if mode == "foreground":
        args.append("--foreground")
    began = time.monotonic()
    result = run_cli(*args, runtime_dir=runtime, timeout=40)
    return result, time.monotonic() - began


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    path.chmod(0o700)
    return path


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim.txt"
    victim.write_text(VICTIM_TEXT)
    return victim


# -- item 8: planted symlinks ----------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["modcoord.pid", "modcoord.jsonl"])
def test_a_symlink_planted_at_the_pidfile_or_log_file_is_refused_at_once(
        tmp_path: Path, runtime_dirs: list[Path], name: str, mode: str) -> None:
    runtime = _private_dir(tmp_path / "run")
    runtime_dirs.append(runtime)
    victim = _victim(tmp_path)
    planted = runtime / name
    planted.symlink_to(victim)

    result, took = _start(runtime, mode)

    assert result.code == 78, result
    assert str(planted) in result.err and "symbolic link" in result.err, result.err
    assert took < PROMPT_S, f"the error took {took:.1f} s to arrive"
    assert "did not report ready" not in result.err
    assert victim.read_text() == VICTIM_TEXT  # never written through
    assert planted.is_symlink()  # left for the operator to inspect
    assert run_cli("status", runtime_dir=runtime, timeout=20).code == 3


def test_a_symlink_planted_at_daemon_json_is_replaced_not_followed(
        tmp_path: Path, runtime_dirs: list[Path]) -> None:
    runtime = _private_dir(tmp_path / "run")
    runtime_dirs.append(runtime)
    victim = _victim(tmp_path)
    state = runtime / "daemon.json"
    state.symlink_to(victim)

    result, _ = _start(runtime, "detached")
    assert result.code == 0, result
    pid = int(result.out.split("pid ")[1].split(",")[0])
    assert victim.read_text() == VICTIM_TEXT
    st = os.lstat(state)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    assert f'"pid": {pid}' in state.read_text()
    assert [p.name for p in runtime.iterdir() if p.name.endswith(".tmp")] == []

    stopped = run_cli("stop", runtime_dir=runtime, timeout=30)
    assert stopped.code == 0, stopped
    assert not state.exists() and victim.read_text() == VICTIM_TEXT


def _other_uid() -> int:
    return 65534 if os.geteuid() != 65534 else 65533


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("problem", ["group-writable", "world-writable", "other-owner"])
@pytest.mark.parametrize("role", ["runtime", "log"])
def test_an_unsafe_runtime_or_log_directory_is_refused(
        tmp_path: Path, runtime_dirs: list[Path], role: str, problem: str, mode: str) -> None:
    runtime = tmp_path / "run"
    runtime_dirs.append(runtime)
    unsafe = tmp_path / "unsafe"
    unsafe.mkdir()
    if problem == "group-writable":
        perms, expect = 0o770, "mode 0770"
    elif problem == "world-writable":
        perms, expect = 0o1777, "mode 1777"  # like /tmp
    else:
        if os.geteuid() != 0:
            pytest.skip("giving a directory to another user needs root")
        perms, expect = 0o700, f"owner uid {_other_uid()}"
        os.chown(unsafe, _other_uid(), -1)
    unsafe.chmod(perms)
    extra: tuple[str, ...] = ()
    if role == "runtime":
        runtime = unsafe
        runtime_dirs.append(unsafe)
    else:
        extra = ("--log-dir", str(unsafe))

    result, took = _start(runtime, mode, *extra)

    assert result.code == 78, result
    assert f"{role} directory {unsafe}" in result.err, result.err
    assert expect in result.err and "owner" in result.err and "mode" in result.err, result.err
    assert took < PROMPT_S
    assert sorted(p.name for p in unsafe.iterdir()) == []  # nothing written into it
    assert stat.S_IMODE(unsafe.stat().st_mode) == perms  # not "fixed" behind our back


# -- item 9: an unusable log directory -------------------------------------------------------


def _unwritable_dir(tmp_path: Path) -> Path:
    """A directory this process cannot create files in."""
    if os.geteuid() == 0:
        # Root ignores permission bits; /proc/self (a directory we own) takes no new files.
        return Path("/proc/self")
    d = tmp_path / "readonly"
    d.mkdir()
    d.chmod(0o500)
    return d


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["regular-file", "unwritable", "uncreatable"])
def test_an_unusable_log_directory_fails_at_once_naming_it(
        tmp_path: Path, runtime_dirs: list[Path], kind: str, mode: str) -> None:
    runtime = tmp_path / "run"
    runtime_dirs.append(runtime)
    if kind == "regular-file":
        log_dir = tmp_path / "logs"
        log_dir.write_text("not a directory\n")
        expect = "is a regular file"
    elif kind == "unwritable":
        log_dir = _unwritable_dir(tmp_path)
        expect = "is not writable"
    else:
        log_dir = _unwritable_dir(tmp_path) / "logs"
        expect = "cannot be created"

    result, took = _start(runtime, mode, "--log-dir", str(log_dir))

    assert result.code == 78, result
    assert f"log directory {log_dir} {expect}" in result.err, result.err
    assert "did not report ready" not in result.err
    assert took < PROMPT_S, f"the error took {took:.1f} s to arrive"
    if kind == "regular-file":
        assert log_dir.read_text() == "not a directory\n"
    assert run_cli("status", runtime_dir=runtime, timeout=20).code == 3
