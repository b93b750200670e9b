"""Will a run fit? A memory estimate made from the preset, the frame size and the cache policy,
checked against the device's free memory before any weights or buffers are allocated.

The estimate is a lower bound of the peak, not an exact figure: the weights, the K/V a policy
holds (stored keys, keys rotated for the chunk, values), one chunk's activations, and the
decoded chunk on its way to the encoder (measured on CPU with the ``tiny`` preset at about
48 bytes per output pixel, float32 frames and their copies included). A run it refuses cannot
fit; a run it lets through may still run out of memory on a device shared with others.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from headforcing.model.config import Preset

# bytes per pixel of a decoded chunk, from float32 frames to the encoder's input (measured)
DECODE_BYTES_PER_PIXEL = 48
# bytes per written pixel of a chunk upscaled for display (--scale): two uint8 RGB copies
UPSCALED_BYTES_PER_PIXEL = 6
# share of the free memory a run may plan to use
USABLE_SHARE = 0.9


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    kv: int
    activations: int
    decode: int

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.activations + self.decode


def estimate_memory(
    preset: Preset, height: int, width: int, dtype: torch.dtype, held_frames: int, scale: int = 1
) -> MemoryEstimate:
    """Bytes a run of ``preset`` at ``height x width`` needs with ``held_frames`` latent frames of
    K/V kept per layer, its frames written at ``scale`` x ``scale`` pixels per pixel."""
    config, video = preset.model, preset.video
    element = torch.finfo(dtype).bits // 8
    _, patch_h, patch_w = config.patch_size
    tokens_per_frame = (height // video.vae_stride[1] // patch_h) * (
        width // video.vae_stride[2] // patch_w
    )
    chunk_tokens = video.chunk_frames * tokens_per_frame
    block = 8 * config.dim**2 + 2 * config.dim * config.ffn_dim  # self/cross attention, FFN
    weights = config.num_layers * block * element
    kv_tokens = (held_frames + video.chunk_frames) * tokens_per_frame
    kv = 3 * config.num_layers * kv_tokens * config.dim * element
    activations = 4 * chunk_tokens * (config.ffn_dim + 4 * config.dim)  # float32 at the peak
    pixels = video.chunk_frames * video.vae_stride[0] * height * width
    decode = DECODE_BYTES_PER_PIXEL * pixels
    if scale > 1:
        decode += UPSCALED_BYTES_PER_PIXEL * pixels * scale**2
    return MemoryEstimate(weights, kv, activations, decode)


def free_memory(device: torch.device) -> int | None:
    """Free bytes on ``device``: CUDA's own count, or the kernel's MemAvailable for the CPU
    (``None`` when neither can be read)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(estimate: MemoryEstimate, device: torch.device, what: str) -> None:
    """Raise ValueError when ``estimate`` exceeds the usable share of ``device``'s free memory."""
    free = free_memory(device)
    if free is None or estimate.total <= USABLE_SHARE * free:
        return
    gib = 2**30
    raise ValueError(
        f"{what} needs about {estimate.total / gib:.1f} GiB on {device} (K/V "
        f"{estimate.kv / gib:.1f}, decoding {estimate.decode / gib:.1f}, weights "
        f"{estimate.weights / gib:.1f}, activations {estimate.activations / gib:.1f}) but "
        f"{free / gib:.1f} GiB are free; make the frames smaller (--height/--width), keep fewer "
        "frames (--policy window, --window-frames) or use a larger device"
    )
