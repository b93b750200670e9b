"""The ``headforcing`` command line: thin, typed, stage by stage.

Everything a user gives is checked before any model loads; a bad input ends the run with one
line on stderr that names the argument or file and the fix, and exit status 2. A run stopped by
SIGINT (Ctrl-C) or SIGTERM keeps what it wrote and exits with 130 or 143.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

from headforcing.threads import passive_wait_by_default

passive_wait_by_default()  # before torch loads OpenMP, which reads it once (docs/threads.md)

import torch  # noqa: E402

from headforcing.cache.policies import POLICIES, make_policy  # noqa: E402
from headforcing.io.scale import MIN_DISPLAY_PIXELS  # noqa: E402
from headforcing.model.config import PRESETS, get_preset  # noqa: E402
from headforcing.pipeline import COMPILE_MODES  # noqa: E402
from headforcing.resources import MODE_NAMES  # noqa: E402
from headforcing.switch import SWITCH_MODES  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MAX_SEED = 2**63 - 1
# ~12 days of video at 16 fps: beyond any run, and far from integer overflow in positions
MAX_LATENT_FRAMES = 2**22
FRAMES_HELP = "latent frames (video frames per latent frame: {})".format(
    ", ".join(
        f"{stride} for --preset {'|'.join(names)}"
        for stride, names in itertools.groupby(
            sorted(PRESETS, key=lambda name: (PRESETS[name].video.vae_stride[0], name)),
            key=lambda name: PRESETS[name].video.vae_stride[0],
        )
    )
)


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already names it or there
    is none to show (no default, a flag that is off)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or not action.option_strings
        ):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, list) else default
        return f"{text} (default: {shown})"


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (the usage is one ``--help`` away) and every
    default in ``--help``."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


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
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def add_policy_arguments(parser: argparse.ArgumentParser, default: str = "window") -> None:
    group = parser.add_argument_group("cache policy (docs/policies.md)")
    group.add_argument(
        "--policy",
        help=f"one of {', '.join(POLICIES)}, or your own: module:Class or file.py:Class; with "
        f"--model the base's (sink for longlive, docs/real-models.md) (default: {default})",
    )
    group.add_argument(
        "--window-frames", type=int, help="window/sink: frames attended, chunk included"
    )
    group.add_argument("--sink-frames", type=int, help="first frames kept for ever")
    group.add_argument(
        "--positions",
        choices=("absolute", "relative"),
        help="temporal RoPE positions: 'absolute' = Self-Forcing exactly; 'relative' lays the "
        "kept frames out on consecutive positions so none leaves the trained range (default: "
        "relative; absolute for --model longlive's sink and window, as LongLive runs)",
    )
    heads = parser.add_argument_group("head_forcing (docs/head-forcing.md)")
    heads.add_argument(
        "--head-map",
        type=Path,
        help="head map JSON (default: stored, else profiled before the run)",
    )
    heads.add_argument("--local-frames", type=int, help="frames local heads keep")
    heads.add_argument("--anchor-recent-frames", type=int, help="recent frames of anchor heads")
    heads.add_argument("--working-frames", type=int, help="working memory of memory heads")
    heads.add_argument("--max-episodes", type=int, help="episodes of memory heads (0: none)")
    heads.add_argument(
        "--episode-frames", type=float, help="tokens per episode, in frames, in (0, 1]"
    )
    heads.add_argument("--novelty-threshold", type=float, help="key distance opening an episode")
    field = parser.add_argument_group("the field's methods (docs/policies.md)")
    field.add_argument(
        "--recent-frames", type=int, help="infinity_rope, deep_forcing, pyramid_forcing: recent"
    )
    field.add_argument("--budget-frames", type=int, help="deep_forcing: sink + top + recent")
    field.add_argument("--dummy-fraction", type=float, help="dummy_forcing: share of dummy heads")


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
    from headforcing.cache.policy import HeadMapPolicy
    from headforcing.heads.headmap import HeadMap

    if args.head_map is None:
        return None
    if not isinstance(policy, HeadMapPolicy):
        raise ValueError(
            f"--head-map is for --policy head_forcing, dummy_forcing or pyramid_forcing, "
            f"not {policy.name}"
        )
    head_map = HeadMap.load(args.head_map)
    preset = get_preset(args.preset or default_preset(args))
    head_map.check(preset.name, preset.model.num_layers, preset.model.num_heads)
    return head_map


def attach_head_map(policy, head_map, pipeline):
    """A head_forcing policy gets ``head_map`` (from --head-map), else the map stored for these
    weights, else the one that came with them (the toy model's), else none (then the run
    profiles one in a calibration rollout before the video and stores it)."""
    from headforcing.cache.policy import HeadMapPolicy
    from headforcing.heads.store import load_stored_map, stored_map_path

    config = pipeline.model.config
    if not isinstance(policy, HeadMapPolicy):
        return policy, "-"
    source = "--head-map"
    if head_map is None:
        head_map = load_stored_map(pipeline.preset.name, pipeline.weights_id)
        source = str(stored_map_path(pipeline.preset.name, pipeline.weights_id))
        if head_map is None and pipeline.head_map is not None:
            head_map, source = pipeline.head_map, "shipped with the weights"
        if head_map is None:
            return policy, "profiled in a calibration rollout before the run"
    head_map.check(pipeline.preset.name, config.num_layers, config.num_heads)
    return policy.with_head_map(head_map), source


def check_run_args(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    """Seed, frame size, weights and devices, checked before anything loads; the device and
    dtype."""
    from headforcing.pipeline import check_size

    seed = getattr(args, "seed", 0)
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"--seed {seed} is out of range; give an integer in 0..2**63-1")
    video = get_preset(args.preset or default_preset(args)).video
    height = video.height if args.height is None else args.height
    width = video.width if args.width is None else args.width
    try:
        check_size(height, width)
    except ValueError as error:
        raise ValueError(f"--{error}") from None
    if hasattr(args, "scale"):  # a command that writes videos: frames the encoder takes
        check_video_frames(height, width, args.scale)
    check_weights_given(args)
    if getattr(args, "model", None):
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
    video = get_preset(args.preset or default_preset(args)).video
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
    device (headforcing.resources); on CUDA say which mode and the numbers. The plan is kept in
    ``args.memory_plan`` for the loader."""
    from headforcing.resources import plan_run

    preset = get_preset(args.preset or default_preset(args))
    real = bool(getattr(args, "model", None))
    if head_map is not None:
        policy = policy.with_head_map(head_map)
    if args.command == "interactive":  # a prompt can come from the page at any chunk
        switches = True
    else:
        switches = not isinstance(prompts, str) and len(prompts.segments) > 1
    text_device = getattr(args, "text_device", None)
    height = args.height or preset.video.height
    width = args.width or preset.video.width
    scale = 1
    if hasattr(args, "scale"):
        from headforcing.io.scale import display_scale

        scale = display_scale(height, width, args.scale, real_weights=real)
    plan = plan_run(
        preset,
        height,
        width,
        dtype,
        policy,
        num_frames,
        device,
        real_weights=real,
        text_shape=real_files(args).text_encoder_shape() if real else None,
        switches=switches,
        switch_mode=switch_from_args(args) or policy.default_switch,
        mode=getattr(args, "memory_mode", "auto"),
        text_device=resolve_device(text_device, "--text-device") if text_device else None,
        keep_text_encoder=getattr(args, "keep_text_encoder", None),
        scale=scale,
    )
    args.memory_plan = plan
    if device.type == "cuda":
        print(plan.line(), file=sys.stderr)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--preset",
        help=f"one of {', '.join(sorted(PRESETS))} (default: toy, the trained toy-world model; "
        "wan2.1-t2v-1.3b with --model)",
    )
    group.add_argument(
        "--random-weights",
        action="store_true",
        help="run a preset with random weights (benchmarks, smoke tests)",
    )
    group.add_argument("--height", type=int, help="pixels, a multiple of 16 (preset default)")
    group.add_argument("--width", type=int, help="pixels, a multiple of 16 (preset default)")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    group.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", *DTYPES),
        help="auto: bfloat16 on CUDA, float32 on CPU",
    )
    group.add_argument(
        "--compile",
        nargs="?",
        const="default",
        choices=COMPILE_MODES,
        help="run the denoising and commit passes and the cache's end of chunk through "
        "torch.compile (the first chunks take longer while it compiles); reduce-overhead: "
        "replay them as CUDA graphs (CUDA)",
    )
    add_threads_argument(group)


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads of PyTorch (default: the CPUs this process may use, at most PyTorch's "
        "default; docs/threads.md)",
    )


def add_scale_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scale",
        type=parse_scale_argument,
        default="auto",
        help="show each pixel as an N x N block in the video (nearest neighbour); auto: 1 for "
        "real weights (--model) and for frames whose shorter side is at least "
        f"{MIN_DISPLAY_PIXELS} px, else the smallest N that makes it so (8 for the toy model's "
        "32 px)",
    )


def parse_scale_argument(text: str) -> int | str:
    from headforcing.io.scale import parse_scale

    try:
        return parse_scale(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix(f"--scale {text!r}: ")) from None


def add_real_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("real weights (docs/real-models.md)")
    group.add_argument(
        "--model",
        help="self-forcing, causal-forcing, longlive, causvid or diffusers: the base, its "
        "checkpoint layout and its sampler (docs/real-models.md)",
    )
    group.add_argument("--checkpoint", type=Path, help="the transformer .pt")
    group.add_argument("--wan-dir", type=Path, help="original Wan2.1-T2V-1.3B folder")
    group.add_argument("--diffusers-dir", type=Path, help="Wan2.1-T2V-1.3B-Diffusers folder")
    group.add_argument("--lora", type=Path, help="LongLive LoRA .pt, merged at load")
    group.add_argument("--lora-alpha", type=float, help="LongLive LoRA alpha (LongLive: 256)")
    group.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        help="load the 'generator_ema' weights (--ema) or 'generator' (--no-ema); default: what "
        "the base's authors load (EMA for self-forcing and causvid, not for causal-forcing and "
        "longlive)",
    )
    group.add_argument(
        "--memory-mode",
        default="auto",
        choices=("auto", *MODE_NAMES),
        help="where umT5 and the VAE's work live (docs/real-models.md, 'GPU memory'): 80gb "
        "(umT5 on the GPU, kept), 40gb (umT5 on the GPU while it encodes, then freed and read "
        "again at a prompt switch), 24gb (umT5 on the CPU), 16gb (also the VAE one latent frame "
        "per call); auto: the most generous one the GPU's free memory holds, said before loading",
    )
    group.add_argument(
        "--text-device", help="device of the umT5 encoder (default: the memory mode's)"
    )
    group.add_argument(
        "--keep-text-encoder",
        action=argparse.BooleanOptionalAction,
        help="keep umT5 loaded between prompts, or free it after each and read it again at a "
        "switch (default: the memory mode's)",
    )


def real_files(args: argparse.Namespace):
    """The real weights' files the arguments name (checked as they are named)."""
    from headforcing.io.wan_files import RealFiles

    return RealFiles(
        model=args.model,
        checkpoint=args.checkpoint,
        wan_dir=args.wan_dir,
        diffusers_dir=args.diffusers_dir,
        lora=args.lora,
        lora_alpha=args.lora_alpha,
        use_ema=args.ema,
    )


def build_pipeline(args: argparse.Namespace):
    """The pipeline the arguments name; with --compile, its passes run through torch.compile."""
    pipeline = load_pipeline(args)
    if getattr(args, "compile", None):
        pipeline.compile(args.compile)
    return pipeline


def load_pipeline(args: argparse.Namespace):
    from headforcing.pipeline import Pipeline

    model_kind = getattr(args, "model", None)
    preset = get_preset(args.preset or default_preset(args))
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if model_kind:
        from headforcing.io.wan_files import load_real_parts

        files = real_files(args)
        mode = memory_mode(args)
        if args.text_device:
            text_device = resolve_device(args.text_device, "--text-device")
        else:
            text_device = device if mode.text_on_device else torch.device("cpu")
        parts = load_real_parts(
            files,
            preset.model,
            device=device,
            dtype=dtype,
            text_device=text_device,
            keep_text_encoder=mode.keep_text_encoder,
            decode_frames_per_call=mode.decode_frames_per_call,
        )
        from headforcing.heads.store import fingerprint

        weights_id = fingerprint(files.transformer_path)
        if files.lora is not None:
            weights_id += "-" + fingerprint(files.lora)
        sampler = base_of(args).sampler
        return Pipeline(
            preset,
            *parts,
            height=args.height,
            width=args.width,
            schedule=sampler,
            weights_id=weights_id,
            real_weights=True,
        )
    if preset.name == "toy" and not args.random_weights:
        return toy_pipeline(args, device, dtype)
    check_weights_given(args)
    return Pipeline.with_standins(
        preset.name, device=device, dtype=dtype, height=args.height, width=args.width
    )


def memory_mode(args: argparse.Namespace):
    """The memory mode the plan picked (headforcing.resources), else ``--memory-mode`` (auto:
    40gb, umT5 on the GPU while it encodes, for commands that plan nothing), with the user's
    ``--keep-text-encoder``."""
    import dataclasses

    from headforcing.resources import get_mode

    plan = getattr(args, "memory_plan", None)
    if plan is not None:
        return plan.mode
    name = getattr(args, "memory_mode", "auto")
    mode = get_mode("40gb" if name == "auto" else name)
    if getattr(args, "keep_text_encoder", None) is not None:
        mode = dataclasses.replace(mode, keep_text_encoder=args.keep_text_encoder)
    return mode


def check_weights_given(args: argparse.Namespace) -> None:
    """A preset with a text encoder and a VAE runs with real weights or --random-weights."""
    preset = get_preset(args.preset or default_preset(args))
    if getattr(args, "model", None) or args.random_weights or preset.name == "toy":
        return
    if preset.has_text_encoder or preset.has_vae:
        raise ValueError(
            f"preset {preset.name!r} needs real weights: pass --model and its files "
            "(docs/real-models.md), or --random-weights to time it with random weights"
        )


def default_preset(args: argparse.Namespace) -> str:
    """The preset without --preset: Wan's shape with --model, else the toy-world model."""
    return "wan2.1-t2v-1.3b" if getattr(args, "model", None) else "toy"


def toy_pipeline(args: argparse.Namespace, device: torch.device, dtype: torch.dtype):
    """The trained toy-world model that ships with the package (32 x 32 frames)."""
    from headforcing.toyworld.pretrained import load_toy_pipeline

    size = get_preset("toy").video.height
    for name in ("height", "width"):
        value = getattr(args, name)
        if value is not None and value != size:
            raise ValueError(
                f"--{name} {value}: the toy model makes {size}x{size} frames; drop --{name}, "
                "or use --preset tiny (random weights, any size)"
            )
    pipeline = load_toy_pipeline(device)
    pipeline.model.set_dtype(dtype)
    return pipeline


def check_loaded_prompts(pipeline, prompts, where: str | None = "PROMPT") -> None:
    """Once the model is loaded, before any chunk: every prompt fits its text encoder (none
    longer than it reads), and the toy model is given toy-world prompts only. ``where``: the
    source of a single prompt (a schedule names its own file and lines)."""
    from headforcing.io.text import check_prompt

    if isinstance(prompts, str):
        check_prompt(prompts, where, pipeline.text_encoder)
    else:
        prompts.check_prompts(pipeline.text_encoder)
    check_toy_prompts(pipeline, prompts)


def check_toy_prompts(pipeline, prompts) -> None:
    """The toy model only knows toy-world prompts: refuse others before generating."""
    if pipeline.preset.name != "toy" or not pipeline.weights_id.startswith("toy-"):
        return
    from headforcing.toyworld.world import Scene

    texts = [prompts] if isinstance(prompts, str) else [s.prompt for s in prompts.segments]
    for text in texts:
        try:
            Scene.from_prompt(text)
        except ValueError as error:
            raise ValueError(
                f"{error}. The default model is the toy-world model; give --model and its files "
                "for a real one, or --preset tiny to run any prompt with random weights"
            ) from None


def add_prompt_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("prompts (docs/prompts.md)")
    group.add_argument(
        "--prompts",
        type=Path,
        help="a prompt schedule (JSONL: ours or LongLive's) instead of PROMPT",
    )
    group.add_argument(
        "--switch-frames",
        help="LongLive files: latent frames where prompts 2, 3, ... start (40,80)",
    )
    add_switch_argument(group)


def add_switch_argument(group) -> None:
    group.add_argument(
        "--switch",
        choices=SWITCH_MODES,
        default=None,
        help="what a prompt switch does to the KV cache (docs/prompts.md): cut (keep it), "
        "recache (LongLive's re-cache, global_sink true: the window re-run with the new prompt "
        "in one pass, the sink kept), recache-new-sink (the same, global_sink false: the sink "
        "rewritten), recache-causal (the window re-run chunk by chunk, causally), head-aware "
        "(recache-causal, but memory heads keep their episodes), flush (Infinity-RoPE: keep the "
        "sink and the last 2 frames, re-run nothing). Default: the policy's (flush for "
        "infinity_rope, else head-aware; recache with --model longlive)",
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
    preset = get_preset(args.preset or default_preset(args))
    video = preset.video
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


def cmd_generate(args: argparse.Namespace) -> int:
    # prepare input: all of it checked before the model loads
    out = check_video_out(args)
    device, dtype = check_run_args(args)
    num_frames = length_from_args(args)
    prompts = prompts_from_args(args)
    policy = policy_from_args(args)
    head_map = head_map_from_args(args, policy)
    check_memory(args, policy, num_frames, device, dtype, prompts, head_map)
    if args.parallel == "heads":
        return generate_by_heads(args, out, device, num_frames, prompts, policy, head_map)
    print("loading the model", file=sys.stderr, flush=True)
    pipeline = build_pipeline(args)
    check_loaded_prompts(pipeline, prompts)
    policy, head_map_source = attach_head_map(policy, head_map, pipeline)
    describe_run(args, pipeline, policy, head_map_source, num_frames, prompts)
    return write_pipeline_stream(args, pipeline, out, prompts, num_frames, policy, storer(pipeline))


def write_pipeline_stream(args, pipeline, out, prompts, num_frames, policy, on_head_map) -> int:
    """Denoise, decode, write, chunk by chunk (decode and write beside the next chunk)."""
    from headforcing.io.provenance import run_metadata
    from headforcing.io.scale import display_scale

    def stream(write):
        return pipeline.stream(
            prompts,
            num_frames,
            policy,
            seed=args.seed,
            on_head_map=on_head_map,
            switch=switch_from_args(args),
            write=write,
        )

    def speed(frames: int, dit_seconds: float, wall_seconds: float) -> str:
        from headforcing.speed import run_speed

        return run_speed(pipeline, frames, dit_seconds, wall_seconds).line()

    return write_stream(
        stream,
        out,
        pipeline.preset.video.fps,
        num_frames,
        args.overwrite,
        speed=speed,
        scale=display_scale(
            pipeline.height, pipeline.width, args.scale, real_weights=pipeline.real_weights
        ),
        metadata=run_metadata(pipeline, prompts, args.seed, policy, num_frames),
    )


def storer(pipeline):
    """Stores a head map profiled before a run, for the next runs on these weights."""
    from headforcing.heads.store import store_map

    def on_head_map(head_map) -> None:
        path = store_map(head_map, pipeline.weights_id)
        counts = ", ".join(f"{k} {v}" for k, v in head_map.counts().items())
        print(f"head map fixed ({counts}), saved to {path}", file=sys.stderr)

    return on_head_map


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
            f"{switch_from_args(args) or policy.default_switch}",
            file=sys.stderr,
        )


def generate_by_heads(args, out: Path, device, num_frames: int, prompts, policy, head_map) -> int:
    """``generate --parallel heads``: one stream over the ranks of a torchrun launch, each rank
    holding its heads' K/V; every rank runs the same chunk loop, rank 0 decodes and writes."""
    from headforcing.distributed import HeadParallel, backend_for, join_world, launched

    if not launched():
        raise ValueError(
            "--parallel heads runs under torchrun: torchrun --nproc_per_node 2 -m headforcing "
            "generate ... --parallel heads"
        )
    if args.compile:
        raise ValueError("--parallel heads runs eagerly; drop --compile")
    world = join_world(backend_for(device))
    try:
        args.device = str(world.device(device))
        if world.is_main:
            print(f"loading the model on {world.size} ranks", file=sys.stderr, flush=True)
        pipeline = build_pipeline(args)
        check_loaded_prompts(pipeline, prompts)
        policy, source = attach_head_map(policy, head_map, pipeline)
        if getattr(policy, "head_map", "-") is None:  # a head-map policy without one
            # every rank profiles the same map (same prompt, seed, weights): nothing to send
            profiled = pipeline.calibrate(prompts, args.seed)
            if world.is_main:
                storer(pipeline)(profiled)
            policy = policy.with_head_map(profiled)
        parallel = HeadParallel(pipeline, world)
        assignment = parallel.assign(policy)  # refuses more ranks than heads, before any pass
        pipeline.parallel = parallel
        if world.is_main:
            describe_run(args, pipeline, policy, source, num_frames, prompts)
            print(f"heads over {world.size} ranks:\n{assignment.report()}", file=sys.stderr)
            status = write_pipeline_stream(
                args, pipeline, out, prompts, num_frames, policy, on_head_map=None
            )
            cache_bytes = parallel.cache_bytes
        else:  # the same passes, no decoding
            cache = pipeline.new_cache(policy)
            switch = switch_from_args(args)
            for _ in pipeline.generate_latents(prompts, num_frames, cache, args.seed, switch):
                pass
            status, cache_bytes = 0, cache.bytes_held()
        print(f"rank {world.rank}: K/V held {cache_bytes / 2**20:.2f} MiB", file=sys.stderr)
        return status
    finally:
        world.close()


BATCH_POLICY_PARAMS = ("window_frames", "sink_frames", "positions")


def add_batch_policy_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cache policies (docs/policies.md)")
    group.add_argument("--window-frames", type=int, help="window/sink: frames attended")
    group.add_argument("--sink-frames", type=int, help="sink/head_forcing: first frames kept")
    group.add_argument(
        "--positions", choices=("absolute", "relative"), help="temporal RoPE positions"
    )
    group.add_argument(
        "--head-map",
        type=Path,
        help="head_forcing: head map JSON (default: stored, else profiled once on the first item)",
    )


def batch_policy(args: argparse.Namespace, name: str):
    """Policy ``name`` with the options of --window-frames/--sink-frames/--positions it takes."""
    from headforcing.cache.policies import policy_class

    fields = policy_class(name).__dataclass_fields__  # unknown: the error lists valid names
    params = {key: getattr(args, key) for key in BATCH_POLICY_PARAMS if key in fields}
    base = base_of(args)
    if base is not None:  # the base's defaults, as generate uses them
        from headforcing.bases import base_policy

        return base_policy(base, name, **params)
    return make_policy(name, **params)


def batch_lengths(args: argparse.Namespace, default_frames: int):
    """``frames_of(item)``: an item's latent frames (its seconds/frames, else the options'),
    checked against its schedule."""
    from headforcing.pipeline import latent_frames_for_seconds

    video = get_preset(args.preset or default_preset(args)).video

    def frames_of(item) -> int:
        where = f"{args.prompts} line {item.line}"
        frames = default_frames
        if item.frames is not None:
            frames = item.frames
        elif item.seconds is not None:
            frames = latent_frames_for_seconds(item.seconds, video.fps, video.vae_stride[0])
        if not 1 <= frames <= MAX_LATENT_FRAMES:
            raise ValueError(f"{where}: {frames} latent frames; give 1..{MAX_LATENT_FRAMES}")
        if not isinstance(item.prompt, str):
            item.prompt.check_length(frames)
        return frames

    return frames_of


def check_out_dir(path: Path) -> Path:
    """Refuse an output folder that is a file or cannot be written; create it."""
    import tempfile

    if path.exists() and not path.is_dir():
        raise ValueError(f"--out-dir {path} is a file; give a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise ValueError(f"--out-dir {path}: cannot write there ({error.strerror})") from None
    return path


def cmd_batch(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from headforcing.batch import check_outputs, expand_jobs, read_items, run_batch
    from headforcing.distributed import join_world
    from headforcing.schedule import FrameClock

    # prepare input: the file, the policies, the lengths; all checked before the model loads
    device, _ = check_run_args(args)
    video = get_preset(args.preset or default_preset(args)).video
    clock = FrameClock(video.fps, video.vae_stride[0], video.chunk_frames)
    items = read_items(args.prompts, clock)
    policies = {name: batch_policy(args, name) for name in dict.fromkeys(args.policies)}
    for item in items:
        for name in item.policies or ():
            try:
                policies.setdefault(name, batch_policy(args, name))
            except ValueError as error:
                raise ValueError(f"{args.prompts} line {item.line}: {error}") from None
    for key in BATCH_POLICY_PARAMS:
        takers = [name for name in policies if key in type(policies[name]).__dataclass_fields__]
        if getattr(args, key) is not None and not takers:
            option = "--" + key.replace("_", "-")
            raise ValueError(f"{option} applies to none of the policies {', '.join(policies)}")
    head_map = None
    if args.head_map is not None:
        if "head_forcing" not in policies:
            raise ValueError("--head-map is for head_forcing; add it to --policies")
        head_map = head_map_from_args(args, policies["head_forcing"])
    jobs = expand_jobs(items, args.policies, args.seed, batch_lengths(args, length_from_args(args)))
    out_dir = check_out_dir(args.out_dir)
    check_outputs(out_dir, jobs, args.overwrite)

    # the ranks: only control messages pass between them (gloo); the last rank may finish
    # hours after the first, so the final barrier waits long
    world = join_world("gloo", timeout=timedelta(days=7))
    try:
        args.device = str(world.device(device))
        pipeline = build_pipeline(args)
        for item in items:
            check_loaded_prompts(pipeline, item.prompt, f"{args.prompts} line {item.line}")
        for name, policy in policies.items():
            policy, source = attach_head_map(policy, head_map, pipeline)
            if getattr(policy, "head_map", "-") is None:  # a head-map policy without one
                # once, on the first item, the same on every rank: every video gets one map
                profiled = pipeline.calibrate(items[0].prompt, args.seed)
                if world.is_main:
                    storer(pipeline)(profiled)
                policy, source = policy.with_head_map(profiled), "profiled on the first item"
            if world.is_main and source != "-":
                print(f"head map: {source}", file=sys.stderr)
            policies[name] = policy
        dtype_name = str(pipeline.model.dtype).removeprefix("torch.")
        settings = {
            "preset": pipeline.preset.name,
            "height": pipeline.height,
            "width": pipeline.width,
            "fps": video.fps,
            "dtype": dtype_name,
            "switch": switch_from_args(args),
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
            switch_from_args(args),
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


def write_stream(
    make_stream,
    out: Path,
    fps: int,
    num_frames: int,
    overwrite: bool,
    scale: int = 1,
    metadata: dict | None = None,
    speed: Callable[[int, float, float], str] | None = None,
) -> int:
    """Write the chunks of ``make_stream(write)`` to ``out`` as they come; the exit status.

    ``speed(frames, dit_seconds, wall_seconds)``: the last line printed (headforcing.speed).

    The stream writes each chunk in its worker thread (beside the next chunk's generation),
    which signals never interrupt; the stream finishes the chunk in its worker however it
    ends, before the file is closed. A stop signal waits while the file is closed (a second
    one, too), so the file always ends on a whole chunk; the run then exits with 130 or 143.
    A run that ends as planned leaves a plain MP4, a stopped one the fragmented file of its
    finished chunks, one stopped before its first chunk no file (:mod:`headforcing.io.video`).
    """
    from headforcing.interrupts import deferred_interrupt, exit_code
    from headforcing.io.video import VideoWriter

    progress = ChunkProgress(num_frames)
    began = time.perf_counter()
    writer = VideoWriter(out, fps=fps, overwrite=overwrite, scale=scale, metadata=metadata)
    stop = None
    complete = False
    stream = make_stream(lambda chunk: writer.write(chunk.frames[0]))
    dit_seconds, first_started = 0.0, None
    try:
        last_prompt = None
        written = 0
        for chunk in stream:
            dit_seconds += chunk.dit_seconds
            first_started = first_started or chunk.started_at
            if last_prompt is not None and chunk.prompt != last_prompt:
                progress.note(f"latent frame {chunk.first_frame}: {chunk.prompt!r}")
            last_prompt = chunk.prompt
            written += chunk.frames.shape[1]
            progress.chunk_written(chunk, written)
        complete = True
    except KeyboardInterrupt as error:
        stop = error
    finally:
        try:
            with deferred_interrupt():
                stream.close()  # the chunk in the worker is written first
        except KeyboardInterrupt as error:
            stop = stop or error
        progress.close()
        try:
            with deferred_interrupt():
                if complete and stop is None:
                    writer.finish()  # the whole video, rewritten as a plain MP4
                else:
                    writer.close()  # the finished chunks, as a fragmented MP4
        except KeyboardInterrupt as error:
            stop = stop or error
    seconds = time.perf_counter() - began
    frames = writer.frames_written
    if frames == 0 and stop is not None:  # stopped before the first chunk: no file was made
        print(
            f"interrupted ({stop}) before the first chunk: nothing was written to {out}; the "
            "same command runs again",
            file=sys.stderr,
        )
        return exit_code(stop)
    print(
        f"wrote {out} ({frames} frames, {frames / fps:.1f} s of video) in {seconds:.1f} s: "
        f"{frames / seconds:.1f} frames/s",
        file=sys.stderr,
    )
    if stop is not None:
        print(
            f"interrupted ({stop}): kept {frames} finished frames (a fragmented MP4: it plays, "
            "and --overwrite replaces it)",
            file=sys.stderr,
        )
    if speed is not None and first_started is not None:
        print(speed(frames, dit_seconds, time.perf_counter() - first_started), file=sys.stderr)
    return 0 if stop is None else exit_code(stop)


class ChunkProgress:
    """A progress bar on a terminal; elsewhere (a log, a pipe) one line per written chunk, so
    that whoever reads the log knows what the file on disk holds."""

    def __init__(self, num_frames: int) -> None:
        from tqdm import tqdm

        self.bar = None
        if sys.stderr.isatty():
            self.bar = tqdm(total=num_frames, unit="frame", desc="generating", file=sys.stderr)
        self.num_frames = num_frames
        self.chunks = 0

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def chunk_written(self, chunk, frames_written: int) -> None:
        self.chunks += 1
        done = chunk.first_frame + chunk.latents.shape[2]
        if self.bar is not None:
            self.bar.update(chunk.latents.shape[2])
            self.bar.set_postfix(kv_mib=f"{chunk.kv_bytes / 2**20:.1f}", max_pos=chunk.max_position)
        else:
            print(
                f"chunk {self.chunks} written: latent frames {done}/{self.num_frames}, "
                f"{frames_written} frames, K/V {chunk.kv_bytes / 2**20:.1f} MiB",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_interactive(args: argparse.Namespace) -> int:
    from headforcing.heads.store import store_map
    from headforcing.interactive import LiveServer, LiveSession
    from headforcing.interrupts import deferred_interrupt, exit_code
    from headforcing.io.provenance import run_metadata
    from headforcing.io.scale import display_scale
    from headforcing.io.text import check_prompt

    # prepare input: the arguments, then the port (bound now: a busy port fails before loading)
    out = check_video_out(args)
    check_prompt(args.prompt, "PROMPT")
    device, dtype = check_run_args(args)
    num_frames = length_from_args(args)
    policy = policy_from_args(args)
    head_map = head_map_from_args(args, policy)
    check_memory(args, policy, num_frames, device, dtype, args.prompt, head_map)
    server = LiveServer.bind(args.port)
    try:
        pipeline = build_pipeline(args)
        check_loaded_prompts(pipeline, args.prompt)
        policy, _ = attach_head_map(policy, head_map, pipeline)
        session = LiveSession(
            pipeline,
            policy,
            args.prompt,
            num_frames,
            out,
            seed=args.seed,
            switch=switch_from_args(args),
            pace=not args.no_pace,
            overwrite=args.overwrite,
            on_head_map=lambda head_map: store_map(head_map, pipeline.weights_id),
            check_prompt=lambda prompt: check_loaded_prompts(pipeline, prompt, where=None),
            scale=display_scale(
                pipeline.height, pipeline.width, args.scale, real_weights=pipeline.real_weights
            ),
            metadata=run_metadata(pipeline, args.prompt, args.seed, policy, num_frames),
        )
    except BaseException:
        server.server_close()
        raise
    server.start(session)
    print(f"open {server.url} (video: {out}; Ctrl-C stops)", flush=True)
    # generate in the worker until done or stopped; the page stays up until Ctrl-C
    session.start()
    stop = None
    try:
        while session.running:
            session.join(0.25)
        if not args.exit_when_done:
            print("generation finished; the page stays up until Ctrl-C", file=sys.stderr)
            while True:
                time.sleep(1)
    except KeyboardInterrupt as error:
        stop = error if session.running else None  # a stop after the run ended is the normal end
        print("stopping after the chunk in progress", file=sys.stderr)
    finally:
        session.stop()
        try:
            with deferred_interrupt():  # the worker closes the video: let it finish the tail
                session.join()
        except KeyboardInterrupt as error:
            stop = stop or error
        server.shutdown()
        server.server_close()
    state = session.state()
    if state["frames_written"] == 0:  # stopped or failed before the first chunk: no file
        print(f"nothing was written to {out}: no chunk was finished", file=sys.stderr)
    else:
        print(
            f"wrote {out} ({state['frames_written']} frames, {len(state['switches'])} prompt "
            "switches)",
            file=sys.stderr,
        )
    if state["error"]:
        print(f"headforcing interactive: error: {state['error']}", file=sys.stderr)
        return 1
    return exit_code(stop) if stop is not None else 0


def bench_head_map(pipeline, path: Path | None):
    """--head-map, else a map profiled on the benchmark's own model (one 21-frame rollout)."""
    from headforcing.heads.headmap import HeadMap
    from headforcing.heads.profile import profile_heads

    if path is not None:
        return HeadMap.load(path)
    print("profiling the benchmark model for a head map (one rollout)", file=sys.stderr)
    return profile_heads(pipeline, ["a calibration prompt"])


def cmd_bench(args: argparse.Namespace) -> int:
    from headforcing.bench import (
        BenchRow,
        bench_decode,
        bench_plain_pass,
        bench_policy,
        estimated_full_bytes,
        format_table,
        with_decode,
        write_json,
    )

    args.random_weights = True
    for seconds in args.seconds:
        if not (math.isfinite(seconds) and 0 < seconds <= 3600):
            raise ValueError(f"--seconds {seconds:g}: give lengths in (0, 3600] seconds")
    check_run_args(args)
    if args.json is not None:
        from headforcing.io.files import check_output_path

        check_output_path(args.json, option="--json", overwrite=args.overwrite, suffixes=(".json",))
    if args.head_map is not None and "head_forcing" in args.policies:
        from headforcing.heads.headmap import HeadMap

        HeadMap.load(args.head_map)  # a bad file fails now, not after the first rows
    pipeline = build_pipeline(args)
    if args.random_vae:
        from diffusers import AutoencoderKLWan

        from headforcing.io.wan_vae import WanVAEDecoder

        device, dtype = pipeline.model.device, pipeline.model.dtype
        pipeline.decoder = WanVAEDecoder(AutoencoderKLWan(), device=device, dtype=dtype)
    device = pipeline.model.device
    video = pipeline.preset.video
    pixel_frames = video.chunk_frames * video.vae_stride[0]
    decode_ms = bench_decode(pipeline, timed_chunks=args.chunks)  # every row says both rates
    rows, head_map = [], None
    for name in args.policies:
        policy = make_policy(name, positions=args.positions)
        if getattr(policy, "head_map", "-") is None:  # a head-map policy: one map for all
            head_map = head_map or bench_head_map(pipeline, args.head_map)
            policy = policy.with_head_map(head_map)
        for seconds in args.seconds:
            frames = pipeline.latent_frames(seconds)
            if name == "full" and device.type == "cuda":
                need = estimated_full_bytes(pipeline, frames)
                free = torch.cuda.mem_get_info(device)[0]
                if need > 0.8 * free:
                    note = f"skipped: needs ~{need / 2**30:.0f} GiB of K/V, {free / 2**30:.0f} free"
                    rows.append(
                        BenchRow(policy.describe(), seconds, frames, 0, 0, 0, 0, 0, note=note)
                    )
                    continue
            row = bench_policy(pipeline, policy, seconds, timed_chunks=args.chunks)
            rows.append(with_decode(row, decode_ms, pixel_frames))
            row = rows[-1]
            print(
                f"{row.policy:>28} {seconds:>5g} s: {row.ms_per_chunk:8.1f} ms/chunk, "
                f"{row.frames_per_second:.1f} frames/s DiT only, "
                f"{row.end_to_end_frames_per_second:.1f} end to end (decode beside), "
                f"{row.syncs_per_chunk} host reads/chunk",
                file=sys.stderr,
            )
    from headforcing.speed import device_name

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


def cmd_profile(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from headforcing.heads.plot import plot_head_map
    from headforcing.heads.profile import ProfileSettings, profile_heads
    from headforcing.heads.store import store_map
    from headforcing.io.text import check_prompt

    sources = [(check_prompt(prompt, "PROMPT"), "PROMPT") for prompt in args.prompt]
    if args.prompts is not None:
        lines = read_text_file(args.prompts, "--prompts").splitlines()
        for number, line in enumerate(lines, start=1):
            if line.strip():
                where = f"{args.prompts} line {number}"
                sources.append((check_prompt(line.strip(), where), where))
    prompts = [prompt for prompt, _ in sources]
    if not prompts:
        raise ValueError("give prompts: PROMPT arguments or --prompts FILE (one per line)")
    out, png = check_report_outs(args)
    check_run_args(args)
    settings = ProfileSettings(
        chunks=tuple(args.chunks), query_rows=args.query_rows, frames=args.frames
    )
    pipeline = build_pipeline(args)
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


def read_text_file(path: Path, option: str) -> str:
    """A UTF-8 text file named by ``option``, with one-line errors that name it."""
    from headforcing.io.files import read_text

    return read_text(path, option)


def cmd_recall(args: argparse.Namespace) -> int:
    from headforcing.heads.recall import measure_recall
    from headforcing.io.text import check_prompt

    check_prompt(args.prompt, "PROMPT")
    out, png = check_report_outs(args)
    check_run_args(args)
    pipeline = build_pipeline(args)
    check_loaded_prompts(pipeline, args.prompt)
    video = pipeline.preset.video
    policies, labels = {}, None
    for name in args.policies:
        policy = make_policy(name, positions=args.positions)
        policy, _ = attach_head_map(policy, None, pipeline)
        if getattr(policy, "head_map", "-") is None:
            policy = policy.with_head_map(pipeline.calibrate(args.prompt, args.seed))
        if getattr(policy, "head_map", None) is not None and labels is None:
            labels = [list(row) for row in policy.head_map.labels]
        policies[policy.describe()] = policy
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


def cmd_demo(args: argparse.Namespace) -> int:
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


def cmd_eval(args: argparse.Namespace) -> int:
    import av

    from headforcing.eval.plot import plot_over_time
    from headforcing.eval.report import evaluate, format_table, write_json
    from headforcing.eval.segments import sources
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
            results += [evaluate(video, args.segment_frames) for video in sources(path)]
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


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="headforcing",
        description="Long autoregressive video generation with a KV cache per head type.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

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
    generate.set_defaults(run=cmd_generate)

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
    batch.set_defaults(run=cmd_batch)

    interactive = commands.add_parser(
        "interactive", help="a local web page that shows the video as it grows, takes prompts"
    )
    interactive.add_argument("prompt", help="the first prompt")
    length = interactive.add_mutually_exclusive_group()
    length.add_argument("--seconds", type=float, default=60.0, help="run length")
    length.add_argument("--frames", type=int, help=f"run length in {FRAMES_HELP}")
    interactive.add_argument(
        "--port", type=int, default=8000, help="on 127.0.0.1; 0: any free port"
    )
    interactive.add_argument("--out", default="interactive.mp4", help="the growing MP4")
    interactive.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    interactive.add_argument("--seed", type=int, default=0, help="seed of the sampler's noise")
    add_scale_argument(interactive)
    interactive.add_argument(
        "--no-pace", action="store_true", help="generate as fast as possible, not in real time"
    )
    interactive.add_argument(
        "--exit-when-done", action="store_true", help="stop the server when the run is done"
    )
    add_switch_argument(interactive.add_argument_group("prompt switch"))
    add_model_arguments(interactive)
    add_real_model_arguments(interactive)
    add_policy_arguments(interactive)
    interactive.set_defaults(run=cmd_interactive)

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
    demo.set_defaults(run=cmd_demo)

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
    profile.set_defaults(run=cmd_profile)

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
    evaluate.set_defaults(run=cmd_eval)

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
    bench.set_defaults(run=cmd_bench)

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
    recall.set_defaults(run=cmd_recall)
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


if __name__ == "__main__":
    raise SystemExit(main())
