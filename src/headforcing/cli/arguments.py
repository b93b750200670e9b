"""The command line's arguments: the parser (errors on one line, every default in ``--help``)
and the groups of options the commands share (model, real weights, policy, prompts, scale)."""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch

from headforcing.cache.policies import POLICIES
from headforcing.io.scale import MIN_DISPLAY_PIXELS
from headforcing.model.config import PRESETS
from headforcing.pipeline import COMPILE_MODES
from headforcing.resources import MODE_NAMES
from headforcing.switch import SWITCH_MODES

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MAX_SEED = 2**63 - 1
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
