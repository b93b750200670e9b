"""Parameter-name conversion between checkpoint layouts and our (original Wan) names.

One place for every renaming: training-wrapper prefixes and the diffusers
``WanTransformer3DModel`` layout (REFERENCE.md section 2).
"""

from __future__ import annotations

import re

import torch

# Prefixes that trainers put in front of the model's own names.
WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_orig_mod.", "module.", "net.", "model.")

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


def diffusers_to_wan_name(name: str) -> str:
    for pattern, replacement in _DIFFUSERS_TO_WAN:
        renamed, count = re.subn(pattern, replacement, name)
        if count:
            return renamed
    return name


def diffusers_to_wan(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers ``WanTransformer3DModel`` state dict in original Wan names."""
    return {diffusers_to_wan_name(name): tensor for name, tensor in state_dict.items()}
