"""What every checkpoint reader of :mod:`headforcing.io.checkpoints` shares: the layouts it
names in errors, the safe read of a pickle, finding the generator's state dict in it, Wan names
from wrapped ones, a diffusers folder's weight files, and the listing of names in a message."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

from headforcing.io.keymap import drop_wrapper_segments, strip_prefixes
from headforcing.io.safe_load import PICKLE_SUFFIXES, load_weights_file

StateDict = dict[str, torch.Tensor]

# How many names an error message shows per category.
SHOWN = 8

SELF_FORCING_LAYOUT = (
    "a torch pickle {'generator': state_dict, 'generator_ema': state_dict, ...} "
    "with 'model.<wan name>' keys (Self-Forcing's self_forcing_dmd.pt)"
)
CAUSAL_FORCING_LAYOUT = (
    "a torch pickle {'generator': state_dict, 'generator_ema': state_dict, ...} "
    "with 'model.<wan name>' or 'model._fsdp_wrapped_module.<wan name>' keys "
    "(Causal Forcing's chunkwise/causal_forcing.pt)"
)
CAUSVID_LAYOUT = (
    "a torch pickle {'generator': state_dict, ...} or a bare state dict, "
    "with 'model.<wan name>' keys (CausVid's model.pt)"
)
LONGLIVE_LORA_LAYOUT = (
    "a torch pickle {'generator_lora': peft_state_dict, ...} or a bare PEFT state dict with "
    "'base_model.model.<layer>.lora_A.weight' / '.lora_B.weight' keys (LongLive's lora.pt)"
)
DIFFUSERS_LAYOUT = (
    "a diffusers transformer/ folder with diffusion_pytorch_model.safetensors "
    "(or shards listed in diffusion_pytorch_model.safetensors.index.json)"
)


def torch_load(path: Path, layout: str) -> object:
    """``torch.load`` of tensors and plain containers only; memory-mapped for zip files."""
    if path.is_dir():
        raise ValueError(
            f"{path} is a folder, expected {layout}; a diffusers transformer/ folder loads "
            "with kind='diffusers'"
        )
    return load_weights_file(path, layout)


def is_tensor_mapping(value: object) -> bool:
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(tensor, torch.Tensor) for tensor in value.values())
    )


def top_level(checkpoint: object) -> str:
    if not isinstance(checkpoint, Mapping):
        return f"the file holds a {type(checkpoint).__name__}"
    keys = [repr(key) for key in checkpoint]
    shown = ", ".join(keys[:16]) + (", ..." if len(keys) > 16 else "")
    return f"top-level keys: {shown or 'none'}"


def generator_state_dict(checkpoint: object, path: Path, use_ema: bool, layout: str) -> StateDict:
    """The ``generator_ema`` (when wanted and present) or ``generator`` state dict."""
    wanted = ("generator_ema", "generator") if use_ema else ("generator",)
    if isinstance(checkpoint, Mapping):
        for key in wanted:
            if isinstance(checkpoint.get(key), Mapping):
                return dict(checkpoint[key])
    names = " or ".join(repr(key) for key in wanted)
    advice = ""
    if not use_ema and isinstance(checkpoint, Mapping) and "generator_ema" in checkpoint:
        advice = "; use_ema=True loads its 'generator_ema'"
    raise ValueError(
        f"{path} has no {names} state dict ({top_level(checkpoint)}){advice}; expected {layout}"
    )


def wan_names(state_dict: StateDict, path: Path) -> StateDict:
    renamed = strip_prefixes(drop_wrapper_segments(state_dict))
    if len(renamed) != len(state_dict):
        raise ValueError(
            f"{path}: several tensors share one name once wrapper prefixes are removed"
        )
    return renamed


def diffusers_weight_files(folder: Path, *, required: bool) -> list[Path]:
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            names = sorted(set(weight_map.values()))
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
            raise ValueError(
                f'{index} is not a safetensors index (JSON with a "weight_map"); '
                f"expected {DIFFUSERS_LAYOUT}"
            ) from None
        shards = [folder / str(name) for name in names]
        missing = [shard.name for shard in shards if not shard.is_file()]
        if missing:
            raise ValueError(f"{index} lists shards that are missing: {', '.join(missing[:4])}")
        return shards
    single = folder / "diffusion_pytorch_model.safetensors"
    if single.is_file():
        return [single]
    variants = sorted(folder.glob("diffusion_pytorch_model*.safetensors"))
    if len(variants) == 1 or not required:
        return variants
    found = ", ".join(sorted(entry.name for entry in folder.iterdir())[:16]) or "nothing"
    if any(entry.suffix in PICKLE_SUFFIXES for entry in folder.iterdir()) and not variants:
        raise ValueError(
            f"{folder} holds pickle weights and no .safetensors (found: {found}): a pickle can "
            f"run code, so diffusers folders load from safetensors only; expected "
            f"{DIFFUSERS_LAYOUT}"
        )
    reason = "several weight files, none of them the default" if variants else "no weights"
    raise ValueError(f"{folder} has {reason} (found: {found}); expected {DIFFUSERS_LAYOUT}")


def listed(names: list[str], what: str) -> str:
    shown = ", ".join(names[:SHOWN]) + (", ..." if len(names) > SHOWN else "")
    return f"{len(names)} {what} ({shown})"
