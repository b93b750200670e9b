"""The data of a training step: a batch of rendered clips and their latents, and the noise
level of every chunk (clean context, self-context, sink-only and own-input draws), all drawn
from the step's seed (:mod:`headforcing.toyworld.train`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from headforcing.model import (
    block_causal_mask,
    get_preset,
)
from headforcing.toyworld.codec import SPATIAL_STRIDE, encode_frames
from headforcing.toyworld.text import ToyTextEncoder
from headforcing.toyworld.train_config import CHUNK_FRAMES, PRESET, TrainConfig
from headforcing.toyworld.world import (
    random_background,
    random_scene,
    render,
    simulate,
    vocabulary,
)


def text_encoder_for(preset_name: str = PRESET, seed: int = 0) -> ToyTextEncoder:
    """A fresh toy text encoder sized for the preset (seeded)."""
    config = get_preset(preset_name).model
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return ToyTextEncoder(vocabulary(), config.text_len, config.text_dim)


@dataclass(frozen=True)
class Batch:
    """One training batch: prompts, latents ``[B, C, F, h, w]``, loss weights of the same shape
    (``1 + fg_weight`` on and next to sprites, 1 elsewhere) and ``random_start [B]``: clips
    that start anywhere, whose first chunk is only ever clean context."""

    prompts: list[str]
    latents: torch.Tensor
    weights: torch.Tensor
    random_start: torch.Tensor


def sample_batch(batch: int, config: TrainConfig, step: int) -> Batch:
    """``batch`` random clips of step ``step`` (same seed and step, same batch).

    A share ``1 - random_start_prob`` starts where the prompt says (the canonical start, what the
    model must generate from nothing); the rest start at random positions and velocities and
    teach the dynamics from any state.
    """
    rng = np.random.default_rng([config.seed, step])
    prompts, clips, masks, random_start = [], [], [], []
    for _ in range(batch):
        scene = random_scene(rng)
        is_random = bool(rng.random() < config.random_start_prob)
        seed = int(rng.integers(2**31)) if is_random else None
        gap = 0
        if config.sink_gap_prob > 0 and not is_random and rng.random() < config.sink_gap_prob:
            gap = CHUNK_FRAMES * int(rng.integers(1, config.sink_gap_max // CHUNK_FRAMES + 1))
        corners = simulate(scene, config.clip_frames + gap, seed)
        if gap:  # the first chunk, then the frames after the gap
            corners = np.concatenate([corners[:CHUNK_FRAMES], corners[CHUNK_FRAMES + gap :]])
        background = random_background(scene, rng) if config.random_background else None
        prompts.append(scene.prompt())
        clips.append(render(scene, corners, config.light_radius, background))
        masks.append(_dilate((render(scene, corners) != scene.background_image()).any(-1)))
        random_start.append(is_random)
    foreground = np.repeat(np.stack(masks)[..., None], 3, axis=-1).astype(np.uint8) * 255
    weights = 1 + config.fg_weight * (encode_frames(foreground, SPATIAL_STRIDE) > 0).float()
    latents = encode_frames(np.stack(clips), SPATIAL_STRIDE, config.first_negated)
    return Batch(prompts, latents, weights, torch.tensor(random_start))


def _dilate(mask: np.ndarray) -> np.ndarray:
    """``[F, H, W]`` boolean mask grown by one pixel (8-neighbourhood)."""
    padded = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
    height, width = mask.shape[1:]
    shifted = [
        padded[:, 1 + dr : 1 + dr + height, 1 + dc : 1 + dc + width]
        for dr in (-1, 0, 1)
        for dc in (-1, 0, 1)
    ]
    return np.any(shifted, axis=0)


def chunk_sigmas(
    random_start: torch.Tensor, num_chunks: int, config: TrainConfig, generator: torch.Generator
) -> torch.Tensor:
    """Noise level of every chunk ``[B, num_chunks]``: 0 (clean context) or a shifted uniform.

    The first chunk of a random-start clip is always clean: the model never learns to generate
    a start the prompt does not determine; a canonical clip's is clean with probability
    ``clean_prob * first_clean_prob`` (else the model learns to generate it from the prompt).
    In a rollout stage (``rollout_prob > 0``) every chunk has a clean past of its own, so no
    other chunk is left clean.
    """
    batch = len(random_start)
    uniform = torch.rand(batch, num_chunks, generator=generator)
    shift = config.time_shift
    sigmas = shift * uniform / (1 + (shift - 1) * uniform)
    clean_prob = 0.0 if config.rollout_prob > 0 else config.clean_prob
    clean = torch.rand(batch, num_chunks, generator=generator) < clean_prob
    clean[:, 0] &= torch.rand(batch, generator=generator) < config.first_clean_prob
    clean[:, 0] |= random_start
    return torch.where(clean, torch.zeros_like(sigmas), sigmas)


def self_context_levels(
    sigmas: torch.Tensor, config: TrainConfig, generator: torch.Generator
) -> torch.Tensor:
    """Noise level ``[B, chunks]`` at which each clean chunk is re-noised and reconstructed by
    the model (0: the chunk stays the truth). Noisy chunks are never replaced."""
    low, high = config.self_context_sigma
    levels = low + (high - low) * torch.rand(sigmas.shape, generator=generator)
    chosen = (torch.rand(sigmas.shape, generator=generator) < config.self_context_prob) & (
        sigmas == 0
    )
    if config.sink_truth:
        chosen[:, 0] = False
    return torch.where(chosen, levels, torch.zeros_like(levels))


def sink_only_mask(
    num_frames: int, chunk_frames: int, config: TrainConfig, generator: torch.Generator
) -> torch.Tensor:
    """The block-causal frame mask ``[F, F]`` with, for each later chunk chosen with
    probability ``sink_only_prob``, every key frame hidden but the first chunk and its own."""
    mask = block_causal_mask(num_frames, chunk_frames)
    chunk = torch.arange(num_frames) // chunk_frames
    chosen = torch.rand(int(chunk[-1]) + 1, generator=generator) < config.sink_only_prob
    chosen[0] = False
    hidden = chosen[chunk][:, None] & (chunk[None, :] > 0) & (chunk[None, :] < chunk[:, None])
    return mask & ~hidden


def own_past_layout(num_frames: int, chunk_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame positions ``[2F]`` and frame mask ``[2F, 2F]`` of a clip shown twice: first its
    clean past (the model's rollout or the truth), block-causal as the KV cache's commit passes
    are, then its noisy chunks, each seeing the clean frames of the chunks before it and its own
    noisy frames. So every chunk is denoised from a clean past at its true positions, as at
    inference, and all chunks of a clip are trained in one call."""
    chunk = torch.arange(num_frames) // chunk_frames
    causal = chunk[:, None] >= chunk[None, :]
    before = chunk[:, None] > chunk[None, :]
    own = chunk[:, None] == chunk[None, :]
    mask = torch.cat(
        [torch.cat([causal, torch.zeros_like(causal)], 1), torch.cat([before, own], 1)], 0
    )
    return torch.arange(num_frames).repeat(2), mask


def own_input_levels(
    sigmas: torch.Tensor, config: TrainConfig, generator: torch.Generator
) -> torch.Tensor:
    """Level ``[B, chunks]`` from which the model predicts the x0 that each noisy chunk is then
    noised from (0: the chunk is noised from the truth): uniform between the chunk's own level
    and that level plus ``own_input_span`` (at most 1), for a share ``own_input_prob`` of the
    noisy chunks at levels in ``own_input_sigma``. Clean chunks are never chosen."""
    top = (sigmas + config.own_input_span).clamp(max=1)
    levels = sigmas + (top - sigmas) * torch.rand(sigmas.shape, generator=generator)
    low, high = config.own_input_sigma
    eligible = (sigmas >= low) & (sigmas <= high)
    chosen = (torch.rand(sigmas.shape, generator=generator) < config.own_input_prob) & eligible
    return torch.where(chosen, levels, torch.zeros_like(levels))
