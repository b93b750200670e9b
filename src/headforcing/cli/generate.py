"""``headforcing generate``: a video from a prompt (or a prompt schedule), written as it is
made; ``--parallel heads``: one stream over the ranks of a torchrun launch."""

from __future__ import annotations

import argparse
import sys

from headforcing.cli import options
from headforcing.cli.arguments import (
    FRAMES_HELP,
    add_model_arguments,
    add_policy_arguments,
    add_prompt_arguments,
    add_real_model_arguments,
    add_scale_argument,
)


def add_parser(commands) -> None:
    generate = commands.add_parser("generate", help="generate a video from a prompt")
    generate.add_argument("prompt", nargs="?", help="the prompt (or --prompts FILE)")
    length = generate.add_mutually_exclusive_group()
    length.add_argument("--seconds", type=float, default=5.0, help="video length")
    length.add_argument("--frames", type=int, help=f"video length in {FRAMES_HELP}")
    generate.add_argument("--seed", type=int, default=0, help="seed of the sampler's noise")
    generate.add_argument("--out", default="video.mp4", help="output MP4")
    generate.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_scale_argument(generate)
    generate.add_argument(
        "--parallel",
        choices=("none", "heads"),
        default="none",
        help="heads: one stream over the ranks of a torchrun launch, each rank holding its "
        "heads' K/V (docs/distributed.md); rank 0 writes the video",
    )
    add_model_arguments(generate)
    add_real_model_arguments(generate)
    add_policy_arguments(generate)
    add_prompt_arguments(generate)
    generate.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from headforcing.heads.lookup import attach_head_map, storer
    from headforcing.io.writer import write_pipeline_stream
    from headforcing.prompts import check_loaded_prompts

    # prepare input: all of it checked before the model loads
    out = options.check_video_out(args)
    device, dtype = options.check_run_args(args)
    num_frames = options.length_from_args(args)
    prompts = options.prompts_from_args(args)
    policy = options.policy_from_args(args)
    head_map = options.head_map_from_args(args, policy)
    options.check_memory(args, policy, num_frames, device, dtype, prompts, head_map)
    if args.parallel == "heads":
        return generate_by_heads(args, out, device, num_frames, prompts, policy, head_map)
    print("loading the model", file=sys.stderr, flush=True)
    pipeline = options.build_pipeline(args)
    check_loaded_prompts(pipeline, prompts)
    policy, head_map_source = attach_head_map(policy, head_map, pipeline)
    describe_run(args, pipeline, policy, head_map_source, num_frames, prompts)
    # denoise, decode, write, chunk by chunk
    written = write_pipeline_stream(
        pipeline,
        out,
        prompts,
        num_frames,
        policy,
        seed=args.seed,
        switch=options.switch_from_args(args),
        scale=args.scale,
        overwrite=args.overwrite,
        on_head_map=storer(pipeline, options.say),
    )
    for line in written.lines:
        print(line, file=sys.stderr)
    return written.status


def generate_by_heads(args, out, device, num_frames: int, prompts, policy, head_map) -> int:
    """``--parallel heads`` (:func:`headforcing.distributed.generate.generate_by_heads`)."""
    from headforcing.distributed.generate import generate_by_heads

    def load(rank_device):
        args.device = str(rank_device)
        return options.build_pipeline(args)

    def describe(pipeline, policy, source: str) -> None:
        describe_run(args, pipeline, policy, source, num_frames, prompts)

    return generate_by_heads(
        load,
        out,
        device,
        num_frames,
        prompts,
        policy,
        head_map,
        seed=args.seed,
        switch=options.switch_from_args(args),
        scale=args.scale,
        overwrite=args.overwrite,
        compiled=bool(args.compile),
        describe=describe,
        report=options.say,
    )


def describe_run(args, pipeline, policy, head_map_source: str, num_frames: int, prompts) -> None:
    dtype_name = str(pipeline.model.dtype).removeprefix("torch.")
    print(
        f"headforcing: {pipeline.preset.name} on {pipeline.model.device} ({dtype_name}), "
        f"{pipeline.width}x{pipeline.height}, {num_frames} latent frames, "
        f"policy {policy.describe()} ({policy.positions} positions)",
        file=sys.stderr,
    )
    if head_map_source != "-":
        print(f"head map: {head_map_source}", file=sys.stderr)
    if not isinstance(prompts, str):
        for note in prompts.notes:
            print(f"note: {note}", file=sys.stderr)
        starts = ", ".join(str(segment.start) for segment in prompts.segments)
        print(
            f"{len(prompts.segments)} prompts from latent frames {starts}; switch: "
            f"{options.switch_from_args(args) or policy.default_switch}",
            file=sys.stderr,
        )
