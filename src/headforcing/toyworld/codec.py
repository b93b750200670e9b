"""The toy latent space: a fixed, invertible patchify (pixel-unshuffle) of RGB in [-1, 1].

No VAE is trained: a latent frame is one pixel frame with every ``s x s`` block of pixels folded
into channels, so ``C = 3 * s * s`` and the temporal stride is 1. :class:`ToyDecoder` is the
inverse, streamed chunk by chunk like the Wan VAE decoder.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from headforcing.io.decoders import to_uint8_frames

SPATIAL_STRIDE = 4


def encode_frames(frames: np.ndarray | torch.Tensor, stride: int = SPATIAL_STRIDE) -> torch.Tensor:
    """Frames ``[B, F, H, W, 3]`` uint8 -> latents ``[B, 3 * s * s, F, H / s, W / s]`` float32."""
    frames = torch.as_tensor(frames)
    if frames.dim() != 5 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames [B, F, H, W, 3], got shape {tuple(frames.shape)}")
    batch, num_frames, height, width, _ = frames.shape
    if height % stride or width % stride:
        raise ValueError(f"frame size {height}x{width} is not divisible by the stride {stride}")
    rgb = frames.float().div(127.5).sub(1).permute(0, 1, 4, 2, 3).flatten(0, 1)  # [BF, 3, H, W]
    latents = F.pixel_unshuffle(rgb, stride)  # [BF, 3 s s, h, w]
    return latents.unflatten(0, (batch, num_frames)).transpose(1, 2).contiguous()


def decode_latents(latents: torch.Tensor, stride: int = SPATIAL_STRIDE) -> torch.Tensor:
    """Latents ``[B, 3 * s * s, F, h, w]`` -> RGB ``[B, 3, F, h * s, w * s]`` (float, unclamped)."""
    batch, channels, num_frames = latents.shape[:3]
    if channels != 3 * stride * stride:
        raise ValueError(f"expected {3 * stride * stride} latent channels, got {channels}")
    flat = latents.float().transpose(1, 2).flatten(0, 1)  # [BF, C, h, w]
    rgb = F.pixel_shuffle(flat, stride)  # [BF, 3, H, W]
    return rgb.unflatten(0, (batch, num_frames)).transpose(1, 2)


class ToyDecoder:
    """:class:`~headforcing.io.decoders.LatentDecoder` of the toy world: the inverse patchify.

    Stateless: every latent frame decodes to exactly one pixel frame (temporal stride 1).
    """

    temporal_stride = 1

    def __init__(self, spatial_stride: int = SPATIAL_STRIDE) -> None:
        self.spatial_stride = spatial_stride

    def reset(self) -> None:
        """Nothing to reset: the patchify has no state across chunks."""

    def decode_chunk(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``[B, C, F, h, w]`` -> frames ``[B, F, H, W, 3]`` uint8 on the CPU."""
        return to_uint8_frames(decode_latents(latents.cpu(), self.spatial_stride))
