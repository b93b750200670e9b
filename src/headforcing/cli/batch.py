"""``headforcing batch``: a prompt file to a folder of videos and a manifest, over the ranks of
a torchrun launch (docs/distributed.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from headforcing.cache.policies import POLICIES
from headforcing.cli import options
from headforcing.cli.arguments import (
    add_batch_policy_arguments,
    add_model_arguments,
    add_real_model_arguments,
    add_scale_argument,
    add_switch_argument,
)


def add_parser(commands) -> None:
    batch = commands.add_parser(
        "batch",
        help="a prompt file to a folder of videos and a manifest, over torchrun's ranks",
    )
    batch.add_argument(
        "prompts", type=Path, metavar="PROMPTS", help="one prompt per line, or JSON items"
    )
    batch.add_argument("--out-dir", type=Path, required=True, help="videos and manifest.jsonl")
    batch.add_argument(
        "--policies",
        nargs="+",
        default=["window"],
        help=f"policies to sweep, one folder each (of {', '.join(POLICIES)}; default window)",
    )
    length = batch.add_mutually_exclusive_group()
    length.add_argument("--seconds", type=float, default=5.0, help="video length (default 5)")
    length.add_argument("--frames", type=int, help="video length in latent frames")
    batch.add_argument(
        "--seed", type=int, default=0, help="item i's seed is SEED + i unless the item gives one"
    )
    batch.add_argument(
        "--overwrite",
        action="store_true",
        help="make every video again and replace it (default: skip the finished ones)",
    )
    add_switch_argument(batch.add_argument_group("prompt switch"))
    add_scale_argument(batch)
    add_model_arguments(batch)
    add_real_model_arguments(batch)
    add_batch_policy_arguments(batch)
    batch.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from headforcing.batch import check_outputs, expand_jobs, read_items, run_batch
    from headforcing.batch.options import (
        batch_lengths,
        batch_policies,
        check_out_dir,
        with_head_maps,
    )
    from headforcing.distributed import join_world
    from headforcing.model.config import get_preset
    from headforcing.prompts import check_loaded_prompts
    from headforcing.schedule import FrameClock

    # prepare input: the file, the policies, the lengths; all checked before the model loads
    device, _ = options.check_run_args(args)
    video = get_preset(options.preset_name(args)).video
    clock = FrameClock(video.fps, video.vae_stride[0], video.chunk_frames)
    items = read_items(args.prompts, clock)
    policies = batch_policies(
        args.policies,
        items,
        args.prompts,
        base=options.base_of(args),
        window_frames=args.window_frames,
        sink_frames=args.sink_frames,
        positions=args.positions,
    )
    head_map = None
    if args.head_map is not None:
        if "head_forcing" not in policies:
            raise ValueError("--head-map is for head_forcing; add it to --policies")
        head_map = options.head_map_from_args(args, policies["head_forcing"])
    frames_of = batch_lengths(args.prompts, options.length_from_args(args), video)
    jobs = expand_jobs(items, args.policies, args.seed, frames_of)
    out_dir = check_out_dir(args.out_dir)
    check_outputs(out_dir, jobs, args.overwrite)

    # the ranks: only control messages pass between them (gloo); the last rank may finish
    # hours after the first, so the final barrier waits long
    world = join_world("gloo", timeout=timedelta(days=7))
    try:
        args.device = str(world.device(device))
        pipeline = options.build_pipeline(args)
        for item in items:
            check_loaded_prompts(pipeline, item.prompt, f"{args.prompts} line {item.line}")
        policies = with_head_maps(
            pipeline, policies, head_map, items[0].prompt, args.seed, world.is_main, options.say
        )
        dtype_name = str(pipeline.model.dtype).removeprefix("torch.")
        settings = {
            "preset": pipeline.preset.name,
            "height": pipeline.height,
            "width": pipeline.width,
            "fps": video.fps,
            "dtype": dtype_name,
            "switch": options.switch_from_args(args),
            "ranks": world.size,
        }
        if world.is_main:
            print(
                f"batch: {len(jobs)} videos ({len(items)} items x policies) on {world.size} "
                f"ranks into {out_dir}",
                file=sys.stderr,
            )
        report = run_batch(
            pipeline,
            jobs,
            policies.__getitem__,
            out_dir,
            world,
            settings,
            options.switch_from_args(args),
            args.scale,
            args.overwrite,
        )
        if world.is_main:
            print(
                f"batch: {report.total} videos, {report.skipped} already done; manifest "
                f"{report.manifest}",
                file=sys.stderr,
            )
        return 0
    finally:
        world.close()
