"""``python -m headforcing.cli``: the command line, as ``python -m headforcing``."""

from headforcing.cli import main

raise SystemExit(main())
