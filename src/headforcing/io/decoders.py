"""Latent decoders: latent chunks -> RGB frames, streamed chunk by chunk.

A decoder is stateful across the chunks of one video (the Wan VAE keeps a causal-convolution
cache); ``reset()`` starts a new video. The first latent frame of a video becomes one pixel frame,
every later latent frame ``temporal_stride`` pixel frames (the Wan VAE's causal layout: 21 latent
frames -> 81 pixel frames).
"""

from __future__ import annotations

from typing import Protocol

import torch


class LatentDecoder(Protocol):
    """Streams latents ``[B, C, F, h, w]`` to frames ``[B, F_pix, H, W, 3]`` (uint8, CPU)."""

    temporal_stride: int
    spatial_stride: int

    def reset(self) -> None: ...

    def decode_chunk(self, latents: torch.Tensor) -> torch.Tensor: ...


def pixel_frames(latent_frames: int, temporal_stride: int = 4) -> int:
    """Pixel frames that ``latent_frames`` latent frames decode to (causal layout)."""
    return 1 + temporal_stride * (latent_frames - 1) if latent_frames > 0 else 0


def to_uint8_frames(video: torch.Tensor) -> torch.Tensor:
    """``[B, 3, F, H, W]`` in [-1, 1] -> ``[B, F, H, W, 3]`` uint8 on the CPU."""
    video = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return video.permute(0, 2, 3, 4, 1).cpu()


class PreviewDecoder:
    """Stand-in decoder for presets without a VAE (``tiny``): a fixed linear latent -> RGB map.

    Each latent channel gets a fixed colour (a generator seeded with 0 draws the ``[3, C]`` map,
    scaled so that unit-variance latents land in [-1, 1] after ``tanh``); pixels are repeated
    ``spatial_stride`` times in height and width and ``temporal_stride`` times in time, the first
    frame of a video once. It shows the latents honestly; it is not a learned decoder.
    """

    def __init__(self, latent_channels: int, spatial_stride: int = 8, temporal_stride: int = 4):
        generator = torch.Generator().manual_seed(0)
        self.rgb_map = torch.randn(3, latent_channels, generator=generator) / latent_channels**0.5
        self.spatial_stride = spatial_stride
        self.temporal_stride = temporal_stride
        self._started = False

    def reset(self) -> None:
        self._started = False

    def decode_chunk(self, latents: torch.Tensor) -> torch.Tensor:
        # latents: [B, C, F, h, w] -> rgb: [B, 3, F, h, w]
        rgb = torch.tanh(torch.einsum("rc,bcfhw->brfhw", self.rgb_map, latents.float().cpu()))
        repeats = torch.full((rgb.shape[2],), self.temporal_stride, dtype=torch.long)
        if not self._started:
            repeats[0] = 1
            self._started = True
        rgb = rgb.repeat_interleave(repeats, dim=2)
        rgb = rgb.repeat_interleave(self.spatial_stride, dim=3)
        rgb = rgb.repeat_interleave(self.spatial_stride, dim=4)
        return to_uint8_frames(rgb)
