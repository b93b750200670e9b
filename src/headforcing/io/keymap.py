"""Parameter-name conversion between checkpoint layouts and our (original Wan) names.

One place for every renaming: training-wrapper prefixes and segments, PEFT LoRA factor names
and the diffusers ``WanTransformer3DModel`` layout (REFERENCE.md section 2).
"""

from __future__ import annotations

import re

import torch

# Prefixes that trainers put in front of the model's own names.
WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_orig_mod.", "module.", "net.", "model.")

# Wrapper segments that can sit anywhere in a name: FSDP with ``use_orig_params`` (Self-Forcing's
# EMA, LongLive) and activation checkpointing nest them inside, e.g.
# ``model.blocks.0._fsdp_wrapped_module.self_attn.q.weight``. No Wan parameter is called so.
WRAPPER_SEGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")

# A PEFT LoRA factor as ``get_peft_model_state_dict`` writes it (LongLive's ``generator_lora``):
# ``base_model.model.<module>.lora_A.weight`` ([rank, in]) and ``...lora_B.weight`` ([out, rank]).
# A raw ``PeftModel.state_dict()`` still has the adapter name (``lora_A.default.weight``).
_PEFT_LORA = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<factor>[AB])(?:\.default)?\.weight$"
)

# (diffusers pattern, original replacement); applied in order, first match wins.
_DIFFUSERS_TO_WAN = [
    (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^scale_shift_table$", "head.modulation"),
    (r"^proj_out\.", "head.head."),
    (r"^(blocks\.\d+)\.scale_shift_table$", r"\1.modulation"),
    (r"^(blocks\.\d+)\.ffn\.net\.0\.proj\.", r"\1.ffn.0."),
    (r"^(blocks\.\d+)\.ffn\.net\.2\.", r"\1.ffn.2."),
    (r"^(blocks\.\d+)\.norm2\.", r"\1.norm3."),
    (r"^(blocks\.\d+)\.attn1\.to_out\.0\.", r"\1.self_attn.o."),
    (r"^(blocks\.\d+)\.attn2\.to_out\.0\.", r"\1.cross_attn.o."),
    (r"^(blocks\.\d+)\.attn1\.to_([qkv])\.", r"\1.self_attn.\2."),
    (r"^(blocks\.\d+)\.attn2\.to_([qkv])\.", r"\1.cross_attn.\2."),
    (r"^(blocks\.\d+)\.attn1\.norm_([qk])\.", r"\1.self_attn.norm_\2."),
    (r"^(blocks\.\d+)\.attn2\.norm_([qk])\.", r"\1.cross_attn.norm_\2."),
]


def strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes (``model.``, ``_fsdp_wrapped_module.``, ``net.``, ...)."""
    stripped = {}
    for name, tensor in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in WRAPPER_PREFIXES:
                if name.startswith(prefix):
                    name, changed = name[len(prefix) :], True
        stripped[name] = tensor
    return stripped


def drop_wrapper_segments(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove wrapper segments (``_fsdp_wrapped_module.``, ...) wherever they occur in a name."""
    cleaned = {}
    for name, tensor in state_dict.items():
        for segment in WRAPPER_SEGMENTS:
            name = name.replace(segment, "")
        cleaned[name] = tensor
    return cleaned


def split_peft_lora_name(name: str) -> tuple[str, str] | None:
    """``base_model.model.blocks.0.self_attn.q.lora_A.weight`` -> ``("blocks.0.self_attn.q", "A")``.

    Returns ``None`` for a name that is not a PEFT LoRA factor. The module name may still carry
    wrapper prefixes; pass it through :func:`strip_prefixes`.
    """
    match = _PEFT_LORA.match(name)
    return None if match is None else (match["module"], match["factor"])


def diffusers_to_wan_name(name: str) -> str:
    for pattern, replacement in _DIFFUSERS_TO_WAN:
        renamed, count = re.subn(pattern, replacement, name)
        if count:
            return renamed
    return name


def diffusers_to_wan(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers ``WanTransformer3DModel`` state dict in original Wan names."""
    return {diffusers_to_wan_name(name): tensor for name, tensor in state_dict.items()}
