"""Whole past frames kept by a fixed rule of their index: Pyramid Forcing's head classes.

Pyramid Forcing (arXiv 2605.13111) gives each head class a memory between its sink and its
recent frames, ``capacity`` frames of slots:

- ``strided`` (its anchor class): every ``interval``-th frame that leaves the recent frames is
  kept, the oldest overwritten when the slots are full;
- ``buckets`` (its wave class, a cyclic buffer of period ``interval``): a frame joins bucket
  ``(frame mod interval) * capacity // interval`` and is averaged into it (keys in their raw,
  temporally unrotated form, and values), so each bucket summarises one phase of a periodic
  motion. The bucket's temporal position is that of the newest frame it absorbed.

Which frame goes where depends on the frame index alone, so the host decides it with no read of
the device. Merging needs relative positions (keys of different frames are averaged before
rotation); the ``veil`` class (merged patches) is not built: its merge rule is not public.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from headforcing.cache.kv import HeadGroup

MODES = ("strided", "buckets")


@dataclass(frozen=True)
class FrameMemory:
    """Parameters: ``capacity`` frames, the ``interval`` (stride or period) and the ``mode``."""

    capacity_frames: int = 4
    interval: int = 6
    mode: str = "strided"
    importance_decay = None  # selects by frame index, not by attention

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"frame memory mode must be one of {', '.join(MODES)}: {self.mode!r}")
        if self.capacity_frames < 1 or self.interval < 1:
            raise ValueError(
                f"capacity_frames and interval must be >= 1, got "
                f"{self.capacity_frames} and {self.interval}"
            )

    def capacity(self, tokens_per_frame: int) -> int:
        return self.capacity_frames * tokens_per_frame

    @property
    def extent(self) -> int:
        return self.capacity_frames

    def build(self, group: HeadGroup, base: int, band_base: int | None) -> FrameStore:
        if self.mode == "buckets" and group.rule.positions != "relative":
            raise ValueError("frame buckets average keys before rotation: use relative positions")
        return FrameStore(self, group, base, band_base)


class FrameSlots:
    """Whole-slot memories (frames, merged frames): ``slots`` slots of ``tokens`` tokens from
    ``base``, ``frames`` (host) the newest frame in every slot, one temporal position each in
    the order of their frames. Which frame goes where is the host's to decide."""

    def __init__(self, slots: int, tokens: int, group: HeadGroup, base: int, band_base) -> None:
        self.tokens = tokens
        self.region = slice(base, base + slots * tokens)
        self.base, self.band_base = base, band_base
        self.frames: list[int | None] = [None] * slots
        self.known_full = False
        self.device = group.keys.device

    def slot_range(self, slot: int, base: int | None = None) -> slice:
        start = (self.base if base is None else base) + slot * self.tokens
        return slice(start, start + self.tokens)

    def took(self, slot: int, frame: int) -> None:
        self.frames[slot] = frame
        self.known_full = all(held is not None for held in self.frames)

    def positions(self) -> torch.Tensor:
        """Slots in the order of their newest frame, one temporal position each."""
        order = sorted((frame, slot) for slot, frame in enumerate(self.frames) if frame is not None)
        rank = [0] * len(self.frames)
        for position, (_, slot) in enumerate(order):
            rank[slot] = position
        return torch.tensor(rank, device=self.device).repeat_interleave(self.tokens)

    def span(self) -> int:
        return sum(frame is not None for frame in self.frames)

    def full(self) -> torch.Tensor:
        return torch.tensor(self.known_full)  # host-known: never left pending

    def slot_mask(self, capacity: int) -> torch.Tensor:
        mask = torch.zeros(capacity, dtype=torch.bool, device=self.device)
        held = torch.tensor([frame is not None for frame in self.frames], device=self.device)
        mask[self.region] = held.repeat_interleave(self.tokens)
        return mask

    def after_rewind(self, group: HeadGroup, keep: torch.Tensor) -> None:
        """A slot that lost any token goes whole."""
        kept = keep[self.region].view(len(self.frames), self.tokens).all(dim=1).tolist()
        for slot, whole in enumerate(kept):
            if not whole:
                self.forget(slot)
                group.slot_token[self.slot_range(slot)] = -1
        self.known_full = all(frame is not None for frame in self.frames)

    def forget(self, slot: int) -> None:
        self.frames[slot] = None

    def on_prompt_switch(self) -> None:
        return None

    def state_tensors(self) -> list[torch.Tensor]:
        return []


class FrameStore(FrameSlots):
    """One group's frame slots ``base .. base + capacity * T``; ``frames`` (host) the newest
    frame in every slot, ``counts`` (host) how many frames a bucket averaged."""

    def __init__(self, rule: FrameMemory, group: HeadGroup, base: int, band_base) -> None:
        super().__init__(rule.capacity_frames, group.tokens_per_frame, group, base, band_base)
        self.rule = rule
        self.counts = [0] * rule.capacity_frames

    def _slot(self, frame: int) -> int | None:
        rule = self.rule
        if rule.mode == "strided":
            return (
                (frame // rule.interval) % rule.capacity_frames
                if frame % rule.interval == 0
                else None
            )
        return (frame % rule.interval) * rule.capacity_frames // rule.interval

    def absorb(self, group: HeadGroup, frame: int, start: int) -> None:
        slot = self._slot(frame)
        if slot is None:
            return
        source, target = slice(start, start + self.tokens), self.slot_range(slot)
        band = None
        if group.band is not None:
            band = group.unrotate(group.keys[:, :, source, : group.band_dim], frame)
            band_target = self.slot_range(slot, self.band_base)
        count = self.counts[slot] if self.rule.mode == "buckets" else 0
        pairs = [(group.keys[:, :, target], group.keys[:, :, source])]
        pairs.append((group.values[:, :, target], group.values[:, :, source]))
        if band is not None:
            pairs.append((group.band[:, :, band_target], band))
        for old, new in pairs:
            if count:  # a running mean over the bucket's frames
                old.lerp_(new, 1.0 / (count + 1))
            else:
                old.copy_(new)
        group.slot_token[target] = group.slot_token[source]
        self.counts[slot] = count + 1
        self.took(slot, frame)

    def forget(self, slot: int) -> None:
        self.frames[slot], self.counts[slot] = None, 0
