"""Re-read the config directory now (as SIGHUP and file changes do). A broken config is
rejected and the running one stays; the error is printed and shown in status."""

from __future__ import annotations

import argparse

from modcoord.supervisor.cli._common import CliError, client, emit

HELP = "re-read the configs now"


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    with client(args) as c:
        result = c.reload().get(timeout=30)
    if result.get("pending"):
        raise CliError("the reload is still running; its outcome will show in "
                       "'modcoord status' (last_reload_error)", **result)
    if not result["ok"]:
        raise CliError(f"reload rejected, running config kept: {result['error']}",
                       **{k: v for k, v in result.items() if k not in ("ok", "error")})
    emit(args, result, "config reloaded" if result["changed"] else "config unchanged")
    return 0
