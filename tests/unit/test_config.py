"""Config files: the per-mode defaults, and errors that name the file, the key and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from modcoord.actors.errors import ConfigError
from modcoord.supervisor.daemon.config import (
    MODES,
    default_config_dir,
    load_config_dir,
    load_mode_file,
    normalize_mode,
)


def test_packaged_defaults_match_the_mode_table() -> None:
    config = load_config_dir()
    manual, hybrid, auto = (config.mode(m) for m in MODES)
    # cache: on 5 s / on 5 s / off
    assert (manual.cache.enabled, manual.cache.ttl_ms) == (True, 5000)
    assert (hybrid.cache.enabled, hybrid.cache.ttl_ms) == (True, 5000)
    assert auto.cache.enabled is False
    # debounce: 300 (critical 50) / 300 (critical 50) / 50
    assert (manual.debounce.delay_ms, manual.debounce.critical_delay_ms) == (300, 50)
    assert (hybrid.debounce.delay_ms, hybrid.debounce.critical_delay_ms) == (300, 50)
    assert auto.debounce.delay_ms == 50
    assert hybrid.debounce.max_wait_ms == 1000
    # batching: off / on 100 ms max 50 / on 50 ms
    assert manual.batch.enabled is False
    assert (hybrid.batch.enabled, hybrid.batch.window_ms, hybrid.batch.max_size) == (True, 100, 50)
    assert (auto.batch.enabled, auto.batch.window_ms) == (True, 50)
    assert hybrid.batch.max_queue == 10000
    # memory strategy
    assert [c.memory.strategy for c in (manual, hybrid, auto)] == [
        "conservative", "balanced", "aggressive"]
    assert hybrid.memory.cleanup_interval_ms == 10000
    assert hybrid.memory.inactive_after_ms == 30000
    assert hybrid.memory.max_rss_mb == 100
    assert hybrid.cache.max_entries == 1000 and hybrid.cache.evict_fraction == 0.2
    assert config.daemon.default_mode == "HYBRID"


def _write(path: Path, text: str) -> None:
    path.write_text(text)


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("debounce: {delay_ms: 300, dleay_ms: 5}\n", "debounce.dleay_ms", "unknown key"),
        ("cache: {ttl_ms: fast}\n", "cache.ttl_ms", "number"),
        ("cache: {ttl_ms: -5}\n", "cache.ttl_ms", "greater than 0"),
        ("batch: {max_size: 0}\n", "batch.max_size", "greater than or equal to 1"),
        ("batch: {enabled: 'yes'}\n", "batch.enabled", "boolean"),
        ("memory: {strategy: reckless}\n", "memory.strategy", "conservative"),
        ("debounze: {}\n", "debounze", "unknown key"),
        ("cache: 5\n", "cache", ""),
    ],
)
def test_bad_values_name_file_key_and_problem(config_dir: Path, text: str, key: str,
                                              problem: str) -> None:
    path = config_dir / "hybrid.yaml"
    _write(path, text)
    with pytest.raises(ConfigError) as info:
        load_config_dir(config_dir)
    err = info.value
    assert err.file == str(path)
    assert err.key == key
    assert problem in err.problem
    assert str(path) in str(err) and key in str(err)


def test_cross_field_rules(config_dir: Path) -> None:
    _write(config_dir / "manual.yaml", "debounce: {delay_ms: 100, critical_delay_ms: 200}\n")
    with pytest.raises(ConfigError, match="critical_delay_ms must not exceed delay_ms"):
        load_config_dir(config_dir)


def test_invalid_yaml_names_the_line(config_dir: Path) -> None:
    _write(config_dir / "fully_auto.yaml", "cache:\n  ttl_ms: [1,\n")
    with pytest.raises(ConfigError) as info:
        load_config_dir(config_dir)
    assert info.value.file.endswith("fully_auto.yaml")
    assert "invalid YAML at line" in info.value.problem


def test_missing_mode_file_and_not_a_directory(config_dir: Path, tmp_path: Path) -> None:
    (config_dir / "manual.yaml").unlink()
    with pytest.raises(ConfigError, match=r"manual\.yaml: file not found"):
        load_config_dir(config_dir)
    with pytest.raises(ConfigError, match="not a directory"):
        load_config_dir(tmp_path / "nope")


def test_daemon_file_is_validated(config_dir: Path) -> None:
    _write(config_dir / "daemon.yaml", "metrics: {port: 99999}\n")
    with pytest.raises(ConfigError) as info:
        load_config_dir(config_dir)
    assert info.value.key == "metrics.port"


def test_empty_file_means_defaults_and_digest_tracks_content(config_dir: Path) -> None:
    _write(config_dir / "hybrid.yaml", "")
    first = load_config_dir(config_dir)
    assert first.mode("HYBRID").debounce.delay_ms == 300
    assert load_config_dir(config_dir).digest == first.digest
    _write(config_dir / "hybrid.yaml", "debounce: {delay_ms: 400}\n")
    second = load_config_dir(config_dir)
    assert second.digest != first.digest
    assert second.mode("hybrid").debounce.delay_ms == 400


def test_settings_are_frozen() -> None:
    settings = load_mode_file(default_config_dir() / "hybrid.yaml")
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen error
        settings.cache.ttl_ms = 1  # type: ignore[misc]


def test_normalize_mode() -> None:
    assert normalize_mode("fully-auto") == "FULLY_AUTO"
    assert normalize_mode(" hybrid ") == "HYBRID"
    with pytest.raises(ConfigError, match="unknown mode"):
        normalize_mode("TURBO")
