"""The ``modcoord`` command line (placeholder until the daemon lands)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("modcoord: commands arrive with the daemon", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
