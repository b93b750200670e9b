"""``deep_forcing``: a deep sink, the most attended past tokens and a few recent frames.

Deep Forcing (Yi et al., 2025, arXiv 2512.05081; no public code): a *deep sink* of 10 frames
(40-60 % of the 21-frame window) whose temporal phase is moved to just before the recent frames,
and *participative compression*: the cached tokens that recent queries attend to most are kept,
``C = N - R - S`` of them in a budget of ``N`` = 16 frames with ``R`` = 4 recent frames.

Ours: relative positions put the sink on positions 0..9 right before the kept tokens and the
recent frames, which is the paper's re-phasing (the sink's temporal band re-rotated, its other
channels untouched). The compression is continuous: every frame that leaves the recent frames
competes with the kept tokens for the ``C`` slots of a :class:`~headforcing.cache.token_pool.
TokenPoolMemory`, by the engine's importance (attention mass of sampled queries of committed
chunks, decayed per chunk) instead of the paper's burst compression by raw ``q . k`` scores at
the first denoising step whenever a 21-frame window is full; the kept tokens sit on
``ceil(C / T)`` positions in the order of their frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from headforcing.cache.policy import Retention, UniformPolicy, check_position_mode
from headforcing.cache.token_pool import TokenPoolMemory


@dataclass
class DeepForcingPolicy(UniformPolicy):
    """Deep sink + top tokens + recent frames within ``budget_frames``.

    Parameters
    ----------
    sink_frames:
        The deep sink (paper: 10).
    recent_frames:
        Recent frames kept whole (paper: 4).
    budget_frames:
        Sink + kept tokens + recent, in frames' worth of tokens (paper: 16): the kept tokens
        are ``budget - sink - recent`` frames' worth.
    importance_decay:
        Per-chunk decay of the importance the kept tokens are selected by.
    positions:
        ``relative`` (the sink re-phased before the recent frames) or ``absolute``.
    """

    name: ClassVar[str] = "deep_forcing"
    sink_frames: int = 10
    recent_frames: int = 4
    budget_frames: int = 16
    importance_decay: float = 0.9
    positions: str = "relative"

    def __post_init__(self) -> None:
        check_position_mode(self.positions)
        if self.sink_frames < 0 or self.recent_frames < 0:
            raise ValueError("sink_frames and recent_frames must be >= 0")
        if self.budget_frames <= self.sink_frames + self.recent_frames:
            raise ValueError(
                f"budget_frames ({self.budget_frames}) must exceed sink + recent "
                f"({self.sink_frames + self.recent_frames}): the rest is the kept tokens"
            )
        if not 0 < self.importance_decay <= 1:
            raise ValueError(f"importance_decay must lie in (0, 1], got {self.importance_decay}")

    @property
    def pool_frames(self) -> int:
        return self.budget_frames - self.sink_frames - self.recent_frames

    def check(self, chunk_frames: int, trained_frames: int) -> None:
        extent = self.retention(chunk_frames).extent(chunk_frames)
        if self.positions == "relative" and extent > trained_frames:
            raise ValueError(
                f"deep_forcing spans {extent} temporal positions (chunk included), past the "
                f"trained {trained_frames}; lower budget_frames"
            )

    def retention(self, chunk_frames: int) -> Retention:
        pool = TokenPoolMemory(self.pool_frames, self.importance_decay)
        return Retention(self.sink_frames, self.recent_frames, pool, self.positions)

    def describe(self) -> str:
        return (
            f"{self.name}(sink={self.sink_frames}, top={self.pool_frames}, "
            f"recent={self.recent_frames})"
        )
