"""Print the shell completion script for bash or zsh (generated from this parser at build
time and shipped with the package: nothing extra is needed at run time).

bash: ``modcoord completion bash > ~/.local/share/bash-completion/completions/modcoord``
(or ``source <(modcoord completion bash)`` in ``~/.bashrc``); zsh: ``modcoord completion
zsh > ~/.zfunc/_modcoord`` with ``fpath+=~/.zfunc`` before ``compinit`` in ``~/.zshrc``.
"""

from __future__ import annotations

import argparse
import sys

HELP = "print the bash or zsh completion script"

#: The shells with a shipped script, and its file in ``modcoord/supervisor/cli/completions``.
SCRIPTS: dict[str, str] = {"bash": "modcoord.bash", "zsh": "_modcoord"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("shell", choices=sorted(SCRIPTS), help="the shell to complete for")


def script(shell: str) -> str:
    """The shipped completion script for ``shell``.

    Raises:
        OSError: the package data is missing (a broken install: reinstall modcoord).
    """
    from importlib import resources

    return (resources.files("modcoord.supervisor.cli") / "completions" / SCRIPTS[shell]
            ).read_text(encoding="utf-8")


def run(args: argparse.Namespace) -> int:
    sys.stdout.write(script(args.shell))
    return 0
