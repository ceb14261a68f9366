"""Fault injection: make an actor fail (only when the daemon was started with
--allow-fault-injection)."""

from __future__ import annotations

import argparse

from modcoord.supervisor.cli._common import client, emit

HELP = "fault injection (crash an actor)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    c = sub.add_parser("crash", help="make ACTOR fail")
    c.add_argument("actor", choices=["debouncer", "cache", "batcher", "memory", "monitor"])
    c.add_argument("--base-exception", action="store_true",
                   help="raise a BaseException instead of an Exception")
    c.add_argument("--kill", action="store_true",
                   help="SIGKILL the actor's process (an actor in a process of its own)")


def run(args: argparse.Namespace) -> int:
    kind = "base_exception" if args.base_exception else "exception"
    with client(args) as c:
        if args.kill:
            c.crash(args.actor, kind=kind, kill=True).get(timeout=10)
        else:
            c.crash(args.actor, kind=kind).get(timeout=10)
    if args.kill:
        emit(args, {"actor": args.actor, "kind": "kill"},
             f"process of {args.actor} killed (SIGKILL)")
    else:
        emit(args, {"actor": args.actor, "kind": kind}, f"crash injected into {args.actor}")
    return 0
