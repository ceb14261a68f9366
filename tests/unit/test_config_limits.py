"""Poisoned config files, loaded in-process: a YAML alias bomb is refused while composing,
recursive and deep YAML is refused naming the limit, ordinary aliases and merge keys still
load, a device is never read, and a reload that hangs holds at most one caller for a
bounded time (the CLI and the daemon: ``integration/test_config_safety.py``).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import yaml
from daemon_harness import ALIAS_BOMB, wait_for

from modcoord.actors.errors import ConfigError
from modcoord.supervisor.daemon.config import (
    ConfigSet,
    default_config_dir,
    load_config_dir,
    load_mode_file,
)
from modcoord.supervisor.daemon.reload import Reloader, ReloadResult


def test_the_bomb_is_refused_while_composing(config_dir: Path) -> None:
    path = config_dir / "manual.yaml"
    path.write_text(ALIAS_BOMB)
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
