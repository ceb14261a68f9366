"""Re-read the config directory now (as SIGHUP and file changes do). A broken config is
rejected and the running one stays; the error is printed and shown in status."""

from __future__ import annotations

import argparse
import sys

from modcoord.supervisor.cli._common import client

HELP = "re-read the configs now"


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    with client(args) as c:
        result = c.reload().get(timeout=30)
    if result.get("pending"):
        print("modcoord: the reload is still running; its outcome will show in "
              "'modcoord status' (last_reload_error)", file=sys.stderr)
        return 1
    if not result["ok"]:
        print(f"modcoord: reload rejected, running config kept: {result['error']}",
              file=sys.stderr)
        return 1
    print("config reloaded" if result["changed"] else "config unchanged")
    return 0
