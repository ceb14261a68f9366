"""The dashboard page: serve it on the running daemon if it is not served yet, print its
URL (with the access token) or open it in a browser."""

from __future__ import annotations

import argparse

from modcoord.supervisor.cli._common import CliError, ExitCode, client, emit, user_error

HELP = "serve the dashboard page (if needed) and print or open its URL"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--open", action="store_true",
                   help="also open the page in the default web browser")


def run(args: argparse.Namespace) -> int:
    from modcoord.actors.errors import ModcoordError

    try:
        with client(args) as c:
            result = c.dashboard().get(timeout=30)
    except ModcoordError as exc:
        raise user_error(exc) from None
    if result.get("error") or not result.get("url"):
        raise CliError(result.get("error") or "the daemon did not serve the dashboard "
                       "(see 'modcoord logs')", ExitCode.FAILURE,
                       address=result.get("address"), token_file=result.get("token_file"))
    opened = None
    if args.open:
        import webbrowser

        opened = webbrowser.open(result["url"])
    lines = [result["url"]]
    if opened is False:
        lines.append("(no web browser could be opened here: open the URL above yourself)")
    emit(args, {**result, "opened": opened}, lines)
    return 0
