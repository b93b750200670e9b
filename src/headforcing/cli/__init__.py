"""The ``headforcing`` command line: thin, typed, stage by stage.

One module per command (``generate``, ``batch``, ``interactive``, ``demo``, ``profile``,
``eval``, ``bench``, ``recall``), each only parsing, calls into the library and printing; the
shared options are :mod:`headforcing.cli.arguments` and :mod:`headforcing.cli.options`.

Everything a user gives is checked before any model loads; a bad input ends the run with one
line on stderr that names the argument or file and the fix, and exit status 2. A run stopped by
SIGINT (Ctrl-C) or SIGTERM keeps what it wrote and exits with 130 or 143.
"""

from __future__ import annotations

import argparse
import sys

from headforcing.threads import passive_wait_by_default

passive_wait_by_default()  # before torch loads OpenMP, which reads it once (docs/threads.md)

import torch  # noqa: E402

from headforcing.cli import (  # noqa: E402
    batch,
    bench,
    demo,
    eval,
    generate,
    interactive,
    profile,
    recall,
)
from headforcing.cli.arguments import Parser  # noqa: E402

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="headforcing",
        description="Long autoregressive video generation with a KV cache per head type.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for command in (generate, batch, interactive, demo, profile, eval, bench, recall):
        command.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    from headforcing.interrupts import exit_code, stop_signals

    args = build_parser().parse_args(argv)
    try:
        if hasattr(args, "threads"):
            from headforcing.threads import set_threads

            set_threads(args.threads)
        with stop_signals():
            return args.run(args)
    except ValueError as error:  # bad input: checked before anything was written
        print(f"headforcing {args.command}: error: {error}", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as error:
        print(f"headforcing {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:  # SIGINT or SIGTERM before any video was opened
        print(f"headforcing {args.command}: interrupted ({stop or 'SIGINT'})", file=sys.stderr)
        return exit_code(stop)
    except (MemoryError, torch.OutOfMemoryError) as error:
        message = str(error).splitlines()[0] if str(error) else "out of memory"
        print(
            f"headforcing {args.command}: error: out of memory ({message}); make the frames "
            "smaller (--height/--width) or keep fewer frames (--policy window)",
            file=sys.stderr,
        )
        return 1
