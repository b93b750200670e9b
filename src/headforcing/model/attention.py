"""How self-attention reaches its keys: the backend protocol and a dense masked backend.

The transformer hands every self-attention layer's unrotated ``q, k, v`` to a backend and gets
the attention output back. The KV cache (``headforcing.cache``) is one backend;
:class:`DenseAttention` is the other: a whole clip at once under a frame mask, for training and
for reference rollouts.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from headforcing.model.rope import Rope3D, cos_sin, rotate


class SelfAttentionBackend(Protocol):
    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k, v: ``[B, L, H, D]`` after the q/k norms, before RoPE -> ``[B, L, H, D]``."""
        ...


def block_causal_mask(num_frames: int, chunk_frames: int, device=None) -> torch.Tensor:
    """``[F, F]`` frame mask: every frame sees its own chunk and all earlier chunks."""
    chunk = torch.arange(num_frames, device=device) // chunk_frames
    return chunk[:, None] >= chunk[None, :]


class DenseAttention:
    """All frames of a clip at once, each query frame attending to the key frames a mask allows.

    Parameters
    ----------
    rope:
        Rotary tables of the model.
    frame_positions:
        ``[F]`` temporal position of every frame.
    height_tokens, width_tokens:
        Token grid of one frame.
    frame_mask:
        ``[F, F]`` boolean, ``True`` where query frame i may attend to key frame j; ``None``
        for full bidirectional attention.
    """

    def __init__(
        self,
        rope: Rope3D,
        frame_positions: torch.Tensor,
        height_tokens: int,
        width_tokens: int,
        frame_mask: torch.Tensor | None = None,
    ) -> None:
        spatial = rope.spatial_angles(height_tokens, width_tokens, frame_positions.device)
        self.cos, self.sin = cos_sin(rope.token_angles(frame_positions, spatial))
        self.mask = None
        if frame_mask is not None:
            tokens = height_tokens * width_tokens
            self.mask = frame_mask.repeat_interleave(tokens, 0).repeat_interleave(tokens, 1)

    def attend(self, layer: int, q, k, v):
        # q, k, v: [B, L, H, D] -> [B, H, L, D]
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        q, k = rotate(q, self.cos, self.sin), rotate(k, self.cos, self.sin)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)
        return out.transpose(1, 2)
