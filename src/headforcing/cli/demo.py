"""``headforcing demo``: the toy model far past its horizon, Head Forcing beside a baseline
(docs/toyworld.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from headforcing.cli.arguments import MAX_SEED, add_scale_argument, add_threads_argument
from headforcing.pipeline import MAX_LATENT_FRAMES


def add_parser(commands) -> None:
    demo = commands.add_parser(
        "demo", help="the toy model far past its horizon: Head Forcing beside a baseline"
    )
    demo.add_argument(
        "--frames",
        type=int,
        default=252,
        help="frames of the toy model (1 latent frame = 1 video frame; 252: 12x the horizon)",
    )
    demo.add_argument(
        "--out-dir", type=Path, default=Path("demo"), help="folder of the video and report"
    )
    demo.add_argument(
        "--baseline",
        default="window-21 (absolute)",
        help="window-21 (absolute), window-21 (relative), sink (relative) or full",
    )
    demo.add_argument(
        "--prompt",
        default=None,
        help="a toy-world prompt (default: a blue square and a yellow circle bounce over a gray "
        "checkered background)",
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of the sampler's noise")
    demo.add_argument(
        "--overwrite", action="store_true", help="replace the demo's files in --out-dir"
    )
    add_scale_argument(demo)
    add_threads_argument(demo)
    demo.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from headforcing.interrupts import exit_code
    from headforcing.io.text import check_prompt
    from headforcing.toyworld.demo import DEMO_FILES, check_demo_folder, run_demo

    if not 42 <= args.frames <= MAX_LATENT_FRAMES:
        raise ValueError(f"--frames {args.frames}: the demo needs at least 42 frames (2 segments)")
    if not 0 <= args.seed <= MAX_SEED:
        raise ValueError(f"--seed {args.seed} is out of range; give an integer in 0..2**63-1")
    if args.prompt is not None:
        check_prompt(args.prompt, "--prompt")
    check_demo_folder(args.out_dir, args.overwrite)
    video = args.out_dir / DEMO_FILES["video"]
    before = video.stat().st_ino if video.exists() else None  # --overwrite: the old one
    try:
        report = run_demo(
            args.out_dir,
            frames=args.frames,
            baseline=args.baseline,
            prompt=args.prompt,
            seed=args.seed,
            scale=args.scale,
            overwrite=args.overwrite,
        )
    except KeyboardInterrupt as stop:
        if video.exists() and video.stat().st_ino != before:
            print(f"interrupted ({stop}): {video} holds the chunks made so far", file=sys.stderr)
        else:
            print(f"interrupted ({stop}) before the first chunk: no video written", file=sys.stderr)
        return exit_code(stop)
    print(
        f"side-by-side video: {report.video}\nreport: {report.report}\n"
        f"metrics over time: {report.plot}\nhead map: {report.head_map_picture}\n"
    )
    print(report.summary)
    return 0
