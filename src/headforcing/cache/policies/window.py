"""``window``: Self-Forcing's rolling KV window, with an optional sink.

Self-Forcing (Huang et al., 2025, arXiv 2506.08009) attends to the last ``local_attn_size``
latent frames, the current chunk included; its first ``sink_size`` frames never roll out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from headforcing.cache.policy import Retention, UniformPolicy, check_position_mode


@dataclass
class WindowPolicy(UniformPolicy):
    """Attend to a window of ``window_frames`` latent frames, current chunk included.

    Parameters
    ----------
    window_frames:
        Frames one chunk attends to, itself included (Self-Forcing's ``local_attn_size``;
        21 = the trained range of Wan2.1). At least one chunk.
    sink_frames:
        The first frames of the video, kept for ever inside the window (``sink_size``).
        ``sink_frames + chunk_frames <= window_frames``.
    positions:
        ``absolute`` (Self-Forcing exactly) or ``relative`` (kept frames on consecutive
        positions, the chunk right after them).
    """

    name: ClassVar[str] = "window"
    window_frames: int = 21
    sink_frames: int = 0
    positions: str = "absolute"

    def __post_init__(self) -> None:
        if self.window_frames < 1:
            raise ValueError(f"window_frames must be >= 1, got {self.window_frames}")
        if self.sink_frames < 0:
            raise ValueError(f"sink_frames must be >= 0, got {self.sink_frames}")
        if self.sink_frames > self.window_frames:
            raise ValueError(
                f"sink_frames ({self.sink_frames}) is larger than the window "
                f"({self.window_frames} frames); use a sink smaller than the window"
            )
        check_position_mode(self.positions)

    def check(self, chunk_frames: int, trained_frames: int) -> None:
        if self.window_frames < chunk_frames:
            raise ValueError(
                f"window_frames ({self.window_frames}) is smaller than one chunk "
                f"({chunk_frames} frames); use a window of at least {chunk_frames}"
            )
        if self.sink_frames + chunk_frames > self.window_frames:
            raise ValueError(
                f"sink_frames ({self.sink_frames}) + chunk ({chunk_frames}) exceed "
                f"window_frames ({self.window_frames}); use a sink of at most "
                f"{self.window_frames - chunk_frames} or a larger window"
            )

    def retention(self, chunk_frames: int) -> Retention:
        # the next chunk brings chunk_frames of its own; the sink and the most recent fill the rest
        recent_frames = self.window_frames - self.sink_frames - chunk_frames
        return Retention(self.sink_frames, recent_frames, positions=self.positions)

    def describe(self) -> str:
        return f"{self.name}(window={self.window_frames}, sink={self.sink_frames})"
