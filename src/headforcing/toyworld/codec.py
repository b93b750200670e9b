"""The toy latent space: a fixed, invertible patchify (pixel-unshuffle) of RGB in [-1, 1].

No VAE is trained: a latent frame is one pixel frame with every ``s x s`` block of pixels folded
into channels, so ``C = 3 * s * s`` and the temporal stride is 1. :class:`ToyDecoder` is the
inverse, streamed chunk by chunk like the Wan VAE decoder.

**The first frame is encoded apart** (``first_negated``): Wan's causal VAE encodes a video's
first frame on its own and every later latent frame from four frames, so the first latent frame
differs in kind from the rest, and the model can tell where a video starts from its content (the
RoPE is relative: positions alone cannot). The toy codec copies that property in the simplest
invertible way: a clip's first latent frame holds its first frame negated. The weights say which
format they were trained on (``config.json``, ``latent.first_frame``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from headforcing.io.decoders import to_uint8_frames

SPATIAL_STRIDE = 4


def encode_frames(
    frames: np.ndarray | torch.Tensor, stride: int = SPATIAL_STRIDE, first_negated: bool = False
) -> torch.Tensor:
    """Frames ``[B, F, H, W, 3]`` uint8 -> latents ``[B, 3 * s * s, F, H / s, W / s]`` float32
    (``first_negated``: the clip's first frame negated, see the module docstring)."""
    frames = torch.as_tensor(frames)
    if frames.dim() != 5 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames [B, F, H, W, 3], got shape {tuple(frames.shape)}")
    batch, num_frames, height, width, _ = frames.shape
    if height % stride or width % stride:
        raise ValueError(f"frame size {height}x{width} is not divisible by the stride {stride}")
    rgb = frames.float().div(127.5).sub(1).permute(0, 1, 4, 2, 3).flatten(0, 1)  # [BF, 3, H, W]
    latents = F.pixel_unshuffle(rgb, stride)  # [BF, 3 s s, h, w]
    latents = latents.unflatten(0, (batch, num_frames)).transpose(1, 2).contiguous()
    if first_negated:
        latents[:, :, 0] *= -1
    return latents


def decode_latents(
    latents: torch.Tensor, stride: int = SPATIAL_STRIDE, first_negated: bool = False
) -> torch.Tensor:
    """Latents ``[B, 3 * s * s, F, h, w]`` -> RGB ``[B, 3, F, h * s, w * s]`` (float, unclamped);
    ``first_negated``: the latents begin with a clip's first frame, stored negated."""
    batch, channels, num_frames = latents.shape[:3]
    if channels != 3 * stride * stride:
        raise ValueError(f"expected {3 * stride * stride} latent channels, got {channels}")
    if first_negated:
        latents = torch.cat([-latents[:, :, :1], latents[:, :, 1:]], dim=2)
    flat = latents.float().transpose(1, 2).flatten(0, 1)  # [BF, C, h, w]
    rgb = F.pixel_shuffle(flat, stride)  # [BF, 3, H, W]
    return rgb.unflatten(0, (batch, num_frames)).transpose(1, 2)


class ToyDecoder:
    """:class:`~headforcing.io.decoders.LatentDecoder` of the toy world: the inverse patchify.

    Every latent frame decodes to exactly one pixel frame (temporal stride 1). With
    ``first_negated`` the decoder remembers, like Wan's, whether the video's first chunk has
    been decoded since :meth:`reset`: only that chunk's first frame is stored negated.
    """

    temporal_stride = 1

    def __init__(self, spatial_stride: int = SPATIAL_STRIDE, first_negated: bool = False) -> None:
        self.spatial_stride = spatial_stride
        self.first_negated = first_negated
        self._started = False

    def reset(self) -> None:
        """A new video starts: its first decoded frame is the first frame."""
        self._started = False

    def decode_chunk(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``[B, C, F, h, w]`` -> frames ``[B, F, H, W, 3]`` uint8 on the CPU."""
        first = self.first_negated and not self._started
        self._started = True
        return to_uint8_frames(decode_latents(latents.cpu(), self.spatial_stride, first))
