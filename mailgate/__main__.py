"""``python -m mailgate`` runs the ``mailgate`` command (handy before the console script is installed)."""

from .cli import main

raise SystemExit(main())
