"""Check a config directory without applying it (validate: every problem in every file),
or print the effective config of the running daemon (show: JSON, or with ``--yaml`` the
config files themselves, which load back unchanged; ``--mode M`` one mode's file)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from modcoord.supervisor.cli._common import CliError, UsageError, client, emit, mode_name

HELP = "validate or show configuration"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from modcoord.actors.modes import MODES

    sub = p.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    v = sub.add_parser("validate", help="check a config directory without applying it "
                                        "(lists every problem)")
    v.add_argument("directory", nargs="?", type=Path, default=None,
                   help="config directory (default: the packaged configs/)")
    s = sub.add_parser("show", help="print the running daemon's effective config")
    s.add_argument("--yaml", action="store_true",
                   help="print the config files (one YAML document per file, '--- # FILE')")
    s.add_argument("--mode", type=mode_name, choices=MODES, default=None,
                   help="only this mode's file (MANUAL, HYBRID or FULLY_AUTO)")


def run(args: argparse.Namespace) -> int:
    if args.action == "validate":
        return _validate(args)
    if args.yaml and args.json:
        raise UsageError("--yaml and --json exclude each other; give one")
    with client(args) as c:
        config: dict[str, Any] = c.config().get(timeout=10)
    if args.yaml:
        print(show_yaml(config, args.mode), end="")
    elif args.mode is not None:
        from modcoord.supervisor.daemon.config import MODE_FILES

        emit(args, {"mode": args.mode, "file": MODE_FILES[args.mode],
                    "directory": config["directory"], "settings": config["modes"][args.mode]},
             _json_text(config["modes"][args.mode]))
    else:
        emit(args, config, _json_text(config))
    return 0


def _json_text(value: Any) -> str:
    import json

    return json.dumps(value, indent=2, sort_keys=True, default=str)


def show_yaml(config: dict[str, Any], mode: str | None = None) -> str:
    """The config files of ``config`` (the ``config`` call's answer) as YAML: each file a
    document headed ``--- # <file name>``, in the order manual, hybrid, fully_auto,
    daemon; with ``mode`` only that mode's file. Each document loads back (and validates)
    to the settings it was printed from."""
    import yaml

    from modcoord.supervisor.daemon.config import DAEMON_FILE, MODE_FILES

    files: list[tuple[str, dict[str, Any]]] = [
        (MODE_FILES[m], config["modes"][m]) for m in MODE_FILES if mode in (None, m)]
    if mode is None:
        files.append((DAEMON_FILE, config["daemon"]))
    out = [f"# the effective config of the running daemon, from {config['directory']}\n"]
    for name, settings in files:
        out.append(f"--- # {name}\n")
        out.append(yaml.safe_dump(settings, sort_keys=False, default_flow_style=False))
    return "".join(out)


def _validate(args: argparse.Namespace) -> int:
    from modcoord.supervisor.daemon.config import MODES, check_config_dir, default_config_dir

    directory = args.directory if args.directory is not None else default_config_dir()
    problems = check_config_dir(directory)
    if problems:
        listed = [{"file": p.file, "key": p.key, "problem": p.problem} for p in problems]
        if len(problems) == 1:
            message = f"invalid: {problems[0]}"
        else:
            message = "\n".join([f"invalid: {len(problems)} problems in {directory}:",
                                 *(f"  {p}" for p in problems)])
        raise _Invalid(message, directory=str(directory), errors=listed)
    emit(args, {"directory": str(directory), "modes": list(MODES), "errors": []},
         f"valid: {directory} (modes {', '.join(MODES)})")
    return 0


class _Invalid(CliError):
    """``config validate`` found problems: printed as they are (no ``modcoord:``)."""

    prefix = ""


__all__ = ["add_arguments", "run", "show_yaml"]
