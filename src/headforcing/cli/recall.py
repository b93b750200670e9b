"""``headforcing recall``: per head, the share of a reference cache's attention that each
policy's kept tokens hold (docs/head-forcing.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from headforcing.cli import options
from headforcing.cli.arguments import add_model_arguments, add_real_model_arguments


def add_parser(commands) -> None:
    recall = commands.add_parser(
        "recall",
        help="per head, the share of a reference cache's attention that each policy's kept "
        "tokens hold (to tune budgets)",
    )
    recall.add_argument("prompt", help="the prompt of the rollout")
    recall.add_argument(
        "--policies", nargs="+", default=["window", "sink", "head_forcing"], help="policies"
    )
    recall.add_argument("--frames", type=int, default=210, help="latent frames of the rollout")
    recall.add_argument(
        "--chunks", type=int, nargs="+", default=[7, 35, 69], help="chunk indices measured"
    )
    recall.add_argument(
        "--reference",
        choices=("full", "window"),
        default="full",
        help="the cache whose attention is the reference: full, or the trained window for a "
        "model that breaks past its trained range (docs/head-forcing.md)",
    )
    recall.add_argument("--positions", default="relative", choices=("absolute", "relative"))
    recall.add_argument("--seed", type=int, default=0)
    recall.add_argument("--out", type=Path, default=Path("recall.json"))
    recall.add_argument("--png", type=Path, help="the picture (default: next to --out)")
    recall.add_argument(
        "--overwrite", action="store_true", help="replace an existing --out and --png"
    )
    add_model_arguments(recall)
    add_real_model_arguments(recall)
    recall.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from headforcing.heads.lookup import recall_policies
    from headforcing.heads.recall import measure_recall
    from headforcing.io.text import check_prompt
    from headforcing.prompts import check_loaded_prompts

    # prepare input, load, then measure every policy in the reference cache's shadow
    check_prompt(args.prompt, "PROMPT")
    out, png = options.check_report_outs(args)
    options.check_run_args(args)
    pipeline = options.build_pipeline(args)
    check_loaded_prompts(pipeline, args.prompt)
    video = pipeline.preset.video
    policies, labels = recall_policies(
        pipeline, args.policies, positions=args.positions, prompt=args.prompt, seed=args.seed
    )
    chunks = sorted(set(args.chunks))
    print(
        f"recall: {args.frames} latent frames under a {args.reference} cache, "
        f"{len(policies)} policies in its shadow, measured at chunks {chunks}",
        file=sys.stderr,
    )
    report = measure_recall(
        pipeline,
        args.prompt,
        policies,
        args.frames,
        chunks,
        reference=args.reference,
        seed=args.seed,
        labels=labels,
    )
    print(report.table(video.chunk_frames))
    out = report.save(out, args.overwrite)
    png = report.plot(png, args.overwrite)
    print(f"recall per head: {out}, picture {png}", file=sys.stderr)
    return 0
