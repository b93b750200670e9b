"""``headforcing bench``: ms per DiT pass, frames/s and K/V bytes of each policy by video length,
with random weights (docs/benchmarks.md)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from headforcing.cli import options
from headforcing.cli.arguments import add_model_arguments


def add_parser(commands) -> None:
    bench = commands.add_parser("bench", help="ms per DiT pass, frames/s and K/V bytes by length")
    bench.add_argument(
        "--policies",
        nargs="+",
        default=["full", "window", "sink", "head_forcing"],
        help="policies to time",
    )
    bench.add_argument(
        "--seconds", nargs="+", type=float, default=[5, 30, 60, 120], help="video lengths"
    )
    bench.add_argument("--chunks", type=int, default=2, help="timed chunks per row")
    bench.add_argument(
        "--positions",
        default="relative",
        choices=("absolute", "relative"),
        help="temporal RoPE positions",
    )
    bench.add_argument("--head-map", type=Path, help="head_forcing: map (default: profiled)")
    bench.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    bench.add_argument("--overwrite", action="store_true", help="replace an existing --json")
    bench.add_argument(
        "--random-vae",
        action="store_true",
        help="decode with a random-weight Wan2.1 VAE (diffusers) instead of the preset's decoder",
    )
    add_model_arguments(bench)
    bench.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from headforcing.bench import (
        bench_decode,
        bench_plain_pass,
        bench_rows,
        format_table,
        write_json,
    )
    from headforcing.heads.lookup import bench_head_map
    from headforcing.speed import device_name

    # prepare input: random weights, the lengths and the outputs checked before loading
    args.random_weights = True
    for seconds in args.seconds:
        if not (math.isfinite(seconds) and 0 < seconds <= 3600):
            raise ValueError(f"--seconds {seconds:g}: give lengths in (0, 3600] seconds")
    options.check_run_args(args)
    if args.json is not None:
        from headforcing.io.files import check_output_path

        check_output_path(args.json, option="--json", overwrite=args.overwrite, suffixes=(".json",))
    if args.head_map is not None and "head_forcing" in args.policies:
        from headforcing.heads.headmap import HeadMap

        HeadMap.load(args.head_map)  # a bad file fails now, not after the first rows
    pipeline = options.build_pipeline(args)
    if args.random_vae:
        from diffusers import AutoencoderKLWan

        from headforcing.io.wan_vae import WanVAEDecoder

        device, dtype = pipeline.model.device, pipeline.model.dtype
        pipeline.decoder = WanVAEDecoder(AutoencoderKLWan(), device=device, dtype=dtype)
    device = pipeline.model.device
    video = pipeline.preset.video
    pixel_frames = video.chunk_frames * video.vae_stride[0]
    decode_ms = bench_decode(pipeline, timed_chunks=args.chunks)  # every row says both rates

    def said(row) -> None:
        print(
            f"{row.policy:>28} {row.seconds:>5g} s: {row.ms_per_chunk:8.1f} ms/chunk, "
            f"{row.frames_per_second:.1f} frames/s DiT only, "
            f"{row.end_to_end_frames_per_second:.1f} end to end (decode beside), "
            f"{row.syncs_per_chunk} host reads/chunk",
            file=sys.stderr,
        )

    # measure every policy at every length, then report
    rows = bench_rows(
        pipeline,
        args.policies,
        args.seconds,
        positions=args.positions,
        timed_chunks=args.chunks,
        decode_ms=decode_ms,
        head_map=lambda: bench_head_map(pipeline, args.head_map, options.say),
        on_row=said,
    )
    dtype_name = str(pipeline.model.dtype).removeprefix("torch.")
    title = (
        f"{pipeline.preset.name}, {pipeline.width}x{pipeline.height}, {dtype_name}, "
        f"{device_name(device)}"
    )
    window = video.trained_frames - video.chunk_frames
    plain_ms = bench_plain_pass(pipeline, window)
    print(format_table(rows, title, decode_ms, pixel_frames))
    print(
        f"\nreference: a plain-SDPA pass over {window} context frames + the chunk (no RoPE, no "
        f"cache): {plain_ms:.1f} ms; compare with the window rows' ms/pass"
    )
    if args.json is not None:
        path = write_json(
            rows,
            args.json,
            args.overwrite,
            title=title,
            compiled=args.compile,
            decode_ms_per_chunk=decode_ms,
            plain_pass_ms=plain_ms,
        )
        print(f"rows written to {path}", file=sys.stderr)
    return 0
