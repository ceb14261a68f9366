"""``python -m modcoord.supervisor`` runs the command line."""

from modcoord.supervisor.cli import main

raise SystemExit(main())
