"""The modules of ``scripts/bench`` (its docstring describes the command and the layout)."""
