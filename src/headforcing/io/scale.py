"""Showing small frames at a size a person can see: integer nearest-neighbour upscaling.

The toy-world model makes 32x32 frames, a thumbnail on any screen. Videos are written with each
pixel repeated ``scale`` x ``scale`` times (nearest neighbour: no new colours, no blur), so the
file can be shrunk back exactly by the same integer (:func:`downscale`, used by ``eval`` before it
compares a toy video with its ground truth). ``scale="auto"`` picks the smallest factor that
makes the shorter side at least ``MIN_DISPLAY_PIXELS``; frames already that large keep factor 1,
and so does every video of real weights, whatever its size (a 64x48 test of a real model is
written as made, not blown up to look like a toy video).
"""

from __future__ import annotations

import math

import numpy as np
import torch

MIN_DISPLAY_PIXELS = 256
MAX_SCALE = 64


def display_scale(
    height: int, width: int, scale: int | str = "auto", *, real_weights: bool = False
) -> int:
    """The integer factor for frames of ``height`` x ``width``: ``scale`` itself (an int >= 1)
    or, for ``"auto"``, 1 for ``real_weights`` and else the smallest one making the shorter
    side >= ``MIN_DISPLAY_PIXELS``."""
    if scale == "auto":
        if real_weights:
            return 1
        return max(1, math.ceil(MIN_DISPLAY_PIXELS / min(height, width)))
    if not isinstance(scale, int) or not 1 <= scale <= MAX_SCALE:
        raise ValueError(f"--scale {scale!r}: give auto or an integer in 1..{MAX_SCALE}")
    return scale


def parse_scale(text: str) -> int | str:
    """``--scale`` from the command line: ``auto`` or an integer in 1..MAX_SCALE."""
    if text == "auto":
        return text
    try:
        return display_scale(1, 1, int(text))
    except ValueError:
        raise ValueError(f"--scale {text!r}: give auto or an integer in 1..{MAX_SCALE}") from None


def upscale(frames: torch.Tensor, scale: int) -> torch.Tensor:
    """``[F, H, W, C]`` -> ``[F, H * scale, W * scale, C]``, every pixel repeated (nearest)."""
    if scale == 1:
        return frames
    return frames.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)


def downscale(frames: np.ndarray, scale: int) -> np.ndarray:
    """The inverse of :func:`upscale` for decoded video: ``[F, H, W, C]`` uint8 ->
    ``[F, H / scale, W / scale, C]``, each block's mean (which also averages out codec noise)."""
    if scale == 1:
        return frames
    count, height, width, channels = frames.shape
    if height % scale or width % scale:
        raise ValueError(f"{width}x{height} frames do not divide by the scale {scale}")
    blocks = frames.reshape(count, height // scale, scale, width // scale, scale, channels)
    return np.round(blocks.mean(axis=(2, 4))).astype(np.uint8)
