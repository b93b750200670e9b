"""``infinity_rope``: a one-frame sink and five recent frames at window-relative positions.

Infinity-RoPE (arXiv 2511.20649, public code) caches ``local_attn_size`` 6 frames (``sink_size``
1: frame 0, and the 5 most recent) with un-rotated keys and, at every step, rotates them at
positions 0..5 with the chunk's queries right after (block-relativistic RoPE); frame 0 keeps its
phase. Our relative positions are that layout: the engine keeps the recent frames at their
absolute phase (their differences are the layout's) and re-rotates the sink every chunk.

At a prompt switch Infinity-RoPE flushes the cache: the sink and the last 2 frames stay, the
cross-attention is reset, nothing is re-run. That is the ``flush`` switch mode
(:mod:`headforcing.switch`), this policy's default. Not built: the "RoPE cut" (the last query
positions jumping ahead at a scene cut).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from headforcing.cache.policy import Retention, UniformPolicy, check_position_mode


@dataclass
class InfinityRopePolicy(UniformPolicy):
    """``sink_frames`` first frames + the ``recent_frames`` before the chunk, relative positions.

    Parameters
    ----------
    sink_frames:
        First frames kept for ever (Infinity-RoPE: 1).
    recent_frames:
        Frames kept before the chunk besides the sink (Infinity-RoPE: 5).
    positions:
        ``relative`` (Infinity-RoPE) or ``absolute``.
    """

    name: ClassVar[str] = "infinity_rope"
    default_switch: ClassVar[str] = "flush"
    sink_frames: int = 1
    recent_frames: int = 5
    positions: str = "relative"

    def __post_init__(self) -> None:
        check_position_mode(self.positions)
        for name in ("sink_frames", "recent_frames"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def check(self, chunk_frames: int, trained_frames: int) -> None:
        span = self.sink_frames + self.recent_frames + chunk_frames
        if self.positions == "relative" and span > trained_frames:
            raise ValueError(
                f"infinity_rope spans {span} temporal positions (chunk included), past the "
                f"trained {trained_frames}; lower --sink-frames or --recent-frames"
            )

    def retention(self, chunk_frames: int) -> Retention:
        return Retention(self.sink_frames, self.recent_frames, positions=self.positions)

    def describe(self) -> str:
        return f"{self.name}(sink={self.sink_frames}, recent={self.recent_frames})"
