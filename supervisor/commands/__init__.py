"""One module per ``modcoord`` command."""
