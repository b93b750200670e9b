"""The toy model's training settings (:class:`TrainConfig`: every stage's knobs, checked when
made); :mod:`headforcing.toyworld.train` has the stages and the run."""

from __future__ import annotations

from dataclasses import dataclass

from headforcing.model import (
    get_preset,
)

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
    light_radius:
        The lit world (``world.lit_mask``; 0: the plain world): after the first frame the
        background shows only within this many pixels of a sprite, so the first chunk alone
        holds the whole scene. A probe of whether a first chunk that holds something needed
        makes heads attend to it. Saved in ``config.json``.
    random_background:
        Each clip's background is drawn at random (``world.random_background``, from the
        clip's seed; the prompt still names its colour) instead of the prompt's pattern, so
        only frames that show it can tell it. The model cannot generate a start that the
        prompt leaves open, so every clip's first chunk is given (``random_start_prob`` must be
        1: image-to-video). A probe, with ``light_radius``, of whether heads attend to a first
        chunk that alone holds what the model needs.
    rollout_prob:
        Self-Forcing's recipe in miniature (a stage after the first; 0 disables it). Every
        chunk of every clip is denoised from a clean past (:func:`own_past_layout`), and for
        this share of the canonical clips that past is the model's own video of the prompt,
        generated as at inference: chunk by chunk through a full KV cache, with the EMA
        weights and the toy sampler's schedule at ``rollout_steps`` steps (no gradient). The
        target is still the truth, so the loss pulls a rollout back to the truth from the
        model's own past. The other clips' past is the truth (teacher forcing).
    rollout_steps:
        Sampler steps of those rollouts (even steps, the toy sampler's shift; inference uses
        16, fewer keep the rollouts cheap).
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
    light_radius: int = 0
    random_background: bool = False
    rollout_prob: float = 0.0
    rollout_steps: int = 4
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
        if not 0 <= self.rollout_prob <= 1:
            raise ValueError(f"rollout_prob must lie in [0, 1], got {self.rollout_prob}")
        if self.light_radius < 0:
            raise ValueError(f"light_radius must be >= 0, got {self.light_radius}")
        if self.random_background and self.random_start_prob < 1:
            raise ValueError(
                "random_background needs random_start_prob = 1: a background the prompt leaves "
                "open cannot be generated, so every clip's first chunk must be given"
            )
        if self.rollout_steps < 1:
            raise ValueError(f"rollout_steps must be >= 1, got {self.rollout_steps}")
        others = {
            "self_context_prob": self.self_context_prob,
            "own_input_prob": self.own_input_prob,
            "sink_gap_prob": self.sink_gap_prob,
            "sink_only_prob": self.sink_only_prob,
        }
        mixed = [name for name, value in others.items() if value > 0]
        if self.rollout_prob > 0 and mixed:
            raise ValueError(
                f"rollout_prob replaces the context by rollouts; it cannot be combined with "
                f"{', '.join(mixed)} (set them to 0)"
            )
        if self.sink_gap_prob > 0 and self.sink_gap_max < CHUNK_FRAMES:
            raise ValueError(
                f"sink_gap_max must be at least one chunk ({CHUNK_FRAMES} frames) when "
                f"sink_gap_prob > 0, got {self.sink_gap_max}"
            )
