"""What the commands share: finding the daemon, printing JSON."""

from __future__ import annotations

import json
import sys
from argparse import Namespace
from pathlib import Path
from typing import Any

__all__ = ["client", "print_json", "runtime_dir"]


def runtime_dir(args: Namespace) -> Path:
    from modcoord.supervisor.protocol.paths import resolve_runtime_dir

    return Path(resolve_runtime_dir(args.runtime_dir))


def client(args: Namespace, timeout: float = 10.0) -> Any:
    """Connect to the daemon of ``--runtime-dir`` (raises NotRunningError if none)."""
    from modcoord.supervisor.client import connect

    return connect(runtime_dir=runtime_dir(args), timeout=timeout, reconnect=False)


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")
