"""Poisoned config files (issue 8, items 10-11).

- A YAML alias bomb ("billion laughs"), an oversized file, a huge or deeply nested value:
  refused in well under a second with an error naming the file and the limit, whether by
  ``config validate``, ``start`` or a ``reload`` of a running daemon (which keeps
  answering).
- A config file that is a FIFO: refused at once (only regular files are read), and a
  reload that hangs never holds the control threads, so ``status`` and ``stop`` answer.

Through ``modcoord config validate``, ``start`` and a running daemon; the in-process loading
and reloading checks are in ``unit/test_config_limits.py``.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from daemon_harness import ALIAS_BOMB, CLI, DaemonProcess, run_cli

from modcoord.supervisor.daemon.config import (
    MAX_CONFIG_FILE_BYTES,
    MAX_ERROR_VALUE_CHARS,
    MAX_YAML_NODES,
)

#: "Well under a second" of work; the bound leaves room for interpreter start-up on a
#: loaded machine (``config validate`` is a fresh process: ~0.5 s of imports).
QUICK_S = 5.0

def _timed_cli(*args: str, timeout: float = 60.0) -> tuple[subprocess.CompletedProcess[str],
                                                              float]:
    began = time.monotonic()
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - began


def _replace_with_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


# -- item 10: alias bombs, sizes, reprs ------------------------------------------------------


@pytest.mark.integration
def test_config_validate_refuses_an_alias_bomb_quickly(config_dir: Path) -> None:
    (config_dir / "manual.yaml").write_text(ALIAS_BOMB)
    proc, took = _timed_cli("config", "validate", str(config_dir))
    print(f"config validate on an alias bomb: {took:.2f} s, exit {proc.returncode}")
    assert proc.returncode == 1, proc
    assert str(config_dir / "manual.yaml") in proc.stderr, proc.stderr
    assert f"more than {MAX_YAML_NODES} nodes" in proc.stderr, proc.stderr
    assert "MAX_YAML_NODES" in proc.stderr
    assert len(proc.stderr) < 1000  # the value is never printed
    assert took < QUICK_S, f"took {took:.1f} s"


@pytest.mark.integration
def test_a_huge_wrong_value_is_shown_in_a_bounded_message(config_dir: Path) -> None:
    path = config_dir / "hybrid.yaml"
    values = ", ".join(str(i) for i in range(20_000))  # ~110 KB: under the size limit
    path.write_text(f"debounce:\n  delay_ms: [{values}]\n")
    proc, _ = _timed_cli("config", "validate", str(config_dir))
    assert proc.returncode == 1, proc
    assert str(path) in proc.stderr and "debounce.delay_ms" in proc.stderr, proc.stderr
    assert "(got [0, 1, 2" in proc.stderr
    assert "19999" not in proc.stderr
    assert len(proc.stderr) < 300 + MAX_ERROR_VALUE_CHARS, proc.stderr


@pytest.mark.integration
def test_an_oversized_config_file_is_refused(config_dir: Path) -> None:
    path = config_dir / "hybrid.yaml"
    with path.open("a") as f:  # valid YAML: only comments are added
        line = "# " + "x" * 1022 + "\n"
        for _ in range(MAX_CONFIG_FILE_BYTES // len(line) + 1):
            f.write(line)
    assert path.stat().st_size > MAX_CONFIG_FILE_BYTES
    proc, took = _timed_cli("config", "validate", str(config_dir))
    assert proc.returncode == 1, proc
    assert str(path) in proc.stderr, proc.stderr
    assert f"{MAX_CONFIG_FILE_BYTES} bytes" in proc.stderr, proc.stderr
    assert "MAX_CONFIG_FILE_BYTES" in proc.stderr
    assert took < QUICK_S


@pytest.mark.integration
@pytest.mark.parametrize("foreground", [True, False], ids=["foreground", "detached"])
def test_start_refuses_an_alias_bomb_with_78(
        foreground: bool, daemon_factory: Callable[..., DaemonProcess]) -> None:
    d = daemon_factory(start=False)
    (d.config_dir / "fully_auto.yaml").write_text(ALIAS_BOMB)
    extra = ["--foreground"] if foreground else []
    began = time.monotonic()
    result = run_cli("start", *extra, "--config-dir", str(d.config_dir),
                     runtime_dir=d.runtime_dir, timeout=40)
    took = time.monotonic() - began
    assert result.code == 78, result
    assert "fully_auto.yaml" in result.err and "MAX_YAML_NODES" in result.err, result.err
    assert took < QUICK_S
    assert d.cli("status").code == 3


@pytest.mark.integration
def test_a_reload_with_an_alias_bomb_is_rejected_and_the_daemon_keeps_answering(
        daemon_factory: Callable[..., DaemonProcess]) -> None:
    d = daemon_factory()
    daemon = psutil.Process(d.pid)
    rss_before = daemon.memory_info().rss
    (d.config_dir / "manual.yaml").write_text(ALIAS_BOMB)

    began = time.monotonic()
    result = d.cli("reload", timeout=40)
    took = time.monotonic() - began
    assert result.code == 1, result
    assert "reload rejected" in result.err and "manual.yaml" in result.err, result.err
    assert "MAX_YAML_NODES" in result.err
    assert took < QUICK_S, f"reload took {took:.1f} s"

    with d.connect() as c:
        status = c.status().get(timeout=5)
    assert "manual.yaml" in status["last_reload_error"]
    assert status["mode"] == "HYBRID"
    grown = (daemon.memory_info().rss - rss_before) / 2**20
    print(f"reload of an alias bomb: {took:.2f} s, daemon RSS grew {grown:.1f} MiB")
    assert grown < 50, f"daemon RSS grew {grown:.0f} MiB"


# -- item 11: FIFOs and a reload that hangs --------------------------------------------------


@pytest.mark.integration
def test_config_validate_refuses_a_fifo_promptly(config_dir: Path) -> None:
    fifo = config_dir / "hybrid.yaml"
    _replace_with_fifo(fifo)
    proc, took = _timed_cli("config", "validate", str(config_dir), timeout=30)
    assert proc.returncode == 1, proc
    assert f"{fifo}: is a FIFO, not a regular file" in proc.stderr, proc.stderr
    assert took < QUICK_S


@pytest.mark.integration
@pytest.mark.parametrize("foreground", [True, False], ids=["foreground", "detached"])
def test_start_with_a_fifo_config_exits_78_promptly(
        foreground: bool, daemon_factory: Callable[..., DaemonProcess]) -> None:
    d = daemon_factory(start=False)
    _replace_with_fifo(d.config_dir / "manual.yaml")
    extra = ["--foreground"] if foreground else []
    began = time.monotonic()
    result = run_cli("start", *extra, "--config-dir", str(d.config_dir),
                     runtime_dir=d.runtime_dir, timeout=40)
    took = time.monotonic() - began
    assert result.code == 78, result
    assert "manual.yaml" in result.err and "FIFO" in result.err, result.err
    assert took < QUICK_S, f"took {took:.1f} s"


@pytest.mark.integration
def test_a_fifo_created_while_running_never_blocks_status_or_stop(
        daemon_factory: Callable[..., DaemonProcess]) -> None:
    d = daemon_factory()
    fifo = d.config_dir / "hybrid.yaml"
    _replace_with_fifo(fifo)  # the watcher reloads on this too
    reloads = [subprocess.Popen([*CLI, "reload", "--runtime-dir", str(d.runtime_dir)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    named = 0
    for proc in reloads:
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 1, err
        # Only one reload request waits at a time (so the control threads stay free); a
        # concurrent second one may be answered at once as still running.
        assert ("hybrid.yaml" in err and "FIFO" in err) or "still running" in err, err
        named += "FIFO" in err
    assert named >= 1

    began = time.monotonic()
    status = d.cli("status", "--json", timeout=20)
    assert status.code == 0, status
    assert "FIFO" in status.out
    stopped = d.cli("stop", timeout=20)
    assert stopped.code == 0, stopped
    assert d.wait_exit(timeout=20) == 0
    assert time.monotonic() - began < 15
