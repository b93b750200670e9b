"""``headforcing profile``: measure and classify the attention heads on calibration prompts;
the head map is written and stored for the weights (docs/head-forcing.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from headforcing.cli import options
from headforcing.cli.arguments import FRAMES_HELP, add_model_arguments, add_real_model_arguments


def add_parser(commands) -> None:
    profile = commands.add_parser("profile", help="measure and classify attention heads")
    profile.add_argument("prompt", nargs="*", help="calibration prompts")
    profile.add_argument("--prompts", type=Path, help="a file of prompts, one per line")
    profile.add_argument("--out", type=Path, default=Path("head_map.json"), help="head map JSON")
    profile.add_argument("--png", type=Path, help="the picture (default: next to --out)")
    profile.add_argument(
        "--overwrite", action="store_true", help="replace an existing --out and --png"
    )
    profile.add_argument("--frames", type=int, default=21, help=f"{FRAMES_HELP} per rollout")
    profile.add_argument(
        "--chunks", type=int, nargs="+", default=[3, 4, 5, 6], help="chunks whose attention is read"
    )
    profile.add_argument("--query-rows", type=int, default=64, help="query rows sampled per chunk")
    profile.add_argument("--seed", type=int, default=0, help="seed of the sampler's noise")
    rules = profile.add_argument_group("classification rule")
    rules.add_argument(
        "--rule", default="percentile", choices=("percentile", "threshold"), help="how heads split"
    )
    rules.add_argument("--anchor-fraction", type=float, help="percentile: share of anchors")
    rules.add_argument("--local-fraction", type=float, help="percentile: local share of rest")
    rules.add_argument("--anchor-threshold", type=float, help="threshold: sink mass")
    rules.add_argument("--local-threshold", type=float, help="threshold: current-chunk mass")
    add_model_arguments(profile)
    add_real_model_arguments(profile)
    profile.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from headforcing.heads.plot import plot_head_map
    from headforcing.heads.profile import ProfileSettings, profile_heads
    from headforcing.heads.store import store_map
    from headforcing.io.files import read_text
    from headforcing.io.text import check_prompt
    from headforcing.prompts import check_loaded_prompts

    sources = [(check_prompt(prompt, "PROMPT"), "PROMPT") for prompt in args.prompt]
    if args.prompts is not None:
        lines = read_text(args.prompts, "--prompts").splitlines()
        for number, line in enumerate(lines, start=1):
            if line.strip():
                where = f"{args.prompts} line {number}"
                sources.append((check_prompt(line.strip(), where), where))
    prompts = [prompt for prompt, _ in sources]
    if not prompts:
        raise ValueError("give prompts: PROMPT arguments or --prompts FILE (one per line)")
    out, png = options.check_report_outs(args)
    options.check_run_args(args)
    settings = ProfileSettings(
        chunks=tuple(args.chunks), query_rows=args.query_rows, frames=args.frames
    )
    pipeline = options.build_pipeline(args)
    for prompt, where in sources:  # a map profiled on prompts the model cannot read is no map
        check_loaded_prompts(pipeline, prompt, where)
    bar = tqdm(total=len(prompts), unit="prompt", desc="profiling", file=sys.stderr)
    head_map = profile_heads(
        pipeline,
        prompts,
        settings,
        rule=args.rule,
        seed=args.seed,
        progress=lambda done, total: bar.update(1),
        anchor_fraction=args.anchor_fraction,
        local_fraction=args.local_fraction,
        anchor_threshold=args.anchor_threshold,
        local_threshold=args.local_threshold,
    )
    bar.close()
    out = head_map.save(out, args.overwrite)
    png = plot_head_map(head_map, png, args.overwrite)
    stored = store_map(head_map, pipeline.weights_id)
    counts = ", ".join(f"{k} {v}" for k, v in head_map.counts().items())
    print(
        f"head map ({counts}): {out}, picture {png}\nstored for every later head_forcing run of "
        f"these weights without --head-map: {stored} (delete it to go back to the "
        "shipped or profiled-at-run map)"
    )
    return 0
