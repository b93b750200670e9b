"""Train the toy-world model: diffusion forcing with flow matching on 21-frame clips.

Every step renders a fresh batch of clips (scene, motion and prompt drawn from the step's seed),
patchifies them into latents and gives every 3-frame chunk its own noise level. About half the
chunks are left clean (``t = 0``): that is what the KV cache holds at inference (the commit pass
of each finished chunk), so clean context must be in distribution. The whole clip goes through
the model at once under the block-causal mask (each chunk sees itself and earlier chunks), and
the flow-matching loss (target ``v = noise - x0``) is taken on the noisy chunks only: a clean
chunk's target would be unobservable noise. Sprite pixels weigh ``1 + fg_weight`` in the loss.

Half the clips (70 % in the second stage, below) start where the prompt says
(``world.canonical_motion``): the sampler (predict x0, re-noise with fresh noise) makes a model
that was not distilled draw the conditional mean, so the start the model generates from nothing
must be determined by the prompt. The others start anywhere and teach the dynamics from any
state; their first chunk is always clean context, so the model never learns to generate an
undetermined start.

At inference the context is the model's own output, never the truth, and its errors compound
(exposure bias). A second stage trains that away cheaply (``--self-context``): clean context
chunks are replaced by the model's own one-step reconstruction of them (noised, then denoised by
the current weights without gradient), so the model learns to continue from imperfect frames whose
sprites are still where the target chunk expects them.

The shipped weights are two runs (2 CPU threads, 45 min in all)::

    python -m headforcing.toyworld.train --out stage1 --compile
    python -m headforcing.toyworld.train --out DIR --init stage1 --seed 1 --steps 1300 \
        --lr 5e-4 --warmup 50 --self-context 0.5 --random-start 0.3 --compile

(the defaults are the first stage's: 1400 steps of 8 clips at a peak learning rate of 1.4e-3,
seed 0). Each run writes ``model.safetensors`` (the transformer, EMA weights),
``text_encoder.safetensors``, ``config.json`` (preset, text encoder, training settings, seed,
final loss, wall time, and the settings of the run it continued) and ``training_log.jsonl``
(mean loss every ``log_every`` steps, with the wall time).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from headforcing.model import (
    DenseAttention,
    TextContext,
    WanModel,
    block_causal_mask,
    get_preset,
)
from headforcing.toyworld.codec import SPATIAL_STRIDE, encode_frames
from headforcing.toyworld.text import ToyTextEncoder
from headforcing.toyworld.world import random_scene, render_clip, vocabulary

PRESET = "toy"
CHUNK_FRAMES = get_preset(PRESET).video.chunk_frames


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (all saved in ``config.json``).

    Parameters
    ----------
    steps:
        Optimizer steps.
    batch:
        Clips per step.
    clip_frames:
        Frames per clip (the trained horizon: 21 latent frames, as Wan).
    lr, lr_min, warmup, weight_decay, grad_clip:
        AdamW with linear warm-up, then a cosine decay to ``lr_min``.
    clean_prob:
        Chance that a chunk is left clean (``t = 0``, no loss) as context for later chunks.
    random_start_prob:
        Share of clips that start at random (their first chunk is clean context only).
    fg_weight:
        Extra loss weight on sprite pixels and their neighbours (sprites are ~5 % of a frame,
        yet all of the motion).
    time_shift:
        Noise levels of the noisy chunks: ``u ~ U(0, 1)`` shifted by ``s u / (1 + (s - 1) u)``.
    self_context_prob:
        Chance that a clean context chunk is replaced by the model's own reconstruction of it:
        the chunk noised to a level drawn from ``self_context_sigma`` and denoised in one step
        by the current weights (no gradient). At inference the context is the model's own output,
        never the truth; this shows the model imperfect context whose sprites are still where
        the target chunk expects them (0 disables it).
    self_context_sigma:
        Range of those noise levels.
    self_context_refine:
        Noise level of a second reconstruction step (0: one step). The chunk's first
        reconstruction is re-noised to this level with fresh noise and denoised again, as the
        sampler's last step does, so the context carries the residual noise of a sampled chunk
        (the toy sampler's last level is 0.165).
    own_input_prob:
        Chance that a noisy chunk at a level within ``own_input_sigma`` is noised from the
        model's own x0 prediction instead of from the truth; the prediction is made (no
        gradient) from a level drawn uniformly between the chunk's level and that level plus
        ``own_input_span`` (at most 1), and the target is still the truth. The sampler feeds
        the model its own earlier predictions, blurrier than real frames; a model trained on
        real frames alone keeps that blur at low noise instead of correcting it (0 disables
        it).
    own_input_sigma:
        Range of the levels of the chunks that may be noised from the model's own prediction
        (the toy sampler's lower levels, 0.165 to 0.576: below it the target, which grows as
        ``1 / sigma``, would swamp the loss).
    own_input_span:
        How far above the chunk's level the prediction may be made from.
    first_clean_prob:
        Chance that a canonical clip's first chunk, drawn clean (``clean_prob``), stays clean
        context instead of a chunk to denoise: it is clean in ``clean_prob * first_clean_prob``
        of those clips (5 % by default). At inference every later chunk sees the first chunk
        clean (its commit pass).
    sink_truth:
        Self-context never replaces a clip's first chunk: it stays the truth (the prompt's
        canonical start, what the model generates almost exactly from the prompt), while the
        later context is the model's own imperfect reconstruction. The first chunk becomes the
        one reliable copy of the scene's appearance, as a video model's first frame is.
    sink_gap_prob:
        Share of canonical clips that skip ahead after their first chunk: frames ``0 .. c - 1``
        (the first chunk), then frames from ``c + gap`` on, at consecutive positions. This is the
        context a sink policy with relative positions gives far past the horizon (the first
        chunk, then the recent frames); the model learns that the first chunk holds the scene,
        not where its sprites are now.
    sink_gap_max:
        Largest gap in frames (a multiple of the chunk, drawn uniformly from one chunk up).
    sink_only_prob:
        Chance, per step and per later chunk, that the chunk attends to the first chunk and
        itself only (the rest of its context hidden, for every clip of the step): where
        nothing else is left, the model must continue from the first chunk. A head learns to
        find the first chunk by its content (with ``first_negated``, its first frame is
        distinct), as a sink policy with a short window needs.
    first_negated:
        The latent format: every clip's first frame is stored negated (``codec.py``: the toy
        copy of Wan's VAE encoding the first frame apart). Saved in ``config.json``.
    ema_decay:
        Decay of the weight average that is saved.
    seed:
        Seeds the weights, the data and the noise.
    log_every:
        Steps per log line.
    """

    steps: int = 1400
    batch: int = 8
    clip_frames: int = 21
    lr: float = 1.4e-3
    lr_min: float = 5e-5
    warmup: int = 150
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    clean_prob: float = 0.5
    random_start_prob: float = 0.5
    fg_weight: float = 4.0
    time_shift: float = 2.0
    self_context_prob: float = 0.0
    self_context_sigma: tuple[float, float] = (0.3, 0.7)
    self_context_refine: float = 0.0
    own_input_prob: float = 0.0
    own_input_sigma: tuple[float, float] = (0.15, 0.6)
    own_input_span: float = 1.0
    first_clean_prob: float = 0.1
    sink_truth: bool = False
    sink_gap_prob: float = 0.0
    sink_gap_max: int = 0
    sink_only_prob: float = 0.0
    first_negated: bool = False
    ema_decay: float = 0.995
    seed: int = 0
    log_every: int = 50

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch < 1:
            raise ValueError(f"steps and batch must be >= 1, got {self.steps}, {self.batch}")
        if not 0 <= self.clean_prob < 1:
            raise ValueError(f"clean_prob must lie in [0, 1), got {self.clean_prob}")
        if self.clip_frames < 1:
            raise ValueError(f"clip_frames must be >= 1, got {self.clip_frames}")
        if not 0 <= self.random_start_prob <= 1:
            raise ValueError(f"random_start_prob must lie in [0, 1], got {self.random_start_prob}")
        if not 0 <= self.self_context_prob <= 1:
            raise ValueError(f"self_context_prob must lie in [0, 1], got {self.self_context_prob}")
        low, high = self.self_context_sigma
        if not 0 < low <= high <= 1:
            raise ValueError(
                f"self_context_sigma must satisfy 0 < low <= high <= 1, got {low, high}"
            )
        if not 0 <= self.self_context_refine < 1:
            raise ValueError(
                f"self_context_refine must lie in [0, 1), got {self.self_context_refine}"
            )
        if self.self_context_refine > 0 and self.self_context_prob == 0:
            raise ValueError("self_context_refine needs self-context (self_context_prob > 0)")
        if not 0 <= self.own_input_prob <= 1:
            raise ValueError(f"own_input_prob must lie in [0, 1], got {self.own_input_prob}")
        low, high = self.own_input_sigma
        if not 0 < low <= high <= 1:
            raise ValueError(f"own_input_sigma must satisfy 0 < low <= high <= 1, got {low, high}")
        if self.own_input_span <= 0:
            raise ValueError(f"own_input_span must be > 0, got {self.own_input_span}")
        if not 0 <= self.first_clean_prob <= 1:
            raise ValueError(f"first_clean_prob must lie in [0, 1], got {self.first_clean_prob}")
        if not 0 <= self.sink_only_prob <= 1:
            raise ValueError(f"sink_only_prob must lie in [0, 1], got {self.sink_only_prob}")
        if not 0 <= self.sink_gap_prob <= 1:
            raise ValueError(f"sink_gap_prob must lie in [0, 1], got {self.sink_gap_prob}")
        if self.sink_gap_prob > 0 and self.sink_gap_max < CHUNK_FRAMES:
            raise ValueError(
                f"sink_gap_max must be at least one chunk ({CHUNK_FRAMES} frames) when "
                f"sink_gap_prob > 0, got {self.sink_gap_max}"
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
        clip = render_clip(scene, config.clip_frames + gap, seed)
        if gap:  # the first chunk, then the frames after the gap
            clip = np.concatenate([clip[:CHUNK_FRAMES], clip[CHUNK_FRAMES + gap :]])
        prompts.append(scene.prompt())
        clips.append(clip)
        masks.append(_dilate((clip != scene.background_image()).any(-1)))
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
    """
    batch = len(random_start)
    uniform = torch.rand(batch, num_chunks, generator=generator)
    shift = config.time_shift
    sigmas = shift * uniform / (1 + (shift - 1) * uniform)
    clean = torch.rand(batch, num_chunks, generator=generator) < config.clean_prob
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


class DiffusionForcing(nn.Module):
    """The transformer and the text encoder with the diffusion-forcing loss of one batch."""

    def __init__(self, model: WanModel, text_encoder: ToyTextEncoder, clip_frames: int) -> None:
        super().__init__()
        self.model = model
        self.text_encoder = text_encoder
        config = model.config
        self.chunk_frames = CHUNK_FRAMES
        latent_size = get_preset(PRESET).video.height // SPATIAL_STRIDE
        self.grid = (latent_size // config.patch_size[1], latent_size // config.patch_size[2])
        self.mask = block_causal_mask(clip_frames, CHUNK_FRAMES)
        self.positions = torch.arange(clip_frames)

    def loss(
        self,
        batch: Batch,
        sigmas: torch.Tensor,
        noise: torch.Tensor,
        context_levels: torch.Tensor | None = None,
        refine: tuple[float, torch.Tensor] | None = None,
        own_input: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """noise: ``[B, C, F, h, w]``; sigmas: ``[B, chunks]`` -> weighted MSE on v (scalar).

        ``context_levels [B, chunks]`` (:func:`self_context_levels`): clean chunks with a level
        above 0 are replaced by the model's one-step reconstruction from that level first;
        ``refine = (level, fresh noise)`` adds a second step from that level.
        ``own_input = (levels [B, chunks], noise)`` (:func:`own_input_levels`): noisy chunks
        with a level above 0 are noised from the model's x0 prediction from that level (made
        with that noise) instead of from the truth; their target is the v that leads back to
        the truth, ``(noisy - x0) / sigma``. ``mask``: the frame mask ``[F, F]`` of this batch
        (:func:`sink_only_mask`; block-causal by default).
        """
        latents = batch.latents
        context = self.model.encode_text(self.text_encoder.encode(batch.prompts))
        mask = self.mask if mask is None else mask
        attention = DenseAttention(self.model.rope, self.positions, *self.grid, mask)
        if context_levels is None:
            context_levels = torch.zeros_like(sigmas)
        own_levels = own_input[0] if own_input is not None else torch.zeros_like(sigmas)
        if bool((context_levels > 0).any()) or bool((own_levels > 0).any()):
            latents = self._own_context(
                latents, sigmas, noise, context_levels, context, attention, refine, own_input
            )
        sigma_frames = self._per_frame(sigmas, latents.shape[2])  # [B, F]
        sigma_b = sigma_frames[:, None, :, None, None]
        noisy = (1 - sigma_b) * latents + sigma_b * noise
        flow = self.model(noisy, sigma_frames * 1000, context, attention)
        target = noise - batch.latents
        own_b = self._per_frame(own_levels > 0, latents.shape[2])[:, None, :, None, None]
        if bool(own_b.any()):
            back = (noisy - batch.latents) / sigma_b.clamp(min=1e-6)
            target = torch.where(own_b, back, target)
        error = ((flow - target).pow(2) * batch.weights).mean(dim=(1, 3, 4))  # [B, F]
        weight = (sigma_frames > 0).float()
        return (error * weight).sum() / weight.sum().clamp(min=1)

    def _per_frame(self, per_chunk: torch.Tensor, frames: int) -> torch.Tensor:
        return per_chunk.repeat_interleave(self.chunk_frames, dim=1)[:, :frames]

    @torch.no_grad()
    def _own_context(
        self,
        latents: torch.Tensor,
        sigmas: torch.Tensor,
        noise: torch.Tensor,
        context_levels: torch.Tensor,
        context: TextContext,
        attention: DenseAttention,
        refine: tuple[float, torch.Tensor] | None = None,
        own_input: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``latents`` with the chosen chunks replaced by the model's x0 prediction, all from
        one model call: clean chunks with a context level above 0 from that level (a clean
        chunk's ``noise`` is otherwise unused, so it is reused here) and, with ``own_input =
        (levels, noise)``, noisy chunks with a level above 0 from that level and that noise;
        the other chunks are noised as in the loss pass. With ``refine = (level, noise)`` the
        context chunks' prediction is re-noised to ``level`` and predicted again (the noisy
        chunks keep their first prediction)."""
        frames = latents.shape[2]
        own_levels, own_noise = own_input or (torch.zeros_like(sigmas), noise)
        chosen = self._per_frame(context_levels > 0, frames)  # [B, F]
        own = self._per_frame(own_levels > 0, frames)
        per_chunk = torch.where(
            context_levels > 0, context_levels, torch.where(own_levels > 0, own_levels, sigmas)
        )
        levels = self._per_frame(per_chunk, frames)
        level_b = levels[:, None, :, None, None]
        chosen_b, own_b = chosen[:, None, :, None, None], own[:, None, :, None, None]
        noisy = (1 - level_b) * latents + level_b * torch.where(own_b, own_noise, noise)
        x0 = noisy - level_b * self.model(noisy, levels * 1000, context, attention)
        first = x0
        if refine is not None and bool(chosen.any()):
            level, fresh = refine
            noisy = torch.where(chosen_b, (1 - level) * x0 + level * fresh, noisy)
            levels = torch.where(chosen, torch.full_like(levels, level), levels)
            level_b = levels[:, None, :, None, None]
            x0 = noisy - level_b * self.model(noisy, levels * 1000, context, attention)
        return torch.where(chosen_b, x0, torch.where(own_b, first, latents))


def learning_rate(step: int, config: TrainConfig) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr_min + 0.5 * (config.lr - config.lr_min) * (1 + math.cos(math.pi * progress))


def train(
    config: TrainConfig,
    *,
    fixed_batch: bool = False,
    on_log: Callable[[dict], None] | None = None,
    on_checkpoint: Callable[[int, DiffusionForcing], None] | None = None,
    checkpoint_every: int = 500,
    init: Path | None = None,
    compile: bool = False,
) -> tuple[DiffusionForcing, DiffusionForcing, list[float]]:
    """Train from scratch; returns the trained modules, their EMA copy and the loss of every step.

    ``fixed_batch`` reuses step 0's clips, noise and noise levels at every step (a pure
    optimisation check for tests). ``on_checkpoint(step, ema)`` is called every
    ``checkpoint_every`` steps (intermediate weights for long runs). ``init`` continues from
    the weights a previous run saved there (fresh optimizer and schedule; the data of step
    ``k`` is drawn from ``(seed, k)``, so give a continuation another seed). ``compile``
    runs the transformer through ``torch.compile``: the same math with its elementwise work
    fused, 1.08-1.14x faster per step on 2 CPU threads after a compile of up to two minutes
    (``benchmarks/toyworld_train_speed.py``); it needs a C++ compiler.
    """
    torch.manual_seed(config.seed)
    model = WanModel(get_preset(PRESET).model)
    net = DiffusionForcing(model, text_encoder_for(seed=config.seed), config.clip_frames).train()
    if init is not None:
        _load_weights(net, init)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    if compile:
        net.model.compile()  # in place: parameter names and the EMA copy are unchanged
    # no weight decay on the word table (keeps the UNK row fixed), norms, modulation, biases
    decay = [p for n, p in net.named_parameters() if p.dim() >= 2 and "words" not in n]
    no_decay = [p for n, p in net.named_parameters() if p.dim() < 2 or "words" in n]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay}],
        lr=config.lr,
        weight_decay=0.0,
    )
    generator = torch.Generator().manual_seed(config.seed)
    num_chunks = -(-config.clip_frames // net.chunk_frames)
    losses: list[float] = []
    start = time.perf_counter()
    batch = None
    for step in range(config.steps):
        if batch is None or not fixed_batch:
            clips = sample_batch(config.batch, config, step)
            sigmas = chunk_sigmas(clips.random_start, num_chunks, config, generator)
            noise = torch.randn(clips.latents.shape, generator=generator)
            levels = refine = None
            if config.self_context_prob > 0:
                levels = self_context_levels(sigmas, config, generator)
                if config.self_context_refine > 0:
                    fresh = torch.randn(clips.latents.shape, generator=generator)
                    refine = (config.self_context_refine, fresh)
            own_input = None
            if config.own_input_prob > 0:
                own_levels = own_input_levels(sigmas, config, generator)
                own_input = (own_levels, torch.randn(clips.latents.shape, generator=generator))
            mask = None
            if config.sink_only_prob > 0:
                mask = sink_only_mask(config.clip_frames, net.chunk_frames, config, generator)
            batch = (clips, sigmas, noise, levels, refine, own_input, mask)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        loss = net.loss(*batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
        optimizer.step()
        _update_ema(ema, net, min(config.ema_decay, (1 + step) / (10 + step)))
        losses.append(loss.item())
        if on_log is not None and (step + 1) % config.log_every == 0:
            recent = losses[-config.log_every :]
            on_log(
                {
                    "step": step + 1,
                    "loss": sum(recent) / len(recent),
                    "lr": learning_rate(step, config),
                    "wall_s": round(time.perf_counter() - start, 1),
                }
            )
        if on_checkpoint is not None and (step + 1) % checkpoint_every == 0:
            on_checkpoint(step + 1, ema)
    return net, ema, losses


@torch.no_grad()
def _load_weights(net: DiffusionForcing, folder: Path) -> None:
    """Load a saved run's weights (float16 files) into ``net`` as float32, strictly."""
    for module, name in ((net.model, "model"), (net.text_encoder, "text_encoder")):
        state = load_file(str(folder / f"{name}.safetensors"))
        module.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)


@torch.no_grad()
def _update_ema(ema: nn.Module, net: nn.Module, decay: float) -> None:
    for averaged, current in zip(ema.parameters(), net.parameters(), strict=True):
        averaged.lerp_(current, 1 - decay)


STORED_DTYPE = torch.float16  # halves the shipped files; loading casts back to float32


def save(out: Path, ema: DiffusionForcing, config: TrainConfig, summary: dict) -> None:
    """Write the weights (safetensors, float16) and ``config.json`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for module, name in ((ema.model, "model"), (ema.text_encoder, "text_encoder")):
        state = {k: v.to(STORED_DTYPE).contiguous() for k, v in module.state_dict().items()}
        save_file(state, str(out / f"{name}.safetensors"))
    text = ema.text_encoder
    meta = {
        "preset": PRESET,
        "model": asdict(get_preset(PRESET).model),
        "video": asdict(get_preset(PRESET).video),
        "text_encoder": {
            "vocabulary": text.vocabulary,
            "text_len": text.text_len,
            "text_dim": text.text_dim,
            "num_heads": text.attention.num_heads,
        },
        "latent": {
            "kind": "pixel_unshuffle",
            "spatial_stride": SPATIAL_STRIDE,
            "range": [-1, 1],
            "first_frame": "negated" if config.first_negated else "plain",
        },
        "train": asdict(config),
        "stored_dtype": str(STORED_DTYPE).removeprefix("torch."),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        **summary,
    }
    (out / "config.json").write_text(json.dumps(meta, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for weights and logs")
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--batch", type=int, default=TrainConfig.batch)
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--init", type=Path, default=None, help="continue from a run's weights")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="run the transformer through torch.compile (needs a C++ compiler; see train())",
    )
    parser.add_argument("--warmup", type=int, default=TrainConfig.warmup)
    parser.add_argument(
        "--self-context",
        type=float,
        default=TrainConfig.self_context_prob,
        help="share of clean context chunks replaced by the model's own reconstruction",
    )
    parser.add_argument(
        "--random-start",
        type=float,
        default=TrainConfig.random_start_prob,
        help="share of clips that start anywhere (the rest start where the prompt says)",
    )
    parser.add_argument(
        "--self-context-sigma",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        default=TrainConfig.self_context_sigma,
        help="range of the noise levels the self-context chunks are reconstructed from",
    )
    parser.add_argument(
        "--self-context-refine",
        type=float,
        default=TrainConfig.self_context_refine,
        help="noise level of a second self-context reconstruction step (0: one step)",
    )
    parser.add_argument(
        "--own-input",
        type=float,
        default=TrainConfig.own_input_prob,
        help="share of low-noise chunks noised from the model's own prediction, not the truth",
    )
    parser.add_argument(
        "--own-input-span",
        type=float,
        default=TrainConfig.own_input_span,
        help="how far above a chunk's level its own prediction may be made from",
    )
    parser.add_argument(
        "--fg-weight",
        type=float,
        default=TrainConfig.fg_weight,
        help="extra loss weight on sprite pixels and their neighbours",
    )
    parser.add_argument(
        "--time-shift",
        type=float,
        default=TrainConfig.time_shift,
        help="shift of the training noise levels (higher: more high-noise samples)",
    )
    parser.add_argument(
        "--first-clean",
        type=float,
        default=TrainConfig.first_clean_prob,
        help="chance that a canonical clip's first chunk drawn clean stays clean (else learned)",
    )
    parser.add_argument(
        "--sink-truth",
        action="store_true",
        help="self-context never replaces the first chunk: it stays the truth",
    )
    parser.add_argument(
        "--sink-gap",
        type=float,
        default=TrainConfig.sink_gap_prob,
        help="share of canonical clips that skip ahead after their first chunk",
    )
    parser.add_argument(
        "--sink-gap-max",
        type=int,
        default=TrainConfig.sink_gap_max,
        help="largest such gap, in frames",
    )
    parser.add_argument(
        "--sink-only",
        type=float,
        default=TrainConfig.sink_only_prob,
        help="chance per step and later chunk that it sees only the first chunk and itself",
    )
    parser.add_argument(
        "--first-negated",
        action="store_true",
        help="latent format: each clip's first frame stored negated (Wan's first frame apart)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = TrainConfig(
        steps=args.steps,
        seed=args.seed,
        batch=args.batch,
        lr=args.lr,
        warmup=args.warmup,
        self_context_prob=args.self_context,
        random_start_prob=args.random_start,
        self_context_sigma=tuple(args.self_context_sigma),
        self_context_refine=args.self_context_refine,
        own_input_prob=args.own_input,
        own_input_span=args.own_input_span,
        fg_weight=args.fg_weight,
        time_shift=args.time_shift,
        first_clean_prob=args.first_clean,
        sink_truth=args.sink_truth,
        sink_gap_prob=args.sink_gap,
        sink_gap_max=args.sink_gap_max,
        first_negated=args.first_negated,
        sink_only_prob=args.sink_only,
    )

    args.out.mkdir(parents=True, exist_ok=True)
    log_path = args.out / "training_log.jsonl"
    with log_path.open("w") as log:

        def write(record: dict) -> None:
            log.write(json.dumps(record) + "\n")
            log.flush()
            print(json.dumps(record), flush=True)

        start = time.perf_counter()

        def checkpoint(step: int, ema: DiffusionForcing) -> None:
            save(args.out / "checkpoint", ema, config, {"step": step})

        _, ema, losses = train(
            config,
            on_log=write,
            on_checkpoint=checkpoint,
            init=args.init,
            compile=args.compile,
        )
        wall = time.perf_counter() - start
    tail = losses[-config.log_every :]
    summary = {
        "final_loss": sum(tail) / len(tail),
        "wall_s": round(wall, 1),
        "compiled": args.compile,
    }
    if args.init is not None:
        previous = json.loads((args.init / "config.json").read_text())
        keys = ("train", "final_loss", "wall_s", "compiled", "init")
        summary["init"] = {key: previous[key] for key in keys if key in previous}
    save(args.out, ema, config, summary)
    print(f"saved to {args.out}: {json.dumps(summary)}")


if __name__ == "__main__":
    main()
