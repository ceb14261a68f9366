"""Loading and validating the config directory into typed, frozen objects.

A config directory holds one file per mode (``manual.yaml``, ``hybrid.yaml``,
``fully_auto.yaml``) and ``daemon.yaml``. Everything is validated once, here; a problem
raises :class:`~modcoord.actors.errors.ConfigError` naming the file, the dotted key and
what is wrong, and nothing is applied.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from modcoord.actors.errors import ConfigError
from modcoord.actors.settings import ModeSettings
from modcoord.supervisor.limits import (
    DEFAULT_OUTPUT_BUDGET_BYTES,
    DEFAULT_OUTPUT_CONNECTION_BYTES,
    DEFAULT_OUTPUT_STALL_S,
)

__all__ = [
    "MODES",
    "MODE_FILES",
    "ConfigSet",
    "DaemonSettings",
    "default_config_dir",
    "load_config_dir",
    "load_mode_file",
    "normalize_mode",
]

MODES: tuple[str, ...] = ("MANUAL", "HYBRID", "FULLY_AUTO")
MODE_FILES: dict[str, str] = {m: f"{m.lower()}.yaml" for m in MODES}
DAEMON_FILE = "daemon.yaml"


def normalize_mode(mode: str) -> str:
    """Return the canonical mode name (case-insensitive, ``-`` or ``_``).

    Raises:
        ConfigError: if ``mode`` is not one of MANUAL, HYBRID, FULLY_AUTO.
    """
    canonical = str(mode).strip().upper().replace("-", "_")
    if canonical not in MODES:
        raise ConfigError("mode", "", f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    return canonical


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class LogSettings(_Strict):
    level: Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    max_bytes: int = Field(10 * 1024 * 1024, ge=4096)
    keep: int = Field(5, ge=1, le=1000)


class MetricsSettings(_Strict):
    enabled: StrictBool = False
    host: Literal["127.0.0.1", "localhost", "::1"] = "127.0.0.1"
    port: int = Field(9464, ge=0, le=65535)


class SupervisionSettings(_Strict):
    max_restarts: int = Field(5, ge=0)
    within_s: float = Field(30.0, gt=0)
    backoff_initial_ms: float = Field(50.0, ge=0)
    backoff_max_ms: float = Field(2000.0, ge=0)


class OutputSettings(_Strict):
    """``daemon.yaml`` ``output``: bounds on output queued for module connections (what
    happens at each: :mod:`modcoord.supervisor.limits`)."""

    max_connection_bytes: int = Field(DEFAULT_OUTPUT_CONNECTION_BYTES, ge=1 << 20)
    max_total_bytes: int = Field(DEFAULT_OUTPUT_BUDGET_BYTES, ge=1 << 20)
    stall_timeout_s: float = Field(DEFAULT_OUTPUT_STALL_S, gt=0, le=3600)


class DaemonSettings(_Strict):
    """``daemon.yaml``: the daemon's own settings."""

    default_mode: Literal["MANUAL", "HYBRID", "FULLY_AUTO"] = "HYBRID"
    socket: str = "modcoord.sock"
    max_frame_bytes: int = Field(1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    callback_timeout_ms: float = Field(2000.0, gt=0)
    shutdown_timeout_s: float = Field(10.0, gt=0)
    # Input limits (see modcoord.supervisor.server): how long a frame may stay incomplete,
    # and what the incomplete large frames of all connections may hold together.
    frame_timeout_s: float = Field(10.0, gt=0, le=3600)
    max_input_buffer_bytes: int = Field(32 * 1024 * 1024, ge=1024 * 1024, le=1 << 40)
    logs: LogSettings = LogSettings()
    metrics: MetricsSettings = MetricsSettings()
    supervisor: SupervisionSettings = SupervisionSettings()
    output: OutputSettings = OutputSettings()


@dataclass(frozen=True)
class ConfigSet:
    """A validated config directory: the daemon settings and one ModeSettings per mode."""

    directory: Path
    daemon: DaemonSettings
    modes: dict[str, ModeSettings]
    digest: str

    def mode(self, mode: str) -> ModeSettings:
        return self.modes[normalize_mode(mode)]

    def as_dict(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "daemon": self.daemon.model_dump(mode="json"),
            "modes": {m: s.model_dump(mode="json") for m, s in self.modes.items()},
        }


def default_config_dir() -> Path:
    """The packaged ``configs/`` directory."""
    import modcoord.configs

    return Path(modcoord.configs.__file__).resolve().parent


def _read_yaml(path: Path) -> tuple[dict[str, Any], bytes]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(str(path), "", "file not found") from None
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(str(path), "", f"invalid YAML{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            str(path), "", f"expected a mapping of sections, got {type(data).__name__}")
    return data, raw


def _validate(model: type[BaseModel], data: dict[str, Any], path: Path) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        kind = err["type"]
        if kind == "extra_forbidden":
            problem = "unknown key"
        else:
            problem = err["msg"]
            if "input" in err and kind not in ("missing",) and not isinstance(err["input"], dict):
                problem += f" (got {err['input']!r})"
        raise ConfigError(str(path), key, problem) from None


def load_mode_file(path: Path) -> ModeSettings:
    """Load and validate one mode file.

    Raises:
        ConfigError: naming the file, the key and the problem.
    """
    data, _ = _read_yaml(path)
    result: ModeSettings = _validate(ModeSettings, data, path)
    return result


def load_config_dir(directory: Path | str | None = None) -> ConfigSet:
    """Load and validate a whole config directory (all three modes and the daemon file).

    A missing mode file is an error; a missing ``daemon.yaml`` means defaults.

    Raises:
        ConfigError: for the first problem found, naming file, key and problem.
    """
    base = Path(directory) if directory is not None else default_config_dir()
    if not base.is_dir():
        raise ConfigError(str(base), "", "not a directory")
    digest = hashlib.sha256()
    modes: dict[str, ModeSettings] = {}
    for mode, filename in MODE_FILES.items():
        path = base / filename
        data, raw = _read_yaml(path)
        digest.update(filename.encode() + b"\0" + raw + b"\0")
        modes[mode] = _validate(ModeSettings, data, path)
    daemon_path = base / DAEMON_FILE
    if daemon_path.exists():
        data, raw = _read_yaml(daemon_path)
        digest.update(DAEMON_FILE.encode() + b"\0" + raw)
        daemon = _validate(DaemonSettings, data, daemon_path)
    else:
        daemon = DaemonSettings()
    return ConfigSet(directory=base, daemon=daemon, modes=modes, digest=digest.hexdigest())
