"""A cache policy written outside headforcing: keep every other past frame.

Besides the last ``recent_frames`` frames, every head keeps every second frame that leaves them
(frames 0, 2, 4, ...), the newest ``memory_frames`` of those, shown on consecutive temporal
positions right before the recent frames (relative positions: inside the trained range).

    headforcing generate "a red circle bounces over a green striped background" \\
        --policy examples/every_other_frame.py:EveryOtherFrame --out every_other.mp4
"""

from dataclasses import dataclass
from typing import ClassVar

from headforcing import FrameMemory, Retention, UniformPolicy, register_policy


@register_policy
@dataclass
class EveryOtherFrame(UniformPolicy):
    """Every other frame of the past, the newest ``memory_frames`` of them, and the last
    ``recent_frames`` frames whole."""

    name: ClassVar[str] = "every_other_frame"
    memory_frames: int = 6
    recent_frames: int = 6
    positions: str = "relative"

    def __post_init__(self) -> None:
        if self.memory_frames < 1 or self.recent_frames < 0:
            raise ValueError(
                f"memory_frames must be >= 1 and recent_frames >= 0, got "
                f"{self.memory_frames} and {self.recent_frames}"
            )

    def check(self, chunk_frames: int, trained_frames: int) -> None:
        extent = self.retention(chunk_frames).extent(chunk_frames)
        if extent > trained_frames:
            raise ValueError(
                f"every_other_frame spans {extent} temporal positions, past the trained "
                f"{trained_frames}: lower memory_frames or recent_frames"
            )

    def retention(self, chunk_frames: int) -> Retention:
        memory = FrameMemory(capacity_frames=self.memory_frames, interval=2, mode="strided")
        return Retention(0, self.recent_frames, memory, self.positions)
