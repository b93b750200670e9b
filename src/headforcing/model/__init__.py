"""The causal Wan transformer, its 3D RoPE, attention backends and presets."""

from headforcing.model.attention import DenseAttention, SelfAttentionBackend, block_causal_mask
from headforcing.model.config import PRESETS, Preset, VideoConfig, WanConfig, get_preset
from headforcing.model.rope import Rope3D
from headforcing.model.transformer import TextContext, WanModel

__all__ = [
    "PRESETS",
    "DenseAttention",
    "Preset",
    "Rope3D",
    "SelfAttentionBackend",
    "TextContext",
    "VideoConfig",
    "WanConfig",
    "WanModel",
    "block_causal_mask",
    "get_preset",
]
