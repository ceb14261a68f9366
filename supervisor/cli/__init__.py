"""The ``modcoord`` command line: one module per command in this package.

Exit codes are a contract: 0 success, 1 failure, 2 usage, 3 not running, 78 invalid
config at start.

Each command module defines ``HELP``, ``add_arguments(parser)`` and ``run(args)``, and
imports at its top only what building its parser needs; what running it needs (the
client, the daemon, rich...) it imports inside ``run``. A command line naming a command
builds that command's parser alone (``modcoord status --json`` imports one command
module); anything else (``modcoord``, ``--help``, a typo) builds the full parser.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from modcoord.actors.errors import ModcoordError, NotRunningError

__all__ = ["COMMANDS", "main"]

COMMANDS: tuple[str, ...] = (
    "start", "stop", "status", "mode", "reload", "config", "insights", "optimize", "logs",
    "metrics", "top", "debug",
)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser: every command's, or only command ``only``'s."""
    parser = argparse.ArgumentParser(
        prog="modcoord",
        description="The ModuleCoordinator daemon: debounce, cache, batch and monitor the "
                    "updates of an application's modules.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS if only is None else (only,):
        module = importlib.import_module(f"modcoord.supervisor.cli.{name}")
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__)
        p.add_argument("--runtime-dir", default=None, help=_RUNTIME_DIR_HELP)
        module.add_arguments(p)
        _runtime_dir_on_actions(p)
        p.set_defaults(run=module.run)
    return parser


_RUNTIME_DIR_HELP = ("runtime directory (default: $MODCOORD_RUNTIME_DIR, "
                     "$XDG_RUNTIME_DIR/modcoord, /tmp/modcoord-$UID)")


def _runtime_dir_on_actions(parser: argparse.ArgumentParser) -> None:
    """Accept ``--runtime-dir`` after a command's action too (``config show --runtime-dir
    R``), not only before it; given there, it wins (SUPPRESS: absent leaves the value the
    command level parsed)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                child.add_argument("--runtime-dir", default=argparse.SUPPRESS,
                                   help=_RUNTIME_DIR_HELP)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code."""
    words = sys.argv[1:] if argv is None else argv
    parser = build_parser(words[0] if words and words[0] in COMMANDS else None)
    args = parser.parse_args(words)
    try:
        code: int = args.run(args)
        return code
    except NotRunningError as exc:
        print(f"modcoord: {exc}", file=sys.stderr)
        return 3
    except ModcoordError as exc:
        print(f"modcoord: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``modcoord logs -f | head``): no traceback, and no second
        # error when the interpreter flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
