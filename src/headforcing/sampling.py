"""Few-step flow-matching sampling and the autoregressive chunk loop (Self-Forcing).

The schedule: sigma runs 1 -> 0 over 1000 training steps, shifted by
``s * sigma / (1 + (s - 1) * sigma)`` with ``s = 5``; the four denoising steps [1000, 750, 500, 250]
are warped through that table, giving t = [1000, 937.5, 833.3, 625.0]. The model predicts the flow
``v``; ``x0 = x_t - sigma * v``; between steps x0 is re-noised to the next sigma with fresh noise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from headforcing.cache.kv import KVCache
from headforcing.model.transformer import TextContext, WanModel

if TYPE_CHECKING:
    from headforcing.speed import Span


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
    """A finished chunk: latents ``[B, C, F, h, w]`` of frames ``first_frame ...``, the prompt
    that drove it and the span of the transformer's work on it (both set by the pipeline's
    prompt loop)."""

    first_frame: int
    latents: torch.Tensor
    prompt: str = ""
    span: Span | None = None


def denoise(
    flow: Callable[[torch.Tensor, float], torch.Tensor],
    shape: tuple[int, ...],
    generator: torch.Generator,
    sigmas: list[float],
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The few-step loop of one chunk: start from noise, predict x0 from ``flow(x, sigma)`` at
    every level and re-noise it to the next level with fresh noise; returns the last x0.

    Noise of ``shape`` is drawn on the CPU from ``generator`` (same seed -> same video on any
    device), then moved to ``device``.
    """

    def noise() -> torch.Tensor:
        return torch.randn(shape, generator=generator).to(device)

    x = noise()
    for step, sigma in enumerate(sigmas):
        x0 = x - sigma * flow(x, sigma)
        if step + 1 < len(sigmas):
            next_sigma = sigmas[step + 1]
            x = (1 - next_sigma) * x0 + next_sigma * noise()
    return x0


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

    def flow(x: torch.Tensor, sigma: float) -> torch.Tensor:
        # attend to [kept context + chunk], store nothing
        timesteps = torch.full((batch, x.shape[2]), sigma * schedule.train_steps, device=device)
        return model(x, timesteps, context, cache.attention())

    channels, height, width = latent_shape
    while cache.frames_done < num_frames:
        chunk = cache.begin_chunk(min(cache.chunk_frames, num_frames - cache.frames_done))
        shape = (batch, channels, chunk.num_frames, height, width)
        x0 = denoise(flow, shape, generator, sigmas, device)

        # commit: the clean prediction at t = 0 writes the chunk's K/V
        at_zero = torch.zeros(batch, chunk.num_frames, device=device)
        model(x0, at_zero, context, cache.attention(commit=True))
        cache.end_chunk()
        yield LatentChunk(chunk.first_frame, x0)
