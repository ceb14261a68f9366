"""The ``modcoord`` command line: one module per command in this package.

Exit codes are a contract, defined once in :class:`~modcoord.supervisor.exitcodes.ExitCode`:
0 success, 1 failure (and ``status``: dead daemon, stale pidfile), 2 usage, 3 not running,
78 start refused (invalid config, unsafe path).

Every command that reads or changes something takes ``--json`` (added here, by the parser
builder, to each command but those in :data:`NO_JSON`): its answer is one JSON object on
stdout with ``"ok": true``; a failure — a usage error included — is
``{"ok": false, "error": ..., "exit_code": N}`` on stdout, with the same exit code and the
same ``modcoord: ...`` line on stderr as without ``--json``. Commands raise
:class:`~modcoord.supervisor.cli._common.CliError` for their failures; the client's errors
are put in user words by :func:`~modcoord.supervisor.cli._common.user_error`.

Each command module defines ``HELP``, ``add_arguments(parser)`` and ``run(args)``, and
imports at its top only what building its parser needs; what running it needs (the
client, the daemon, rich...) it imports inside ``run``. A command line naming a command
builds that command's parser alone (``modcoord status --json`` imports one command
module); anything else (``modcoord``, ``--help``, a typo) builds the full parser.

Global options go before the command too: ``modcoord --runtime-dir D status`` is
``modcoord status --runtime-dir D`` (given in both places, the later one wins), and
``modcoord --json status`` is ``modcoord status --json`` for a command that takes
``--json`` (for any other command it is a usage error, exit 2). ``modcoord --version``
prints ``modcoord <version>`` and exits 0.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import ClassVar, NoReturn

from modcoord.actors.errors import ModcoordError
from modcoord.supervisor.cli._common import ExitCode, error_object, print_json, user_error

__all__ = ["COMMANDS", "NO_JSON", "main"]

COMMANDS: tuple[str, ...] = (
    "start", "stop", "status", "mode", "reload", "config", "insights", "optimize", "logs",
    "metrics", "top", "history", "grafana", "dashboard", "debug", "completion",
)

#: The commands that do not take the shared ``--json``, and why (``logs`` has its own:
#: ``logs --json`` prints the records as JSON lines).
NO_JSON: dict[str, str] = {
    "metrics": "prints the Prometheus exposition; 'status --json' has the same figures",
    "top": "an interactive view; 'status --json' and 'insights --json' have its figures",
    "completion": "prints a shell script",
    "grafana": "prints the dashboard, itself a JSON document",
}


class _Parser(argparse.ArgumentParser):
    """argparse with JSON usage errors: when the command line asks for ``--json``, a usage
    error is also printed as the JSON error object on stdout (exit 2 either way)."""

    json_errors: ClassVar[bool] = False

    def error(self, message: str) -> NoReturn:
        if _Parser.json_errors:
            print_json(error_object(message, ExitCode.USAGE))
        super().error(message)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser: every command's, or only command ``only``'s."""
    parser = _Parser(
        prog="modcoord",
        description="The ModuleCoordinator daemon: debounce, cache, batch and monitor the "
                    "updates of an application's modules.",
    )
    parser.add_argument("--version", action=_Version, nargs=0,
                        help="print modcoord's version and exit")
    parser.add_argument("--runtime-dir", dest="global_runtime_dir", default=None,
                        metavar="RUNTIME_DIR", help=_RUNTIME_DIR_HELP)
    parser.add_argument("--json", dest="global_json", action="store_true",
                        help="print JSON (for a command that takes --json)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS if only is None else (only,):
        module = importlib.import_module(f"modcoord.supervisor.cli.{name}")
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__)
        p.add_argument("--runtime-dir", default=None, help=_RUNTIME_DIR_HELP)
        module.add_arguments(p)
        if name not in NO_JSON and not _has_json(p):
            p.add_argument("--json", action="store_true", help=_JSON_HELP)
        _runtime_dir_on_actions(p, with_json=name not in NO_JSON)
        p.set_defaults(run=module.run)
    return parser


#: The global options that take a value (skipped when finding the command's name).
_GLOBAL_WITH_VALUE: frozenset[str] = frozenset({"--runtime-dir"})


class _Version(argparse.Action):
    """``--version``: print ``modcoord <version>`` and exit 0. The version is looked up
    only when the option is given (``importlib.metadata`` is not light)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        from modcoord.supervisor.version import version

        print(f"{parser.prog} {version()}")
        parser.exit(0)


def command_name(words: list[str]) -> str | None:
    """The command that ``words`` name, past any global options, or ``None`` (no command,
    or an unknown word first: then the full parser reports it)."""
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word in _GLOBAL_WITH_VALUE:
            skip = True
        elif not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def _apply_globals(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fold the global options given before the command into the command's own: one given
    after the command wins. ``--json`` before a command without ``--json`` is a usage
    error (exits 2)."""
    given_dir = args.__dict__.pop("global_runtime_dir", None)
    if getattr(args, "runtime_dir", None) is None and given_dir is not None:
        args.runtime_dir = given_dir
    if args.__dict__.pop("global_json", False):
        if not hasattr(args, "json"):
            parser.error(f"--json is not accepted by '{args.command}' (the commands that "
                         f"take it: {', '.join(json_commands())})")
        args.json = True


def json_commands() -> tuple[str, ...]:
    """The commands that take ``--json``."""
    return tuple(name for name in COMMANDS if name not in NO_JSON)


def _has_json(parser: argparse.ArgumentParser) -> bool:
    return any("--json" in a.option_strings for a in parser._actions)


_JSON_HELP = ('print one JSON object on stdout ({"ok": true, ...}; a failure: '
              '{"ok": false, "error": ..., "exit_code": N})')


_RUNTIME_DIR_HELP = ("runtime directory (default: $MODCOORD_RUNTIME_DIR, "
                     "$XDG_RUNTIME_DIR/modcoord, /tmp/modcoord-$UID)")


def _runtime_dir_on_actions(parser: argparse.ArgumentParser, with_json: bool) -> None:
    """Accept ``--runtime-dir`` (and ``--json``) after a command's action too (``config
    show --runtime-dir R``), not only before it; given there, it wins (SUPPRESS: absent
    leaves the value the command level parsed)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                child.add_argument("--runtime-dir", default=argparse.SUPPRESS,
                                   help=_RUNTIME_DIR_HELP)
                if with_json and not _has_json(child):
                    child.add_argument("--json", action="store_true",
                                       default=argparse.SUPPRESS, help=_JSON_HELP)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code."""
    words = sys.argv[1:] if argv is None else argv
    _Parser.json_errors = "--json" in words
    parser = build_parser(command_name(words))
    args = parser.parse_args(words)
    _apply_globals(parser, args)
    try:
        code: int = args.run(args)
        return code
    except ModcoordError as exc:
        return _fail(args, exc)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``modcoord logs -f | head``): no traceback, and no second
        # error when the interpreter flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _fail(args: argparse.Namespace, exc: ModcoordError) -> int:
    """Print a failure in user words (stderr; and the JSON error object on stdout for
    ``--json``); its exit code."""
    error = user_error(exc)
    print(f"{error.prefix}{error}", file=sys.stderr)
    if getattr(args, "json", False):
        print_json(error_object(str(error), error.code, error.details))
    return error.code


if __name__ == "__main__":
    raise SystemExit(main())
