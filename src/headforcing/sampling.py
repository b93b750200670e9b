"""Few-step flow-matching sampling and the autoregressive chunk loop (Self-Forcing).

The schedule: sigma runs 1 -> 0 over 1000 training steps, shifted by
``s * sigma / (1 + (s - 1) * sigma)`` with ``s = 5``; the four denoising steps [1000, 750, 500, 250]
are warped through that table, giving t = [1000, 937.5, 833.3, 625.0]. The model predicts the flow
``v``; ``x0 = x_t - sigma * v``; between steps x0 is re-noised to the next sigma with fresh noise.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from headforcing.cache.kv import KVCache
from headforcing.model.transformer import TextContext, WanModel


@dataclass(frozen=True)
class FlowSchedule:
    """The few-step schedule.

    Parameters
    ----------
    steps:
        Denoising steps on the 1000-step training scale, before warping.
    shift:
        Timestep shift of the flow-matching schedule (5.0 for Wan / Self-Forcing).
    """

    steps: tuple[int, ...] = (1000, 750, 500, 250)
    shift: float = 5.0
    train_steps: int = 1000

    def __post_init__(self) -> None:
        if not self.steps or any(not 0 < s <= self.train_steps for s in self.steps):
            raise ValueError(f"steps must lie in 1..{self.train_steps}, got {self.steps}")
        if list(self.steps) != sorted(self.steps, reverse=True):
            raise ValueError(f"steps must be decreasing, got {self.steps}")

    def sigmas(self) -> list[float]:
        """Warped noise levels, one per step (float64 math)."""
        sigmas = []
        for step in self.steps:
            sigma = step / self.train_steps  # entry train_steps - step of linspace(1, 0)
            sigmas.append(self.shift * sigma / (1 + (self.shift - 1) * sigma))
        return sigmas


@dataclass(frozen=True)
class LatentChunk:
    """A finished chunk: latents ``[B, C, F, h, w]`` of frames ``first_frame ...``, and the
    prompt that drove it (set by the pipeline's prompt loop)."""

    first_frame: int
    latents: torch.Tensor
    prompt: str = ""


def generate_chunks(
    model: WanModel,
    cache: KVCache,
    context: TextContext,
    num_frames: int,
    latent_shape: tuple[int, int, int],
    generator: torch.Generator,
    schedule: FlowSchedule = FlowSchedule(),
    batch: int = 1,
) -> Iterator[LatentChunk]:
    """Generate ``num_frames`` latent frames chunk by chunk, yielding each finished chunk.

    latent_shape: ``(C, h, w)`` of one latent frame. Noise is drawn on the CPU from
    ``generator`` (same seed -> same video on any device), then moved to the model's device.
    The last chunk may be shorter than ``cache.chunk_frames``.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    sigmas = schedule.sigmas()
    device = model.device

    def noise(frames: int) -> torch.Tensor:
        channels, height, width = latent_shape
        sample = torch.randn(batch, channels, frames, height, width, generator=generator)
        return sample.to(device)

    while cache.frames_done < num_frames:
        chunk = cache.begin_chunk(min(cache.chunk_frames, num_frames - cache.frames_done))
        per_frame = torch.ones(batch, chunk.num_frames, device=device)

        # denoise: attend to [kept context + chunk], store nothing
        x = noise(chunk.num_frames)
        for step, sigma in enumerate(sigmas):
            flow = model(x, per_frame * (sigma * schedule.train_steps), context, cache.attention())
            x0 = x - sigma * flow
            if step + 1 < len(sigmas):
                next_sigma = sigmas[step + 1]
                x = (1 - next_sigma) * x0 + next_sigma * noise(chunk.num_frames)

        # commit: the clean prediction at t = 0 writes the chunk's K/V
        model(x0, per_frame * 0, context, cache.attention(commit=True))
        yield LatentChunk(chunk.first_frame, x0)
