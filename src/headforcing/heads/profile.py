"""Profiling: where does every head's attention go?

:class:`HeadProfiler` observes the cache's attention calls and, at chosen AR steps (chunks) and
passes, takes a sample of query rows of the current chunk, computes their softmax over all keys
attended to (memory grows with rows x keys, never with the full attention matrix) and adds up
the probability mass per region of the history:

- ``sink``: the first chunk (frames ``0 .. sink_frames - 1``);
- ``current``: the chunk being generated;
- ``recent``: the ``recent_frames`` frames right before the chunk;
- ``middle``: everything else.

Calibration (our defaults, after the description in REFERENCE.md section 1): a rollout of
``frames`` latent frames per prompt under a window of the trained range with relative
positions, measured at chunks 3, 4, 5 and 6, every denoising pass (the commit pass excluded).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from headforcing.cache.kv import ChunkInfo, HeadGroup, sample_rows, sampled_attention
from headforcing.heads.headmap import REGIONS, RULES, HeadMap


@dataclass(frozen=True)
class ProfileSettings:
    """What a calibration measures.

    Parameters
    ----------
    chunks:
        AR steps (chunk indices) measured; 3 and later have a distinct sink, middle and recent.
    query_rows:
        Query rows sampled per chunk, group and pass.
    sink_frames, recent_frames:
        Sizes of the sink and recent regions, in latent frames.
    include_commit:
        Also measure the clean commit pass.
    frames:
        Latent frames per calibration rollout (profiling via ``profile_heads``).
    """

    chunks: tuple[int, ...] = (3, 4, 5, 6)
    query_rows: int = 64
    sink_frames: int = 3
    recent_frames: int = 3
    include_commit: bool = False
    frames: int = 21

    def __post_init__(self) -> None:
        if not self.chunks or min(self.chunks) < 1:
            raise ValueError(f"profile chunks must be >= 1 (chunk 0 has no history): {self.chunks}")
        if self.query_rows < 1:
            raise ValueError(f"query_rows must be >= 1, got {self.query_rows}")


class HeadProfiler:
    """An attention observer that accumulates the mass per region for every (layer, head)."""

    def __init__(
        self, num_layers: int, num_heads: int, chunk_frames: int, settings: ProfileSettings
    ) -> None:
        self.settings = settings
        self.chunk_frames = chunk_frames
        self.mass = torch.zeros(len(REGIONS), num_layers, num_heads, dtype=torch.float64)
        self.samples = torch.zeros(num_layers, num_heads, dtype=torch.float64)

    def wants(self, chunk: ChunkInfo, commit: bool) -> bool:
        step = chunk.first_frame // self.chunk_frames
        return step in self.settings.chunks and (commit <= self.settings.include_commit)

    def observe(
        self, layer: int, group: HeadGroup, q: torch.Tensor, chunk: ChunkInfo, commit: bool
    ) -> None:
        if not self.wants(chunk, commit):
            return
        settings = self.settings
        keys, key_frames, valid = group.attended()
        region = torch.full_like(key_frames, REGIONS.index("middle"))
        region[key_frames >= chunk.first_frame - settings.recent_frames] = REGIONS.index("recent")
        region[key_frames < settings.sink_frames] = REGIONS.index("sink")
        region[key_frames >= chunk.first_frame] = REGIONS.index("current")
        rows = sample_rows(q.shape[2], settings.query_rows)
        probs = sampled_attention(q, keys, rows, valid)
        # probs: [B, Hg, R, N] -> mass per region: [Hg, 4] (empty slots have no mass)
        per_region = torch.zeros(*probs.shape[:3], len(REGIONS), device=probs.device)
        per_region.scatter_add_(-1, region.long().expand(*probs.shape[:3], -1), probs)
        per_head = per_region.mean(dim=(0, 2)).double().cpu()
        heads = list(group.heads)
        self.mass[:, layer, heads] += per_head.T
        self.samples[layer, heads] += 1

    def head_map(
        self, preset: str, rule: str = "percentile", calibration=None, **params
    ) -> HeadMap:
        """Classify the statistics gathered so far into a :class:`HeadMap`; ``calibration``
        adds to the record of the settings (prompts, seed, ...)."""
        stats = self.stats()
        labels, rule_record = classify(stats, rule, **params)
        settings = self.settings
        record = {
            "chunks": list(settings.chunks),
            "query_rows": settings.query_rows,
            "sink_frames": settings.sink_frames,
            "recent_frames": settings.recent_frames,
            "passes": "all" if settings.include_commit else "denoising",
            **(calibration or {}),
        }
        return HeadMap(preset, labels, stats, rule_record, record)

    def stats(self) -> dict[str, list[list[float]]]:
        """Mean mass per region, ``{region: [layer][head]}``."""
        if not self.samples.gt(0).all():
            raise RuntimeError("the profiler saw no pass at the chosen chunks; generate longer")
        mean = self.mass / self.samples
        return {name: mean[index].tolist() for index, name in enumerate(REGIONS)}


def classify(stats: dict, rule: str = "percentile", **params) -> tuple[tuple, dict]:
    """Labels from statistics by a named rule (``percentile`` or ``threshold``)."""
    try:
        classify_rule = RULES[rule]
    except KeyError:
        raise ValueError(f"unknown rule {rule!r}; valid rules: {', '.join(RULES)}") from None
    return classify_rule(stats, **{k: v for k, v in params.items() if v is not None})


def profile_heads(
    pipeline,
    prompts: Sequence[str],
    settings: ProfileSettings | None = None,
    rule: str = "percentile",
    seed: int = 0,
    progress=None,
    before_run: bool = False,
    **rule_params,
) -> HeadMap:
    """Run one calibration rollout per prompt and classify the heads (``before_run``: the
    calibration a ``head_forcing`` run without a map makes first, recorded as such)."""
    from headforcing.cache.policies import WindowPolicy

    settings = settings or ProfileSettings()
    video = pipeline.preset.video
    needed = (max(settings.chunks) + 1) * video.chunk_frames
    if settings.frames < needed:
        raise ValueError(
            f"calibration rollouts of {settings.frames} frames never reach chunk "
            f"{max(settings.chunks)}; use at least {needed} frames"
        )
    config = pipeline.model.config
    profiler = HeadProfiler(config.num_layers, config.num_heads, video.chunk_frames, settings)
    for index, prompt in enumerate(prompts):
        cache = pipeline.new_cache(WindowPolicy(video.trained_frames, 0, "relative"))
        cache.observers.append(profiler)
        for _ in pipeline.generate_latents(prompt, settings.frames, cache, seed=seed + index):
            pass
        if progress is not None:
            progress(index + 1, len(prompts))
    return profiler.head_map(
        pipeline.preset.name,
        rule,
        calibration={
            "prompts": list(prompts),
            "frames": settings.frames,
            "token_grid": list(pipeline.token_grid),
            "seed": seed,
            **({"before_run": True} if before_run else {}),
        },
        **rule_params,
    )
