"""Loading and validating the config directory into typed, frozen objects.

A config directory holds one file per mode (``manual.yaml``, ``hybrid.yaml``,
``fully_auto.yaml``) and ``daemon.yaml``. Everything is validated once, here; a problem
raises :class:`~modcoord.actors.errors.ConfigError` naming the file, the dotted key and
what is wrong, and nothing is applied.
"""

from __future__ import annotations

import hashlib
import os
import reprlib
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator

from modcoord.actors.errors import ConfigError
from modcoord.actors.modes import MODES, mode_or_none
from modcoord.actors.plugins import check_names
from modcoord.actors.settings import ModeSettings
from modcoord.actors.trends import TRENDABLE, TrendThresholds
from modcoord.supervisor.daemon.engine_config import EngineSettings
from modcoord.supervisor.protocol.limits import (
    DEFAULT_OUTPUT_BUDGET_BYTES,
    DEFAULT_OUTPUT_CONNECTION_BYTES,
    DEFAULT_OUTPUT_STALL_S,
)

__all__ = [
    "MAX_CONFIG_FILE_BYTES",
    "MAX_ERROR_VALUE_CHARS",
    "MAX_YAML_DEPTH",
    "MAX_YAML_NODES",
    "MODES",
    "MODE_FILES",
    "ConfigSet",
    "DaemonSettings",
    "check_config_dir",
    "default_config_dir",
    "load_config_dir",
    "load_mode_file",
    "normalize_mode",
    "short_repr",
]

MODE_FILES: dict[str, str] = {m: f"{m.lower()}.yaml" for m in MODES}
DAEMON_FILE = "daemon.yaml"

#: A config file larger than this is refused before it is parsed (real ones are a few KiB).
MAX_CONFIG_FILE_BYTES = 1 << 20
#: A YAML document may hold at most this many nodes *after* alias expansion: a
#: "billion laughs" alias bomb is refused while composing, before anything is built.
MAX_YAML_NODES = 100_000
#: ... and may nest collections at most this deep.
MAX_YAML_DEPTH = 64
#: An offending value is shown in an error message in at most this many characters.
MAX_ERROR_VALUE_CHARS = 80


def normalize_mode(mode: str) -> str:
    """Return the canonical mode name (case-insensitive, ``-`` or ``_``).

    Raises:
        ConfigError: if ``mode`` is not one of MANUAL, HYBRID, FULLY_AUTO.
    """
    canonical = mode_or_none(str(mode))
    if canonical is None:
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


class DashboardSettings(_Strict):
    """``daemon.yaml`` ``dashboard``: the dashboard page (:mod:`modcoord.supervisor.daemon.
    dashboard`); ``host`` may be any address of this machine, but anything other than a
    loopback address exposes the page (token-protected) to the network."""

    enabled: StrictBool = False
    host: str = Field("127.0.0.1", min_length=1, max_length=253)
    port: int = Field(9465, ge=0, le=65535)

    @field_validator("host")
    @classmethod
    def _address(cls, value: str) -> str:
        import ipaddress

        if value == "localhost":
            return value
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError("must be an IP address of this machine or 'localhost' (e.g. "
                             "127.0.0.1, the default; another address exposes the page to "
                             "the network)") from None
        return value


class SupervisionSettings(_Strict):
    """``daemon.yaml`` ``supervisor``: restart intensity and backoff, and which actors run
    in processes of their own (``out_of_process``, watched by a heartbeat); applies at the
    next start."""

    max_restarts: int = Field(5, ge=0)
    within_s: float = Field(30.0, gt=0)
    backoff_initial_ms: float = Field(50.0, ge=0)
    backoff_max_ms: float = Field(2000.0, ge=0)
    out_of_process: tuple[str, ...] = ()
    heartbeat_interval_ms: float = Field(500.0, ge=10, le=60_000)
    heartbeat_timeout_ms: float = Field(5000.0, ge=50, le=600_000)

    @field_validator("out_of_process", mode="before")
    @classmethod
    def _hostable(cls, value: Any) -> Any:
        from modcoord.supervisor.processes import HOSTABLE

        if value is None:
            return ()
        if isinstance(value, list):
            value = tuple(value)
        if isinstance(value, tuple):
            for name in value:
                if name not in HOSTABLE:
                    raise ValueError(
                        f"{name!r} cannot run out of process; choose from "
                        f"{', '.join(HOSTABLE)} (the cache, memory and monitor actors share "
                        "the request path's objects and stay in the daemon)")
        return value

    @field_validator("heartbeat_timeout_ms")
    @classmethod
    def _above_interval(cls, value: float, info: Any) -> float:
        interval = info.data.get("heartbeat_interval_ms")
        if interval is not None and value < 2 * interval:
            raise ValueError(
                f"heartbeat_timeout_ms ({value:g}) must be at least twice "
                f"heartbeat_interval_ms ({interval:g}); raise the timeout")
        return value


class OutputSettings(_Strict):
    """``daemon.yaml`` ``output``: bounds on output queued for module connections (what
    happens at each: :mod:`modcoord.supervisor.protocol.limits`)."""

    max_connection_bytes: int = Field(DEFAULT_OUTPUT_CONNECTION_BYTES, ge=1 << 20)
    max_total_bytes: int = Field(DEFAULT_OUTPUT_BUDGET_BYTES, ge=1 << 20)
    stall_timeout_s: float = Field(DEFAULT_OUTPUT_STALL_S, gt=0, le=3600)


class TrendSettings(_Strict):
    """``daemon.yaml`` ``history.trend``: when a figure's rise or fall is an insight
    (:mod:`modcoord.actors.trends`)."""

    factor: float = Field(4.0, gt=1, le=1000)
    window_s: float = Field(900.0, ge=60, le=86_400)
    metrics: tuple[str, ...] = TrendThresholds().metrics

    @field_validator("metrics", mode="before")
    @classmethod
    def _known(cls, value: Any) -> Any:
        if isinstance(value, list):
            value = tuple(value)
        if isinstance(value, tuple):
            unknown = [m for m in value if m not in TRENDABLE]
            if unknown:
                raise ValueError(f"unknown metric(s) {unknown}; choose from "
                                 f"{', '.join(TRENDABLE)}")
        return value

    def thresholds(self) -> TrendThresholds:
        return TrendThresholds(self.factor, self.window_s, self.metrics)


class HistorySettings(_Strict):
    """``daemon.yaml`` ``history``: the performance history in the state directory
    (:mod:`modcoord.supervisor.daemon.history`); applies at the next start."""

    enabled: StrictBool = True
    busiest_modules: int = Field(5, ge=0, le=50)
    trend: TrendSettings = TrendSettings()


class DaemonSettings(_Strict):
    """``daemon.yaml``: the daemon's own settings."""

    default_mode: Literal["MANUAL", "HYBRID", "FULLY_AUTO"] = "HYBRID"
    socket: str = "modcoord.sock"
    max_frame_bytes: int = Field(1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    callback_timeout_ms: float = Field(2000.0, gt=0)
    shutdown_timeout_s: float = Field(10.0, gt=0)
    # Input limits (see modcoord.supervisor.daemon.input_budget): how long a frame may stay
    # incomplete, and what the incomplete large frames of all connections may hold together.
    frame_timeout_s: float = Field(10.0, gt=0, le=3600)
    max_input_buffer_bytes: int = Field(32 * 1024 * 1024, ge=1024 * 1024, le=1 << 40)
    logs: LogSettings = LogSettings()
    metrics: MetricsSettings = MetricsSettings()
    dashboard: DashboardSettings = DashboardSettings()
    supervisor: SupervisionSettings = SupervisionSettings()
    output: OutputSettings = OutputSettings()
    history: HistorySettings = HistorySettings()
    engine: EngineSettings = EngineSettings()


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


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _read_config_bytes(path: Path) -> bytes:
    """Read a config file: a regular file (symlinks are followed) of at most
    :data:`MAX_CONFIG_FILE_BYTES`.

    It is opened non-blocking, so a FIFO or a device never blocks the caller; ``fstat`` on
    the open file then refuses anything but a regular file.

    Raises:
        ConfigError: missing, unreadable, not a regular file, or too large (naming the file).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(str(path), "", "file not found") from None
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(str(path), "", (
                f"is {_file_kind(st.st_mode)}, not a regular file; only regular files are "
                "read as config (replace it with a regular file)"))
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_CONFIG_FILE_BYTES:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if size > MAX_CONFIG_FILE_BYTES:
        raise ConfigError(str(path), "", (
            f"file is larger than the limit of {MAX_CONFIG_FILE_BYTES} bytes "
            "(MAX_CONFIG_FILE_BYTES); a config file holds a few settings, shorten it"))
    return b"".join(chunks)


_FastSafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when built
_LIBYAML_TOO_DEEP = "exceeded maximum nesting depth"  # libyaml's own nesting limit


class _BoundedLoader(_FastSafeLoader):  # type: ignore[misc]
    """PyYAML's safe loader (libyaml's, when PyYAML was built with it: parsing in C is
    several times faster, which counts at start), refusing documents that expand to more than
    :data:`MAX_YAML_NODES` nodes or nest deeper than :data:`MAX_YAML_DEPTH`.

    Aliases make a node graph whose expanded size can be exponential in the file's size
    (each alias counts the whole subtree it names). The size is counted on the composed
    graph (each node once, memoised), before any Python object is built; a recursive
    alias counts as too large.
    """

    def get_single_node(self) -> Any:
        # get_single_node, not compose_document: libyaml's parser composes in C.
        node = super().get_single_node()
        if node is not None:
            _check_expansion(node)
        return node


def _yaml_error(problem: str, node: yaml.Node) -> yaml.YAMLError:
    return yaml.composer.ComposerError(None, None, problem, node.start_mark)


def _check_expansion(root: yaml.Node) -> None:
    """Raise a YAML error if ``root`` expands past the node or depth limit."""
    sizes: dict[int, int] = {}  # id(node) -> expanded node count
    active: set[int] = set()  # nodes on the current path: seeing one again is recursion
    total_limit = MAX_YAML_NODES

    def children(node: yaml.Node) -> list[yaml.Node]:
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        if isinstance(node, yaml.MappingNode):
            return [item for pair in node.value for item in pair]
        return []

    # Iterative post-order walk: (node, depth, children left to visit).
    stack: list[tuple[yaml.Node, int, list[yaml.Node]]] = [(root, 1, children(root))]
    active.add(id(root))
    while stack:
        node, depth, todo = stack[-1]
        if depth > MAX_YAML_DEPTH:
            raise _yaml_error(
                f"collections nest deeper than {MAX_YAML_DEPTH} levels (MAX_YAML_DEPTH); "
                "flatten the structure", node)
        while todo and id(todo[-1]) in sizes:
            todo.pop()
        if todo:
            child = todo.pop()
            if id(child) in active:
                raise _yaml_error("an alias refers to a collection that contains it "
                                  "(recursive alias); remove it", child)
            active.add(id(child))
            stack.append((child, depth + 1, children(child)))
            continue
        stack.pop()
        active.discard(id(node))
        size = 1 + sum(sizes[id(c)] for c in children(node))
        if size > total_limit:
            raise _yaml_error(
                f"the document expands to more than {total_limit} nodes through its "
                f"aliases (MAX_YAML_NODES; an alias bomb?); write the values out or use "
                "fewer aliases", node)
        sizes[id(node)] = size


def _read_yaml(path: Path) -> tuple[dict[str, Any], bytes]:
    raw = _read_config_bytes(path)
    try:
        data = yaml.load(raw, Loader=_BoundedLoader)  # a (C)SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        if problem == _LIBYAML_TOO_DEEP:  # libyaml stops at 1,000 levels, before our walk
            problem = (f"collections nest deeper than {MAX_YAML_DEPTH} levels "
                       "(MAX_YAML_DEPTH); flatten the structure")
        raise ConfigError(str(path), "", f"invalid YAML{where}: {problem}") from None
    except RecursionError:
        raise ConfigError(str(path), "", (
            f"invalid YAML: collections nest too deeply (the limit is {MAX_YAML_DEPTH} "
            "levels, MAX_YAML_DEPTH); flatten the structure")) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            str(path), "", f"expected a mapping of sections, got {type(data).__name__}")
    return data, raw


_short = reprlib.Repr()
_short.maxlevel = 3
_short.maxstring = _short.maxother = _short.maxlong = MAX_ERROR_VALUE_CHARS
for _attr in ("maxdict", "maxlist", "maxtuple", "maxset", "maxfrozenset", "maxdeque",
              "maxarray"):
    setattr(_short, _attr, 6)


def short_repr(value: Any) -> str:
    """``repr(value)`` in at most :data:`MAX_ERROR_VALUE_CHARS` characters (``…`` marks a cut).

    Built with :mod:`reprlib`, so the cost is bounded whatever the size of ``value``.
    """
    text = _short.repr(value)
    if len(text) > MAX_ERROR_VALUE_CHARS:
        text = text[:MAX_ERROR_VALUE_CHARS] + "…"
    return text


def _problems(exc: ValidationError, path: Path) -> list[ConfigError]:
    """Every problem pydantic found, as ConfigErrors naming file, key and problem."""
    out = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        kind = err["type"]
        if kind == "extra_forbidden":
            problem = "unknown key"
        else:
            problem = err["msg"]
            if "input" in err and kind not in ("missing",) and not isinstance(err["input"], dict):
                problem += f" (got {short_repr(err['input'])})"
        out.append(ConfigError(str(path), key, problem))
    return out


def _validate(model: type[BaseModel], data: dict[str, Any], path: Path) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _problems(exc, path)[0] from None


def load_mode_file(path: Path) -> ModeSettings:
    """Load and validate one mode file.

    Raises:
        ConfigError: naming the file, the key and the problem.
    """
    data, _ = _read_yaml(path)
    result: ModeSettings = _validate(ModeSettings, data, path)
    problems = _mode_problems(None, result, path)
    if problems:
        raise problems[0]
    return result


def _mode_problems(mode: str | None, settings: ModeSettings, path: Path
                   ) -> list[ConfigError]:
    """What a valid-looking mode file may still get wrong: adaptation in MANUAL (``mode``;
    ``None``: not known), plugin names that no installed package provides."""
    problems = []
    if mode == "MANUAL" and settings.adaptive.enabled:
        problems.append(ConfigError(str(path), "adaptive.enabled", (
            "MANUAL runs exactly the configured values and never adapts; set "
            "adaptive.enabled: false here (HYBRID and FULLY_AUTO adapt)")))
    unknown = check_names(settings.plugins)
    if unknown is not None:
        problems.append(ConfigError(str(path), *unknown))
    return problems


def check_config_dir(directory: Path | str | None = None) -> list[ConfigError]:
    """Every problem of a config directory, in every file (file order: the mode files,
    then ``daemon.yaml``; within a file, pydantic's order): ``[]`` when it is valid.

    A file that cannot be read or parsed counts as one problem (its keys are not checked).
    Never raises for a bad config; :func:`load_config_dir` raises the first of these.
    """
    base = Path(directory) if directory is not None else default_config_dir()
    if not base.is_dir():
        return [ConfigError(str(base), "", "not a directory")]
    files: list[tuple[str | None, Path, type[BaseModel]]] = [
        (mode, base / filename, ModeSettings) for mode, filename in MODE_FILES.items()]
    if (base / DAEMON_FILE).exists():
        files.append((None, base / DAEMON_FILE, DaemonSettings))
    problems: list[ConfigError] = []
    for mode, path, model in files:
        try:
            data, _ = _read_yaml(path)
        except ConfigError as exc:
            problems.append(exc)
            continue
        try:
            settings = model.model_validate(data)
        except ValidationError as exc:
            problems.extend(_problems(exc, path))
            continue
        if isinstance(settings, ModeSettings):
            problems.extend(_mode_problems(mode, settings, path))
    return problems


def load_config_dir(directory: Path | str | None = None) -> ConfigSet:
    """Load and validate a whole config directory (all three modes and the daemon file).

    A missing mode file is an error; a missing ``daemon.yaml`` means defaults.

    Raises:
        ConfigError: for the first problem found, naming file, key and problem
            (:func:`check_config_dir` lists them all).
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
        problems = _mode_problems(mode, modes[mode], path)
        if problems:
            raise problems[0]
    daemon_path = base / DAEMON_FILE
    if daemon_path.exists():
        data, raw = _read_yaml(daemon_path)
        digest.update(DAEMON_FILE.encode() + b"\0" + raw)
        daemon = _validate(DaemonSettings, data, daemon_path)
    else:
        daemon = DaemonSettings()
    return ConfigSet(directory=base, daemon=daemon, modes=modes, digest=digest.hexdigest())
