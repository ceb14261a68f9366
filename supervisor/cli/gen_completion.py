"""Generate the shipped completion scripts from the command line's parser, with shtab (a
build-time tool, in the ``dev`` extra; never needed at run time).

``python -m modcoord.supervisor.cli.gen_completion`` rewrites
``supervisor/cli/completions/*``; ``--check`` exits 1 (naming the stale files) when they
differ from what the parser generates now — run after changing any command's options.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from modcoord.supervisor.cli import build_parser
from modcoord.supervisor.cli.completion import SCRIPTS

__all__ = ["COMPLETIONS_DIR", "generate", "main"]

COMPLETIONS_DIR = Path(__file__).resolve().parent / "completions"



def generate(shell: str) -> str:
    """The completion script for ``shell``, generated from the full parser.

    Raises:
        ImportError: shtab is not installed (``pip install -e '.[dev]'``).
    """
    import shtab

    text: str = shtab.complete(build_parser(), shell=shell)
    return text if text.endswith("\n") else text + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if a shipped script is not what the parser generates")
    args = parser.parse_args(argv)
    stale = []
    for shell, name in SCRIPTS.items():
        path = COMPLETIONS_DIR / name
        text = generate(shell)
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(str(path))
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        print("stale completion scripts (run python -m modcoord.supervisor.cli.gen_completion):"
              f" {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
