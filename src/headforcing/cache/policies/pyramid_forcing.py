"""``pyramid_forcing``: three head classes, each with its own memory of the past.

Pyramid Forcing (arXiv 2605.13111, public code; VBench-Long 60 s on Self-Forcing 77.87 ->
81.21) labels every head *wave*, *anchor* or *veil* and keeps, per class:

- wave: a 1-frame sink + a cyclic buffer of period 6 in 4 buckets + the 4 recent frames;
- anchor: a 3-frame sink + strided frames (every 6th, 4 of them) + the 4 recent frames;
- veil: a 3-frame sink + past frames merged into 2x2 patches (4 merged frames) + 4 recent;

with positions clamped to the trained range. Its classifier (sign rate of pre-softmax logits,
then an FFT period) needs statistics our profiler does not take; ours reads the classes from a
head map instead: local heads (mass on the newest frames) are waves, anchor heads anchors,
memory heads veils. Positions are relative, so every class stays inside the trained range
(wave 1 + 4 + 4 + 3 = 12, anchor and veil 14 positions) rather than clamped. The memories:
:mod:`~headforcing.cache.frame_memory` (buckets, strided frames) and
:mod:`~headforcing.cache.patch_memory` (merged patches), each stating its reading of the paper.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from headforcing.cache.frame_memory import FrameMemory
from headforcing.cache.patch_memory import PatchMemory
from headforcing.cache.policy import HeadMapPolicy, Retention
from headforcing.heads.headmap import HeadMap

CLASSES = {"local": "wave", "anchor": "anchor", "memory": "veil"}
LABELS = {kind: label for label, kind in CLASSES.items()}


@dataclass
class PyramidForcingPolicy(HeadMapPolicy):
    """Wave, anchor and veil heads from a head map's labels.

    Parameters
    ----------
    head_map:
        Labels of every head (local -> wave, anchor -> anchor, memory -> veil).
    recent_frames:
        Recent frames every class keeps (paper: 4).
    wave_sink_frames, wave_period, wave_buckets:
        Wave heads (paper: 1, 6, 4).
    anchor_sink_frames, anchor_interval, anchor_capacity:
        Anchor heads (paper: 3, 6, 4).
    veil_sink_frames, veil_patch, veil_capacity:
        Veil heads (paper: 3, 2, 4).
    """

    name: ClassVar[str] = "pyramid_forcing"
    groups: ClassVar[tuple[str, ...]] = tuple(CLASSES.values())
    head_map: HeadMap | None = field(default=None, repr=False)
    recent_frames: int = 4
    wave_sink_frames: int = 1
    wave_period: int = 6
    wave_buckets: int = 4
    anchor_sink_frames: int = 3
    anchor_interval: int = 6
    anchor_capacity: int = 4
    veil_sink_frames: int = 3
    veil_patch: int = 2
    veil_capacity: int = 4
    positions: str = "relative"

    def __post_init__(self) -> None:
        if self.positions != "relative":
            raise ValueError("pyramid_forcing merges past keys before rotation: relative only")
        for name, value in vars(self).items():
            if isinstance(value, int) and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")

    def rule_for(self, label: str) -> Retention:
        kind = CLASSES[label]
        if kind == "wave":
            memory = FrameMemory(self.wave_buckets, self.wave_period, "buckets")
            sink = self.wave_sink_frames
        elif kind == "anchor":
            memory = FrameMemory(self.anchor_capacity, self.anchor_interval, "strided")
            sink = self.anchor_sink_frames
        else:
            memory = PatchMemory(self.veil_capacity, self.veil_patch)
            sink = self.veil_sink_frames
        return Retention(sink, self.recent_frames, memory, self.positions)

    def check(self, chunk_frames: int, trained_frames: int) -> None:
        for label, kind in CLASSES.items():
            extent = self.rule_for(label).extent(chunk_frames)
            if extent > trained_frames:
                raise ValueError(
                    f"pyramid_forcing {kind} heads span {extent} temporal positions, past the "
                    f"trained {trained_frames}; lower their budgets"
                )

    def group_rule(self, group: str, chunk_frames: int) -> Retention:
        return self.rule_for(LABELS[group])

    def head_labels(self) -> list[list[str]]:
        return [[CLASSES[label] for label in row] for row in self.head_map.labels]
