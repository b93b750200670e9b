"""``dummy_forcing``: half of the heads keep almost nothing; the rest a sink or a neighbour window.

Dummy Forcing (public code; Self-Forcing 17.5 -> 24.3 frames/s) programs heads from online
profiling (sampled query rows; attention mass on the first chunk, the middle and the current
chunk): with ``cost = max(sink mass / max sink mass, middle mass / max middle mass)`` over all
heads, the ``dummy_fraction`` of heads with the lowest cost become *dummy* heads that keep only
the current chunk and the last frame; every other head joins the *sink* group (first 3 frames +
recent frames, 12 frames attended) or the *neighbour* group (the 12 most recent frames),
whichever of its sink and middle masses is larger. One attention call per group.

Ours takes the masses from a head map's statistics (``headforcing profile``, or the calibration
a run without a map makes first: the same sampled-row measure, chunks 3-6). Differences: the
paper's base cache uses Self-Forcing's absolute positions; ours defaults to relative positions
(every group inside the trained range), ``--positions absolute`` gives the paper's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from headforcing.cache.policy import HeadMapPolicy, Retention, check_position_mode
from headforcing.heads.headmap import HeadMap

GROUPS = ("dummy", "sink", "neighbour")


def program_heads(head_map: HeadMap, dummy_fraction: float) -> list[list[str]]:
    """``[layer][head]`` group of every head from the map's sink and middle masses."""
    if not {"sink", "middle"} <= set(head_map.stats):
        raise ValueError(
            "dummy_forcing needs a head map with attention statistics (sink and middle mass): "
            "profile one with `headforcing profile`"
        )
    sink, middle = head_map.stats["sink"], head_map.stats["middle"]
    layers, width = range(head_map.num_layers), range(head_map.num_heads)
    heads = [(layer, head) for layer in layers for head in width]
    top_sink = max(sink[layer][head] for layer, head in heads) or 1.0
    top_middle = max(middle[layer][head] for layer, head in heads) or 1.0
    cost = {
        (layer, head): max(sink[layer][head] / top_sink, middle[layer][head] / top_middle)
        for layer, head in heads
    }
    ranked = sorted(heads, key=lambda pair: (cost[pair], pair))
    dummies = set(ranked[: round(dummy_fraction * len(heads))])

    def group(layer: int, head: int) -> str:
        if (layer, head) in dummies:
            return "dummy"
        return "sink" if sink[layer][head] >= middle[layer][head] else "neighbour"

    return [[group(layer, head) for head in width] for layer in layers]


@dataclass
class DummyForcingPolicy(HeadMapPolicy):
    """Dummy, sink and neighbour head groups programmed from a head map's statistics.

    Parameters
    ----------
    head_map:
        A profiled map (its ``stats``); ``None`` until set (a run profiles one first).
    dummy_fraction:
        Share of all heads that become dummy heads (paper: 180 of 360, 0.5).
    dummy_frames:
        Frames a dummy head keeps before the chunk (paper: the last one).
    window_frames:
        Frames the sink and neighbour groups attend to, chunk included (paper: 12).
    sink_frames:
        The sink group's first frames (paper: 3).
    positions:
        ``relative`` (ours) or ``absolute`` (the paper's Self-Forcing positions).
    """

    name: ClassVar[str] = "dummy_forcing"
    groups: ClassVar[tuple[str, ...]] = GROUPS
    head_map: HeadMap | None = field(default=None, repr=False)
    dummy_fraction: float = 0.5
    dummy_frames: int = 1
    window_frames: int = 12
    sink_frames: int = 3
    positions: str = "relative"

    def __post_init__(self) -> None:
        check_position_mode(self.positions)
        if not 0 <= self.dummy_fraction <= 1:
            raise ValueError(f"dummy_fraction must lie in [0, 1], got {self.dummy_fraction}")
        if self.dummy_frames < 0 or self.sink_frames < 0:
            raise ValueError("dummy_frames and sink_frames must be >= 0")

    def check(self, chunk_frames: int, trained_frames: int) -> None:
        if self.window_frames < self.sink_frames + chunk_frames:
            raise ValueError(
                f"window_frames ({self.window_frames}) must hold the sink ({self.sink_frames}) "
                f"and a chunk ({chunk_frames})"
            )
        if self.positions == "relative" and self.window_frames > trained_frames:
            raise ValueError(
                f"window_frames {self.window_frames} is past the trained {trained_frames}"
            )

    def group_rule(self, group: str, chunk_frames: int) -> Retention:
        if group == "dummy":
            return Retention(0, self.dummy_frames, positions=self.positions)
        if group == "sink":
            recent = self.window_frames - self.sink_frames - chunk_frames
            return Retention(self.sink_frames, recent, positions=self.positions)
        return Retention(0, self.window_frames - chunk_frames, positions=self.positions)

    def head_labels(self) -> list[list[str]]:
        return program_heads(self.head_map, self.dummy_fraction)
