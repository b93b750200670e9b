"""``python -m headforcing`` (and ``torchrun -m headforcing``): the command line."""

from headforcing.cli import main

raise SystemExit(main())
