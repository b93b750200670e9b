"""Building the causal Wan transformer from Wan-named tensors, strictly: the model on the meta
device takes the tensors as its parameters, after the checks that list every missing, unexpected
and mis-shaped name with the sizes the checkpoint shows and a hint at what it is.
:mod:`headforcing.io.checkpoints` reads each checkpoint kind into such tensors."""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from headforcing.io.checkpoint_files import listed
from headforcing.model.config import WanConfig
from headforcing.model.transformer import WanModel


def model_from_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    config: WanConfig,
    *,
    source: str = "the state dict",
    kind: str | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.bfloat16,
) -> WanModel:
    """A :class:`WanModel` whose parameters are ``state_dict``'s tensors (Wan names), strictly.

    The model is built on the meta device and takes the tensors as its parameters (no second
    copy, memory-mapped tensors stay mapped until cast); then :meth:`WanModel.set_dtype` casts
    to ``dtype`` (modulation, time embedding and norm3 stay float32) and it moves to ``device``.

    Raises
    ------
    ValueError
        If names are missing or unexpected, or shapes differ from ``config``'s, all listed in
        one message with the checkpoint's apparent size.
    """
    not_tensors = [
        name for name, value in state_dict.items() if not isinstance(value, torch.Tensor)
    ]
    if not_tensors:
        raise ValueError(f"{source}: {listed(not_tensors, 'entries that are not tensors')}")
    with torch.device("meta"):
        model = WanModel(config)
    _check_fits(model.state_dict(), state_dict, source=source, kind=kind)
    model.load_state_dict(state_dict, strict=True, assign=True)
    _assert_materialized(model)
    model.set_dtype(dtype)
    return model.to(device).eval().requires_grad_(False)


def _apparent_sizes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """The model sizes a Wan-named state dict shows, from the tensors it has."""
    sizes = {}
    probes = {
        "dim": ("patch_embedding.weight", 0),
        "ffn_dim": ("blocks.0.ffn.0.weight", 0),
        "text_dim": ("text_embedding.0.weight", 1),
        "freq_dim": ("time_embedding.0.weight", 1),
    }
    for field, (name, axis) in probes.items():
        tensor = state_dict.get(name)
        if isinstance(tensor, torch.Tensor) and tensor.ndim > axis:
            sizes[field] = tensor.shape[axis]
    layers = {int(match[1]) for name in state_dict if (match := re.match(r"blocks\.(\d+)\.", name))}
    if layers:
        sizes["num_layers"] = max(layers) + 1
    return sizes


def _sizes_text(sizes: Mapping[str, int]) -> str:
    return ", ".join(f"{field}={value}" for field, value in sizes.items()) or "no known tensors"


def _hint(names: list[str], kind: str | None, shapes_differ: bool) -> str:
    if kind != "diffusers" and any(
        re.search(r"condition_embedder\.|\.attn[12]\.|scale_shift_table|^proj_out\.", name)
        for name in names
    ):
        return "these are diffusers names: is this a diffusers folder? use kind='diffusers'"
    if any(".lora_" in name for name in names):
        return (
            "these are LoRA factors: load the base file with kind='longlive' and pass this one "
            "as lora="
        )
    if any(re.search(r"img_emb|\.k_img\.|\.v_img\.", name) for name in names):
        return "these are image-to-video weights (img_emb, k_img, v_img); only text-to-video loads"
    if shapes_differ:
        return "the checkpoint is of another model size: pass the WanConfig (preset) that fits it"
    return f"check that kind={kind!r} is the checkpoint's format"


def _check_fits(
    expected: Mapping[str, torch.Tensor],
    found: Mapping[str, torch.Tensor],
    *,
    source: str,
    kind: str | None,
) -> None:
    """One ValueError listing missing, unexpected and mis-shaped names, if there are any."""
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    mismatched = [
        f"{name}: expected {tuple(tensor.shape)}, found {tuple(found[name].shape)}"
        for name, tensor in expected.items()
        if name in found and found[name].shape != tensor.shape
    ]
    if not (missing or unexpected or mismatched):
        return
    problems = []
    if missing:
        problems.append(listed(missing, "missing"))
    if unexpected:
        problems.append(listed(unexpected, "unexpected"))
    if mismatched:
        problems.append(listed(mismatched, "of another shape"))
    apparent, configured = _apparent_sizes(found), _apparent_sizes(expected)
    shapes_differ = bool(mismatched) or any(
        apparent[field] != configured[field] for field in apparent.keys() & configured.keys()
    )
    raise ValueError(
        f"{source} (kind={kind!r}) does not fit the model: "
        + "; ".join(problems)
        + f". The checkpoint looks like {_sizes_text(apparent)}; the config has "
        + f"{_sizes_text(configured)}. Hint: {_hint(unexpected, kind, shapes_differ)}."
    )


def _assert_materialized(model: WanModel) -> None:
    """Internal invariant: nothing of the model is left on the meta device."""
    tensors = [*model.parameters(), *model.buffers()]
    on_meta = [tensor for tensor in tensors if tensor.is_meta]
    assert not on_meta, f"{len(on_meta)} tensors of the loaded model are still on the meta device"
