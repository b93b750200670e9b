"""Load the causal Wan2.1 transformer from the checkpoints that Self-Forcing, Causal Forcing,
CausVid, LongLive and diffusers ship.

Each checkpoint kind has one reader that returns a state dict in original Wan names; one builder,
:func:`model_from_state_dict`, turns any of them into a :class:`WanModel`. The layouts, as their
public code writes and reads them (facts checked in the repositories, no code taken from them):

``self-forcing``
    ``self_forcing_dmd.pt`` (guandeh17/Self-Forcing, ``inference.py`` and ``utils/distributed.py``):
    a torch pickle ``{"generator": sd, "generator_ema": sd, "critic": sd, ...}``; the generator is
    a wrapper holding the Wan model as ``.model``, so names are ``model.<wan name>``. FSDP-trained
    files may carry ``_fsdp_wrapped_module.`` as a prefix or as a segment inside names.
``causal-forcing``
    Causal Forcing's chunk-wise ``chunkwise/causal_forcing.pt`` (thu-ml/Causal-Forcing,
    ``inference.py``; REFERENCE.md section 3.1b): a drop-in replacement for Self-Forcing's, the
    same pickle ``{"generator": sd, "generator_ema": sd, ...}`` with ``model.<wan name>``
    keys, possibly ``model._fsdp_wrapped_module.<wan name>``. Its chunk-wise README command
    loads ``generator`` (no ``--use_ema``), so that is the default here. Its own loader falls
    back to ``strict=False`` when the keys do not match; ours stays strict and names what is
    missing.
``causvid``
    CausVid's ``model.pt`` (tianweiy/CausVid, ``causvid/train_distillation.py``): the same kind of
    pickle, ``{"generator": sd, "critic": sd}`` with ``model.``-prefixed names (``generator_ema``
    in some forks), or a bare state dict, as CausVid-Plus's ``convert_checkpoint.py`` writes.
``longlive``
    LongLive 1.0 (NVlabs/LongLive v1.0, ``trainer/distillation.py``, ``utils/lora_utils.py``,
    ``configs/longlive_inference.yaml``): a base pickle laid out as Self-Forcing's
    (``longlive_base.pt``) plus a LoRA pickle (``lora.pt``) ``{"generator_lora": sd,
    "critic_lora": sd, "step": int}`` or a bare LoRA state dict. The LoRA is PEFT's
    ``get_peft_model_state_dict`` of ``get_peft_model(<Wan model>, LoraConfig(r, lora_alpha,
    target_modules=<every nn.Linear of every attention block>))``: for each targeted layer
    ``base_model.model.<layer>.lora_A.weight`` ``[r, in]`` and ``...lora_B.weight`` ``[out, r]``.
    The file does not store alpha (it is ``adapter.alpha`` of the YAML config: 256, with rank 256,
    in LongLive's inference configs), so it is an argument here. We merge
    ``W + (alpha / r) * B @ A`` in float32, r read from the factors' shapes, plain LoRA only
    (no rsLoRA scaling, DoRA magnitudes or LoRA biases; LongLive uses none of them).
``diffusers``
    A ``transformer/`` folder of ``WanTransformer3DModel.save_pretrained``: ``config.json`` and
    ``diffusion_pytorch_model.safetensors``, or shards listed in
    ``diffusion_pytorch_model.safetensors.index.json``; names converted by
    :func:`headforcing.io.keymap.diffusers_to_wan`.

What every reader shares (the layouts, the safe read, finding the generator, Wan names) is
:mod:`headforcing.io.checkpoint_files`; the builder and its checks that the tensors fit the
config are :mod:`headforcing.io.checkpoint_fit`. Pickles are read with
``torch.load(weights_only=True)``: tensors and plain containers only, so a file whose unpickling
would run code is refused before anything in it runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from headforcing.io.checkpoint_files import (
    CAUSAL_FORCING_LAYOUT,
    CAUSVID_LAYOUT,
    DIFFUSERS_LAYOUT,
    LONGLIVE_LORA_LAYOUT,
    SELF_FORCING_LAYOUT,
    SHOWN,
    StateDict,
    diffusers_weight_files,
    generator_state_dict,
    is_tensor_mapping,
    listed,
    top_level,
    torch_load,
    wan_names,
)
from headforcing.io.checkpoint_fit import (  # re-exported: toyworld.pretrained builds with it
    model_from_state_dict,
)
from headforcing.io.keymap import (
    diffusers_to_wan,
    drop_wrapper_segments,
    split_peft_lora_name,
    strip_prefixes,
)
from headforcing.io.safe_load import (
    check_safetensors_file,
)
from headforcing.model.config import WanConfig
from headforcing.model.transformer import WanModel

# ----------------------------------------------------------------------------------------------
# readers: one per checkpoint kind, each returns a state dict in original Wan names


def read_self_forcing(path: str | Path, *, use_ema: bool = True) -> StateDict:
    """Wan-named generator weights of a Self-Forcing checkpoint (``generator_ema`` by default)."""
    path = Path(path)
    checkpoint = torch_load(path, SELF_FORCING_LAYOUT)
    return wan_names(generator_state_dict(checkpoint, path, use_ema, SELF_FORCING_LAYOUT), path)


def read_causal_forcing(path: str | Path, *, use_ema: bool = False) -> StateDict:
    """Wan-named generator weights of Causal Forcing's chunk-wise checkpoint (``generator`` by
    default, as its README's command loads)."""
    path = Path(path)
    checkpoint = torch_load(path, CAUSAL_FORCING_LAYOUT)
    return wan_names(generator_state_dict(checkpoint, path, use_ema, CAUSAL_FORCING_LAYOUT), path)


def read_causvid(path: str | Path, *, use_ema: bool = True) -> StateDict:
    """Wan-named generator weights of a CausVid checkpoint: training dict or bare state dict."""
    path = Path(path)
    checkpoint = torch_load(path, CAUSVID_LAYOUT)
    if is_tensor_mapping(checkpoint):
        return wan_names(dict(checkpoint), path)
    return wan_names(generator_state_dict(checkpoint, path, use_ema, CAUSVID_LAYOUT), path)


def read_longlive(
    path: str | Path,
    lora: str | Path,
    *,
    lora_alpha: float | None,
    use_ema: bool = True,
) -> StateDict:
    """LongLive's base weights with its LoRA merged in: ``W + (lora_alpha / r) * B @ A``.

    LongLive trained its LoRA on top of the base's ``generator`` weights and its inference
    configs say ``use_ema: false``; pass ``use_ema=False`` to reproduce that when the base file
    also holds ``generator_ema``.
    """
    if lora_alpha is None:
        raise ValueError(
            "kind='longlive' needs lora_alpha: LongLive's lora.pt does not store it (it is "
            "adapter.alpha in the YAML config; LongLive's configs/longlive_inference.yaml uses "
            "alpha 256 with rank 256, a scale of 1.0)"
        )
    if lora_alpha <= 0:
        raise ValueError(f"lora_alpha must be > 0, got {lora_alpha}")
    base = read_self_forcing(path, use_ema=use_ema)
    return merge_lora(base, read_peft_lora(lora), lora_alpha=lora_alpha, source=Path(lora))


def read_diffusers(path: str | Path) -> StateDict:
    """Wan-named weights of a diffusers ``transformer/`` folder (or of the repo root above it)."""
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder; kind='diffusers' expects {DIFFUSERS_LAYOUT}")
    if not diffusers_weight_files(folder, required=False) and (folder / "transformer").is_dir():
        folder = folder / "transformer"
    state_dict: StateDict = {}
    for file in diffusers_weight_files(folder, required=True):
        check_safetensors_file(file, DIFFUSERS_LAYOUT)
        shard = load_file(file, device="cpu")
        repeated = shard.keys() & state_dict.keys()
        if repeated:
            raise ValueError(f"{file} repeats {len(repeated)} tensors of earlier shards")
        state_dict.update(shard)
    return diffusers_to_wan(state_dict)


# ----------------------------------------------------------------------------------------------
# LoRA


def read_peft_lora(path: str | Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """LongLive's LoRA file -> ``{layer (Wan name): (lora_A [r, in], lora_B [out, r])}``."""
    path = Path(path)
    checkpoint = torch_load(path, LONGLIVE_LORA_LAYOUT)
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("generator_lora"), Mapping):
        state_dict = dict(checkpoint["generator_lora"])
    elif is_tensor_mapping(checkpoint):
        state_dict = dict(checkpoint)
    else:
        raise ValueError(
            f"{path} has no 'generator_lora' state dict ({top_level(checkpoint)}); "
            f"expected {LONGLIVE_LORA_LAYOUT}"
        )
    factors: dict[str, dict[str, torch.Tensor]] = {}
    not_lora = []
    for name, tensor in drop_wrapper_segments(state_dict).items():
        split = split_peft_lora_name(name)
        if split is None:
            not_lora.append(name)
        else:
            module, factor = split
            factors.setdefault(module, {})[factor] = tensor
    if not_lora:
        raise ValueError(
            f"{path}: {listed(not_lora, 'entries that are not LoRA A/B factors')}; only plain "
            "LoRA on linear layers is supported (no DoRA magnitudes, LoRA biases or embeddings)"
        )
    if not factors:
        raise ValueError(f"{path} holds no LoRA factors; expected {LONGLIVE_LORA_LAYOUT}")
    by_layer = strip_prefixes(factors)
    if len(by_layer) != len(factors):
        raise ValueError(f"{path}: several LoRA layers share one name once prefixes are removed")
    incomplete = sorted(layer for layer, pair in by_layer.items() if set(pair) != {"A", "B"})
    if incomplete:
        raise ValueError(f"{path}: {listed(incomplete, 'layers without both lora_A and lora_B')}")
    return {layer: (pair["A"], pair["B"]) for layer, pair in by_layer.items()}


def merge_lora(
    base: StateDict,
    factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    *,
    lora_alpha: float,
    source: str | Path = "the LoRA",
) -> StateDict:
    """Merged copy of ``base``: ``W + (lora_alpha / r) * B @ A`` in float32 for every layer.

    ``r`` is each layer's rank, read from its factors; untargeted tensors are passed through.
    """
    merged = dict(base)
    problems = []
    for layer, (down, up) in sorted(factors.items()):
        weight = base.get(f"{layer}.weight")
        if weight is None:
            problems.append(f"{layer}: no such linear layer in the base checkpoint")
            continue
        rank = down.shape[0]
        if not (
            weight.ndim == down.ndim == up.ndim == 2
            and up.shape[1] == rank
            and (up.shape[0], down.shape[1]) == tuple(weight.shape)
        ):
            problems.append(
                f"{layer}: lora_A {tuple(down.shape)} and lora_B {tuple(up.shape)} do not fit "
                f"its weight {tuple(weight.shape)}"
            )
            continue
        merged[f"{layer}.weight"] = weight.float() + (lora_alpha / rank) * (
            up.float() @ down.float()
        )
    if problems:
        shown = "; ".join(problems[:SHOWN]) + ("; ..." if len(problems) > SHOWN else "")
        raise ValueError(f"{source}: {len(problems)} LoRA layers do not fit the base: {shown}")
    return merged


# ----------------------------------------------------------------------------------------------
# the kinds, and loading one into a model


@dataclass(frozen=True)
class _ReadOptions:
    use_ema: bool
    lora: Path | None
    lora_alpha: float | None


@dataclass(frozen=True)
class CheckpointKind:
    """A checkpoint format: what it looks like and how to read it into Wan-named tensors."""

    name: str
    layout: str
    read: Callable[[Path, _ReadOptions], StateDict]
    takes_lora: bool = False
    # whether its authors' inference loads ``generator_ema`` (the default of ``use_ema``)
    ema_default: bool = True


CHECKPOINT_KINDS: dict[str, CheckpointKind] = {
    kind.name: kind
    for kind in (
        CheckpointKind(
            "self-forcing",
            SELF_FORCING_LAYOUT,
            lambda path, options: read_self_forcing(path, use_ema=options.use_ema),
        ),
        CheckpointKind(
            "causal-forcing",
            CAUSAL_FORCING_LAYOUT,
            lambda path, options: read_causal_forcing(path, use_ema=options.use_ema),
            ema_default=False,
        ),
        CheckpointKind(
            "causvid",
            CAUSVID_LAYOUT,
            lambda path, options: read_causvid(path, use_ema=options.use_ema),
        ),
        CheckpointKind(
            "longlive",
            f"{SELF_FORCING_LAYOUT}, plus lora= {LONGLIVE_LORA_LAYOUT}",
            lambda path, options: read_longlive(
                path, options.lora, lora_alpha=options.lora_alpha, use_ema=options.use_ema
            ),
            takes_lora=True,
            ema_default=False,  # its inference configs: use_ema false
        ),
        CheckpointKind(
            "diffusers",
            DIFFUSERS_LAYOUT,
            lambda path, options: read_diffusers(path),
            ema_default=False,  # a folder holds one set of weights
        ),
    )
}


def load_transformer(
    path: str | Path,
    config: WanConfig,
    *,
    kind: str = "self-forcing",
    lora: str | Path | None = None,
    lora_alpha: float | None = None,
    use_ema: bool | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.bfloat16,
) -> WanModel:
    """Load a causal Wan transformer checkpoint, strictly, for inference.

    Parameters
    ----------
    path:
        The checkpoint file (``self-forcing``, ``causvid``, ``longlive`` base) or the diffusers
        ``transformer/`` folder (``diffusers``).
    config:
        Shape of the model; the checkpoint must match it exactly.
    kind:
        One of :data:`CHECKPOINT_KINDS`: ``self-forcing``, ``causal-forcing``, ``causvid``,
        ``longlive``, ``diffusers``. Never guessed from the file name.
    lora, lora_alpha:
        LongLive's LoRA file and its alpha (not stored in the file); ``longlive`` only.
    use_ema:
        Take ``generator_ema`` when the file has it, else ``generator``; ``False`` always takes
        ``generator``. ``None``: what the kind's authors load (``generator_ema`` for
        Self-Forcing and CausVid, ``generator`` for Causal Forcing and LongLive).
    device, dtype:
        Where the model lives and the dtype of its weights (modulation, time embedding and norm3
        stay float32).
    """
    try:
        checkpoint_kind = CHECKPOINT_KINDS[kind]
    except KeyError:
        valid = ", ".join(repr(name) for name in CHECKPOINT_KINDS)
        raise ValueError(f"unknown checkpoint kind {kind!r}; valid kinds: {valid}") from None
    if checkpoint_kind.takes_lora and lora is None:
        raise ValueError(
            f"kind={kind!r} merges a LoRA: pass lora=<LoRA file> and lora_alpha; "
            "to load the base model alone use kind='self-forcing'"
        )
    if not checkpoint_kind.takes_lora and (lora is not None or lora_alpha is not None):
        raise ValueError(f"lora and lora_alpha are for kind='longlive' only, not kind={kind!r}")
    path = Path(path)
    if use_ema is None:
        use_ema = checkpoint_kind.ema_default
    options = _ReadOptions(use_ema, None if lora is None else Path(lora), lora_alpha)
    state_dict = checkpoint_kind.read(path, options)
    return model_from_state_dict(
        state_dict, config, source=str(path), kind=kind, device=device, dtype=dtype
    )
