"""Loading a pipeline by name or by path: the toy-world model (the default), a preset with
random weights, or a real model's files (Self-Forcing, Causal Forcing, LongLive, CausVid, a
diffusers folder; docs/real-models.md). The command line loads through :func:`load_pipeline`,
and so can a program::

    import headforcing as hf

    pipe = hf.load_pipeline(
        model="self-forcing",
        checkpoint="checkpoints/self_forcing_dmd.pt",
        wan_dir="wan_models/Wan2.1-T2V-1.3B",
        device="cuda",
    )
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from headforcing.model.config import get_preset

if TYPE_CHECKING:
    from headforcing.io.wan_files import RealFiles
    from headforcing.pipeline import Pipeline
    from headforcing.resources import MemoryMode, MemoryPlan


def default_preset(model: str | None = None) -> str:
    """The preset without --preset: Wan's shape with --model, else the toy-world model."""
    return "wan2.1-t2v-1.3b" if model else "toy"


def default_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on CUDA, float32 on the CPU (``--dtype auto``)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def check_weights_given(
    preset: str, *, model: str | None = None, random_weights: bool = False
) -> None:
    """A preset with a text encoder and a VAE runs with real weights or --random-weights."""
    preset = get_preset(preset)
    if model or random_weights or preset.name == "toy":
        return
    if preset.has_text_encoder or preset.has_vae:
        raise ValueError(
            f"preset {preset.name!r} needs real weights: pass --model and its files "
            "(docs/real-models.md), or --random-weights to time it with random weights"
        )


def pick_memory_mode(
    plan: MemoryPlan | None = None, name: str = "auto", keep_text_encoder: bool | None = None
) -> MemoryMode:
    """The memory mode the plan picked (headforcing.resources), else ``name`` (auto: 40gb,
    umT5 on the GPU while it encodes, for commands that plan nothing), with the user's
    ``keep_text_encoder``."""
    import dataclasses

    from headforcing.resources import get_mode

    if plan is not None:
        return plan.mode
    mode = get_mode("40gb" if name == "auto" else name)
    if keep_text_encoder is not None:
        mode = dataclasses.replace(mode, keep_text_encoder=keep_text_encoder)
    return mode


def load_pipeline(
    *,
    model: str | None = None,
    preset: str | None = None,
    checkpoint: str | Path | None = None,
    wan_dir: str | Path | None = None,
    diffusers_dir: str | Path | None = None,
    lora: str | Path | None = None,
    lora_alpha: float | None = None,
    ema: bool | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    height: int | None = None,
    width: int | None = None,
    random_weights: bool = False,
    memory_plan: MemoryPlan | None = None,
    memory_mode: str = "auto",
    text_device: torch.device | str | None = None,
    keep_text_encoder: bool | None = None,
    compile: str | None = None,
) -> Pipeline:
    """A pipeline, loaded as the command line's options name it.

    Parameters
    ----------
    model:
        A base (``self-forcing``, ``causal-forcing``, ``longlive``, ``causvid`` or
        ``diffusers``, :mod:`headforcing.bases`): its checkpoint layout, sampler and EMA
        choice. ``None``: the toy-world model, or ``preset`` with random weights.
    preset:
        The model's shape (default: ``wan2.1-t2v-1.3b`` with ``model``, else ``toy``).
    checkpoint, wan_dir, diffusers_dir, lora, lora_alpha, ema:
        A real model's files and choices (:class:`~headforcing.io.wan_files.RealFiles`),
        checked before anything loads.
    device, dtype:
        Where the transformer runs, in which dtype (default: bfloat16 on CUDA, float32 on the
        CPU).
    height, width:
        Pixels, multiples of 16 (default: the preset's).
    random_weights:
        Run a preset that has a text encoder and a VAE with random weights and stand-ins
        (benchmarks, smoke tests); the toy preset with random weights, too.
    memory_plan, memory_mode, text_device, keep_text_encoder:
        Where umT5 and the VAE's work live (real weights): the plan's mode
        (:func:`headforcing.planning.plan_run_memory`), else the named one; ``text_device``
        and ``keep_text_encoder`` override the mode's.
    compile:
        A :data:`~headforcing.pipeline.COMPILE_MODES` mode: the passes run through
        ``torch.compile``.
    """
    from headforcing.pipeline import Pipeline

    if not model:
        real = {"checkpoint": checkpoint, "wan_dir": wan_dir, "diffusers_dir": diffusers_dir}
        real |= {"lora": lora, "lora_alpha": lora_alpha, "ema": ema}
        given = [name for name, value in real.items() if value is not None]
        if given:
            from headforcing.bases import BASES

            raise ValueError(
                f"{given[0]}= names a real model's files: give model= too (one of "
                f"{', '.join(BASES)})"
            )
    preset = get_preset(preset or default_preset(model))
    device = torch.device(device)
    dtype = dtype or default_dtype(device)
    if model:
        pipeline = real_pipeline(
            real_files(model, checkpoint, wan_dir, diffusers_dir, lora, lora_alpha, ema),
            preset.name,
            device=device,
            dtype=dtype,
            height=height,
            width=width,
            mode=pick_memory_mode(memory_plan, memory_mode, keep_text_encoder),
            text_device=text_device,
        )
    elif preset.name == "toy" and not random_weights:
        pipeline = toy_pipeline(device, dtype, height=height, width=width)
    else:
        check_weights_given(preset.name, model=model, random_weights=random_weights)
        pipeline = Pipeline.with_standins(
            preset.name, device=device, dtype=dtype, height=height, width=width
        )
    if compile:
        pipeline.compile(compile)
    return pipeline


def real_files(
    model: str,
    checkpoint: str | Path | None = None,
    wan_dir: str | Path | None = None,
    diffusers_dir: str | Path | None = None,
    lora: str | Path | None = None,
    lora_alpha: float | None = None,
    ema: bool | None = None,
) -> RealFiles:
    """The real weights' files of ``model`` (checked as they are named)."""
    from headforcing.io.wan_files import RealFiles

    def path(value):
        return None if value is None else Path(value)

    return RealFiles(
        model=model,
        checkpoint=path(checkpoint),
        wan_dir=path(wan_dir),
        diffusers_dir=path(diffusers_dir),
        lora=path(lora),
        lora_alpha=lora_alpha,
        use_ema=ema,
    )


def real_pipeline(
    files: RealFiles,
    preset: str,
    *,
    device: torch.device,
    dtype: torch.dtype,
    height: int | None,
    width: int | None,
    mode: MemoryMode,
    text_device: torch.device | str | None = None,
) -> Pipeline:
    """A real model's pipeline from ``files``, its sampler the base's; umT5 and the VAE as
    ``mode`` says (``text_device``: the user's, else the mode's)."""
    from headforcing.bases import get_base
    from headforcing.heads.store import fingerprint
    from headforcing.io.wan_files import load_real_parts
    from headforcing.pipeline import Pipeline

    preset = get_preset(preset)
    if text_device is not None:
        text_device = torch.device(text_device)
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
    weights_id = fingerprint(files.transformer_path)
    if files.lora is not None:
        weights_id += "-" + fingerprint(files.lora)
    return Pipeline(
        preset,
        *parts,
        height=height,
        width=width,
        schedule=get_base(files.model).sampler,
        weights_id=weights_id,
        real_weights=True,
    )


def toy_pipeline(
    device: torch.device, dtype: torch.dtype, *, height: int | None = None, width: int | None = None
) -> Pipeline:
    """The trained toy-world model that ships with the package (32 x 32 frames)."""
    from headforcing.toyworld.pretrained import load_toy_pipeline

    size = get_preset("toy").video.height
    for name, value in (("height", height), ("width", width)):
        if value is not None and value != size:
            raise ValueError(
                f"--{name} {value}: the toy model makes {size}x{size} frames; drop --{name}, "
                "or use --preset tiny (random weights, any size)"
            )
    pipeline = load_toy_pipeline(device)
    pipeline.model.set_dtype(dtype)
    return pipeline
