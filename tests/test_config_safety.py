"""Poisoned config files (issue 8, items 10-11).

- A YAML alias bomb ("billion laughs"), an oversized file, a huge or deeply nested value:
  refused in well under a second with an error naming the file and the limit, whether by
  ``config validate``, ``start`` or a ``reload`` of a running daemon (which keeps
  answering).
- A config file that is a FIFO: refused at once (only regular files are read), and a
  reload that hangs never holds the control threads, so ``status`` and ``stop`` answer.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import yaml
from daemon_harness import CLI, DaemonProcess, run_cli, wait_for

from modcoord.actors.errors import ConfigError
from modcoord.supervisor.daemon.config import (
    MAX_CONFIG_FILE_BYTES,
    MAX_ERROR_VALUE_CHARS,
    MAX_YAML_NODES,
    ConfigSet,
    default_config_dir,
    load_config_dir,
    load_mode_file,
)
from modcoord.supervisor.daemon.reload import Reloader, ReloadResult

#: "Well under a second" of work; the bound leaves room for interpreter start-up on a
#: loaded machine (``config validate`` is a fresh process: ~0.5 s of imports).
QUICK_S = 5.0

#: 8 levels of 9 aliases: 9**8 (43 million) strings once expanded (~1 GiB as a repr).
BOMB = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
debounce:
  delay_ms: [*g,*g,*g,*g,*g,*g,*g,*g,*g]
"""


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
    (config_dir / "manual.yaml").write_text(BOMB)
    proc, took = _timed_cli("config", "validate", str(config_dir))
    print(f"config validate on an alias bomb: {took:.2f} s, exit {proc.returncode}")
    assert proc.returncode == 1, proc
    assert str(config_dir / "manual.yaml") in proc.stderr, proc.stderr
    assert f"more than {MAX_YAML_NODES} nodes" in proc.stderr, proc.stderr
    assert "MAX_YAML_NODES" in proc.stderr
    assert len(proc.stderr) < 1000  # the value is never printed
    assert took < QUICK_S, f"took {took:.1f} s"


def test_the_bomb_is_refused_while_composing(config_dir: Path) -> None:
    path = config_dir / "manual.yaml"
    path.write_text(BOMB)
    began = time.process_time()
    with pytest.raises(ConfigError) as info:
        load_mode_file(path)
    cpu = time.process_time() - began
    assert info.value.file == str(path) and "MAX_YAML_NODES" in info.value.problem
    assert cpu < 1.0, f"{cpu:.2f} s of CPU"


@pytest.mark.parametrize("text, problem", [
    ("a: &a [*a]\n", "recursive alias"),
    ("debounce:\n  delay_ms: " + "[" * 200 + "]" * 200 + "\n", "MAX_YAML_DEPTH"),
    ("debounce:\n  delay_ms: " + "[" * 5000 + "]" * 5000 + "\n", "MAX_YAML_DEPTH"),
])
def test_recursive_and_deep_yaml_is_refused_naming_the_limit(
        config_dir: Path, text: str, problem: str) -> None:
    path = config_dir / "hybrid.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config_dir(config_dir)
    assert info.value.file == str(path)
    assert problem in info.value.problem, info.value.problem


def test_ordinary_aliases_and_merge_keys_still_load(config_dir: Path) -> None:
    path = config_dir / "hybrid.yaml"
    path.write_text(
        "debounce: &d {delay_ms: 200.0, critical_delay_ms: 20.0, max_wait_ms: 900.0}\n"
        "batch: {<<: {window_ms: 50.0, max_size: 10}, max_queue: 100}\n")
    settings = load_mode_file(path)
    assert settings.debounce.delay_ms == 200.0
    assert (settings.batch.window_ms, settings.batch.max_size, settings.batch.max_queue) == (
        50.0, 10, 100)


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
    (d.config_dir / "fully_auto.yaml").write_text(BOMB)
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
    (d.config_dir / "manual.yaml").write_text(BOMB)

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


def test_a_device_or_a_symlink_to_one_is_refused(config_dir: Path) -> None:
    path = config_dir / "daemon.yaml"
    path.unlink()
    path.symlink_to(os.devnull)  # a device: never read, even a harmless one
    with pytest.raises(ConfigError) as info:
        load_config_dir(config_dir)
    assert info.value.file == str(path) and "character device" in info.value.problem
    path.unlink()
    path.symlink_to(default_config_dir() / "daemon.yaml")  # a symlink to a file is fine
    assert load_config_dir(config_dir).daemon.default_mode == "HYBRID"


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


class _BlockingLoad:
    """A config load that hangs until released (a config on a hung file system)."""

    def __init__(self, config_dir: Path) -> None:
        self.config_dir = config_dir
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def __call__(self) -> ConfigSet:
        self.calls += 1
        self.entered.set()
        assert self.release.wait(30)
        return load_config_dir(self.config_dir)


def test_a_hung_reload_holds_at_most_one_caller_for_a_bounded_time(config_dir: Path) -> None:
    load = _BlockingLoad(config_dir)
    reloader = Reloader(load, lambda c: None, notify=lambda s: None, wait_s=2.0)
    reloader.submit("file change")  # the watcher's reload: hangs
    assert load.entered.wait(5)
    assert reloader.statistics().running

    results: list[tuple[float, ReloadResult]] = []

    def request() -> None:
        began = time.monotonic()
        result = reloader.request("request")
        results.append((time.monotonic() - began, result))

    callers = [threading.Thread(target=request) for _ in range(2)]
    for t in callers:
        t.start()
    for t in callers:
        t.join(10)
    assert not any(t.is_alive() for t in callers)
    assert len(results) == 2 and all(r.pending for _, r in results), results
    # One caller waited (bounded by wait_s); the other was answered at once.
    waits = sorted(took for took, _ in results)
    assert waits[0] < 1.0 and waits[1] < 5.0, waits
    assert reloader.statistics().unanswered == 2

    load.release.set()
    # The hung reload, then one more for both requests (coalesced), and nothing else.
    wait_for(lambda: not reloader.statistics().running and load.calls == 2, 10,
             message="queued reload done")
    stats = reloader.statistics()
    assert stats.reloads_ok + stats.skipped == 2, stats
    assert load.calls == 2
    reloader.close()


def test_reload_requests_are_answered_when_nothing_hangs(config_dir: Path) -> None:
    applied: list[ConfigSet] = []
    reloader = Reloader(lambda: load_config_dir(config_dir), applied.append,
                        notify=lambda s: None)
    first = reloader.request("request")
    assert (first.ok, first.changed, first.pending) == (True, True, False)
    (config_dir / "hybrid.yaml").write_text(yaml.safe_dump({"cache": {"ttl_ms": "soon"}}))
    rejected = reloader.request("request")
    assert not rejected.ok and not rejected.pending
    assert rejected.error is not None and "cache.ttl_ms" in rejected.error
    reloader.close()
    assert reloader.submit("late").cancelled()
