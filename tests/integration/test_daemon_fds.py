"""A detached daemon keeps none of its caller's file descriptors.

``out=$(modcoord start 4>&1)`` must return when ``start`` does: the shell reads fd 4's pipe
to EOF, which comes only once every holder of its write end has closed it. The real CLI
starts a real detached daemon here with an extra inherited pipe; every wait is bounded.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import CLI, DaemonProcess, gone, wait_for

pytestmark = pytest.mark.integration

#: How long the pipe's reader waits for EOF once ``start`` has returned.
EOF_WAIT_S = 5.0


@pytest.fixture
def detached(tmp_path: Path) -> Iterator[DaemonProcess]:
    """A root for a detached daemon; whatever holds its pidfile is killed afterwards."""
    d = DaemonProcess(tmp_path / "detached")
    yield d
    try:
        pid = int((d.runtime_dir / "modcoord.pid").read_text().strip())
    except (OSError, ValueError):
        return
    if not gone(pid):
        os.kill(pid, signal.SIGKILL)


def _reaches_eof(fd: int, timeout: float) -> bool:
    """Read ``fd`` until EOF (True) or until ``timeout`` passes without it (False)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([fd], [], [], left)
        if readable and not os.read(fd, 4096):
            return True
    return False


def _fds_pointing_at(pid: int, target: str) -> list[str]:
    """The descriptors of ``pid`` whose /proc link reads ``target`` (e.g. ``pipe:[123]``)."""
    found = []
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(entry) == target:
                found.append(entry.name)
        except OSError:
            continue  # closed while we looked
    return found


def test_detached_daemon_closes_the_callers_descriptors(detached: DaemonProcess) -> None:
    d = detached
    r, w = os.pipe()
    pipe = f"pipe:[{os.fstat(r).st_ino}]"
    try:
        # As `out=$(modcoord start 4>&1)`: stdout is a pipe and one more pipe is inherited.
        proc = subprocess.Popen(
            [*CLI, "start", "--config-dir", str(d.config_dir), "--runtime-dir",
             str(d.runtime_dir)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, pass_fds=(w,))
        os.close(w)
        w = -1
        out, err = proc.communicate(timeout=30)  # stdout and stderr read to EOF
        assert proc.returncode == 0, err
        match = re.search(r"pid (\d+), socket", out)
        assert match, out
        pid = int(match.group(1))

        assert _reaches_eof(r, EOF_WAIT_S), (
            f"the inherited pipe got no EOF within {EOF_WAIT_S} s of `start` returning; "
            f"daemon pid {pid} holds it as fd {_fds_pointing_at(pid, pipe)}")
        assert not gone(pid), "the daemon must still run"
        assert _fds_pointing_at(pid, pipe) == []
        # stdin, stdout and stderr are /dev/null.
        for fd in (0, 1, 2):
            assert os.readlink(f"/proc/{pid}/fd/{fd}") == os.devnull
        status = d.cli("status", "--json")
        assert status.code == 0, status.err
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    stopped = d.cli("stop", "--timeout", "20")
    assert stopped.code == 0, stopped.err
    wait_for(lambda: gone(pid), 10, message="the daemon to exit")
