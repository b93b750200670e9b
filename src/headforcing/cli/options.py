"""From parsed options to the library's values: devices, the policy and switch, the length,
the prompts, the outputs, the memory plan and the pipeline, each checked before any model
loads; and the lines that say what runs."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

from headforcing.cli.arguments import DTYPES, MAX_SEED
from headforcing.loading import default_dtype, default_preset
from headforcing.model.config import get_preset
from headforcing.pipeline import MAX_LATENT_FRAMES

POLICY_PARAMS = (
    "local_frames",
    "anchor_recent_frames",
    "working_frames",
    "max_episodes",
    "episode_frames",
    "novelty_threshold",
    "recent_frames",
    "budget_frames",
    "dummy_fraction",
)


def say(line: str) -> None:
    """One line for the user, on stderr (stdout holds a command's result)."""
    print(line, file=sys.stderr, flush=True)


def resolve_device(name: str, option: str = "--device") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"{option} {name!r} is not a device; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{option} {name}: no CUDA device is available; use {option} cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"{option} {name}: there are {count} CUDA devices (cuda:0..)")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return default_dtype(device)
    return DTYPES[name]


def preset_name(args: argparse.Namespace) -> str:
    """``--preset``, else the default: Wan's shape with --model, else the toy-world model."""
    return args.preset or default_preset(getattr(args, "model", None))


def base_of(args: argparse.Namespace):
    """The base model ``--model`` names (its sampler, EMA and policy defaults), or ``None``."""
    from headforcing.bases import get_base

    model = getattr(args, "model", None)
    return get_base(model) if model else None


def policy_from_args(args: argparse.Namespace):
    from headforcing.bases import base_policy

    params = {name: getattr(args, name, None) for name in POLICY_PARAMS}
    return base_policy(
        base_of(args),
        args.policy,
        window_frames=args.window_frames,
        sink_frames=args.sink_frames,
        positions=args.positions,
        **params,
    )


def switch_from_args(args: argparse.Namespace) -> str | None:
    """``--switch``, else the base's (``recache`` for LongLive), else ``None``: the policy's."""
    base = base_of(args)
    return args.switch or (base.switch if base is not None else None)


def head_map_from_args(args: argparse.Namespace, policy):
    """``--head-map``, read and checked against the preset's shape before any model loads."""
    from headforcing.heads.lookup import read_head_map

    return read_head_map(args.head_map, policy, preset_name(args))


def real_files(args: argparse.Namespace):
    """The real weights' files the arguments name (checked as they are named)."""
    from headforcing.loading import real_files

    return real_files(
        args.model,
        args.checkpoint,
        args.wan_dir,
        args.diffusers_dir,
        args.lora,
        args.lora_alpha,
        args.ema,
    )


def check_run_args(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    """Seed, frame size, weights and devices, checked before anything loads; the device and
    dtype."""
    from headforcing.loading import check_weights_given
    from headforcing.pipeline import check_size

    seed = getattr(args, "seed", 0)
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"--seed {seed} is out of range; give an integer in 0..2**63-1")
    video = get_preset(preset_name(args)).video
    height = video.height if args.height is None else args.height
    width = video.width if args.width is None else args.width
    try:
        check_size(height, width)
    except ValueError as error:
        raise ValueError(f"--{error}") from None
    if hasattr(args, "scale"):  # a command that writes videos: frames the encoder takes
        check_video_frames(height, width, args.scale)
    model = getattr(args, "model", None)
    check_weights_given(preset_name(args), model=model, random_weights=args.random_weights)
    if model:
        real_files(args)  # names a missing or misplaced file now, not after a minute of loading
    if getattr(args, "text_device", None):
        resolve_device(args.text_device, "--text-device")
    device = resolve_device(args.device)
    return device, resolve_dtype(args.dtype, device)


def check_video_frames(height: int, width: int, scale: int | str) -> None:
    """Refuse frames the H.264 encoder cannot take once upscaled by ``--scale``."""
    from headforcing.io.scale import display_scale
    from headforcing.io.video import check_frame_size

    factor = display_scale(height, width, scale)
    check_frame_size(height, width, factor, f"auto = {factor}" if scale == "auto" else str(factor))


def length_from_args(args: argparse.Namespace) -> int:
    """Latent frames of the run, from --frames or --seconds, within 1..MAX_LATENT_FRAMES."""
    from headforcing.pipeline import latent_frames_for_seconds

    if args.frames is not None:
        if not 1 <= args.frames <= MAX_LATENT_FRAMES:
            raise ValueError(
                f"--frames must be >= 1 latent frame and at most {MAX_LATENT_FRAMES}, "
                f"got {args.frames}"
            )
        return args.frames
    video = get_preset(preset_name(args)).video
    stride = video.vae_stride[0]
    longest = (MAX_LATENT_FRAMES - 1) * stride / video.fps
    if not (math.isfinite(args.seconds) and 0 < args.seconds <= longest):
        raise ValueError(
            f"--seconds {args.seconds:g}: give a finite length > 0 and at most {longest:.0f} s, "
            "e.g. --seconds 60"
        )
    return latent_frames_for_seconds(args.seconds, video.fps, stride)


def check_memory(
    args: argparse.Namespace, policy, num_frames: int, device, dtype, prompts=None, head_map=None
) -> None:
    """Pick the memory mode of the run, or refuse a frame size and cache that cannot fit the
    device (headforcing.planning); on CUDA say which mode and the numbers. The plan is kept in
    ``args.memory_plan`` for the loader."""
    from headforcing.planning import plan_run_memory

    text_device = getattr(args, "text_device", None)
    plan = plan_run_memory(
        policy=policy,
        num_frames=num_frames,
        device=device,
        dtype=dtype,
        preset=args.preset,
        files=real_files(args) if getattr(args, "model", None) else None,
        prompts=prompts,
        live_prompts=args.command == "interactive",
        height=args.height,
        width=args.width,
        scale=getattr(args, "scale", None),
        switch=switch_from_args(args),
        mode=getattr(args, "memory_mode", "auto"),
        text_device=resolve_device(text_device, "--text-device") if text_device else None,
        keep_text_encoder=getattr(args, "keep_text_encoder", None),
        head_map=head_map,
    )
    args.memory_plan = plan
    if device.type == "cuda":
        print(plan.line(), file=sys.stderr)


def build_pipeline(args: argparse.Namespace):
    """The pipeline the arguments name (:func:`headforcing.loading.load_pipeline`); with
    --compile, its passes run through torch.compile."""
    from headforcing.loading import load_pipeline

    device = resolve_device(args.device)
    model = getattr(args, "model", None)
    real = {}
    if model:
        text_device = args.text_device
        real = {
            "checkpoint": args.checkpoint,
            "wan_dir": args.wan_dir,
            "diffusers_dir": args.diffusers_dir,
            "lora": args.lora,
            "lora_alpha": args.lora_alpha,
            "ema": args.ema,
            "memory_plan": getattr(args, "memory_plan", None),
            "memory_mode": getattr(args, "memory_mode", "auto"),
            "text_device": resolve_device(text_device, "--text-device") if text_device else None,
            "keep_text_encoder": getattr(args, "keep_text_encoder", None),
        }
    return load_pipeline(
        model=model,
        preset=args.preset,
        device=device,
        dtype=resolve_dtype(args.dtype, device),
        height=args.height,
        width=args.width,
        random_weights=args.random_weights,
        compile=getattr(args, "compile", None),
        **real,
    )


def prompts_from_args(args: argparse.Namespace):
    """PROMPT, or the schedule of --prompts FILE, checked before any model loads."""
    from headforcing.io.text import check_prompt
    from headforcing.schedule import FrameClock, load_schedule

    if (args.prompt is None) == (args.prompts is None):
        both = "not both" if args.prompt is not None else "one of them"
        raise ValueError(f"give a PROMPT or --prompts FILE (a prompt schedule), {both}")
    if args.prompts is None:
        if args.switch_frames:
            raise ValueError("--switch-frames goes with --prompts FILE (LongLive's format)")
        return check_prompt(args.prompt, "PROMPT")
    switch_frames = None
    if args.switch_frames:
        try:
            switch_frames = [int(part) for part in args.switch_frames.split(",") if part.strip()]
        except ValueError:
            raise ValueError(
                f"--switch-frames {args.switch_frames!r}: give latent frames like 40,80"
            ) from None
    video = get_preset(preset_name(args)).video
    clock = FrameClock(video.fps, video.vae_stride[0], video.chunk_frames)
    schedule = load_schedule(args.prompts, clock, switch_frames)
    schedule.check_length(length_from_args(args))
    return schedule


def check_video_out(args: argparse.Namespace) -> Path:
    """``--out`` of a command that writes a video, by the one rule of every output
    (:func:`headforcing.io.files.check_output_path`)."""
    from headforcing.io.files import check_output_path

    return check_output_path(args.out, option="--out", overwrite=args.overwrite, suffixes=(".mp4",))


def check_report_outs(args: argparse.Namespace) -> tuple[Path, Path]:
    """``--out`` (JSON) and ``--png`` (default: beside ``--out``) of ``profile`` and ``recall``."""
    from headforcing.io.files import check_output_path

    out = check_output_path(args.out, option="--out", overwrite=args.overwrite, suffixes=(".json",))
    png = args.png if args.png is not None else out.with_suffix(".png")
    png = check_output_path(png, option="--png", overwrite=args.overwrite, suffixes=(".png",))
    return out, png
