"""``headforcing eval``: long-video measures of MP4 files per segment, and ground truth for toy
videos (docs/eval.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(commands) -> None:
    evaluate = commands.add_parser(
        "eval",
        help="long-video measures of MP4 files per segment, and ground truth for toy videos",
        description="Flicker, sharpness, motion, dynamic degree, colour and background drift "
        "per segment of each video, and drift = last segment - first; for videos of the toy "
        "model (their prompt is in the file) the toy-world metrics against ground truth "
        "(docs/eval.md).",
    )
    evaluate.add_argument("video", nargs="+", type=Path, help="MP4 files (any source)")
    evaluate.add_argument(
        "--segment-frames",
        type=int,
        help="video frames per segment (default: 21 latent frames' worth of the model that made "
        "the video: 21 for the toy model, 81 for Wan2.1 and for videos without our metadata)",
    )
    evaluate.add_argument("--json", type=Path, help="also write every segment to this JSON file")
    evaluate.add_argument("--plot", type=Path, help="also plot each measure over time (PNG)")
    evaluate.add_argument(
        "--overwrite", action="store_true", help="replace an existing --json or --plot"
    )
    evaluate.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import av

    from headforcing.eval.plot import plot_over_time
    from headforcing.eval.report import evaluate_file, format_table, write_json
    from headforcing.io.files import check_output_path

    # prepare input: the outputs (the one rule of every output) and every file, before
    # anything is measured
    for option, path, suffix in (("--json", args.json, ".json"), ("--plot", args.plot, ".png")):
        if path is not None:
            check_output_path(path, option=option, overwrite=args.overwrite, suffixes=(suffix,))
    for path in args.video:
        if not path.is_file():
            raise ValueError(f"VIDEO {path}: no such file")
    # measure every video (a demo file holds one per panel), then report
    results = []
    for path in args.video:
        try:
            results += evaluate_file(path, args.segment_frames)
        except av.FFmpegError as error:
            raise ValueError(f"VIDEO {path}: not a video PyAV can read ({error})") from None
    print(format_table(results))
    if args.json is not None:
        path = write_json(results, args.json, args.overwrite)
        print(f"measures per segment: {path}", file=sys.stderr)
    if args.plot is not None:
        path = plot_over_time(results, args.plot, args.overwrite)
        print(f"measures over time: {path}", file=sys.stderr)
    return 0
