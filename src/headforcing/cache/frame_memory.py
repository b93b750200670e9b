"""Whole past frames kept by a fixed rule of their index: Pyramid Forcing's head classes.

Pyramid Forcing (arXiv 2605.13111) gives each head class a memory between its sink and its
recent frames, ``capacity`` frames of slots:

- ``strided`` (its anchor class): every ``interval``-th frame that leaves the recent frames is
  kept, the oldest overwritten when the slots are full;
- ``buckets`` (its wave class, a cyclic buffer of period ``interval``): a frame joins bucket
  ``(frame mod interval) * capacity // interval`` and is averaged into it (keys in their raw,
  temporally unrotated form, and values), so each bucket summarises one phase of a periodic
  motion. The bucket's temporal position is that of the newest frame it absorbed.

Which frame goes where depends on the frame index alone; it is computed on the device from the
frame's id, for every group of a store at once (they all see the same frames), so that a
chunk's end is the same graph whatever the frame. Merging needs relative positions (keys of
different frames are averaged before rotation). The ``veil`` class (merged patches) is
:mod:`headforcing.cache.patch_memory`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

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

    def build(self, store: Any, base: int, band_base: int | None) -> FrameStore:
        if self.mode == "buckets" and store.rule.positions != "relative":
            raise ValueError("frame buckets average keys before rotation: use relative positions")
        return FrameStore(self, store, base, band_base)


class FrameSlots:
    """Whole-slot memories (frames, merged frames): ``slots`` slots of ``tokens`` tokens from
    ``base``; ``newest [slots]`` (device) the newest frame in every slot (``-1``: empty), one
    temporal position each in the order of their frames. The same for every group of a store."""

    def __init__(self, slots: int, tokens: int, store: Any, base: int, band_base) -> None:
        self.store = store
        self.tokens = tokens
        self.count_slots = slots
        self.region = slice(base, base + slots * tokens)
        self.base, self.band_base = base, band_base
        self.known_full = False
        device = store.keys.device
        self.newest = torch.full((slots,), -1, dtype=torch.long, device=device)
        self._arange = torch.arange(tokens, device=device)

    @property
    def frames(self) -> list[int | None]:
        """The newest frame in every slot (``None``: empty; reads the device: reports)."""
        return [None if frame < 0 else frame for frame in self.newest.tolist()]

    def slot_tokens(self, slot: torch.Tensor, base: int) -> torch.Tensor:
        """``[tokens]`` slots of memory slot ``slot`` (0-dim) in a region starting at ``base``."""
        return base + slot * self.tokens + self._arange

    def took(self, slot: torch.Tensor, frame: torch.Tensor, keep: torch.Tensor) -> None:
        newest = self.newest.gather(0, slot.view(1))
        self.newest.scatter_(0, slot.view(1), torch.where(keep, frame, newest))

    def positions(self) -> torch.Tensor:
        """``[G, slots * tokens]``: slots in the order of their newest frame."""
        held = self.newest >= 0
        earlier = held[None, :] & (self.newest[None, :] < self.newest[:, None])
        rank = earlier.sum(dim=1).repeat_interleave(self.tokens)
        return rank.expand(self.store.num_groups, -1)

    def span(self) -> torch.Tensor:
        return (self.newest >= 0).sum().expand(self.store.num_groups)

    def full(self) -> torch.Tensor:
        return (self.newest >= 0).all()

    def slot_mask(self, group: int, capacity: int) -> torch.Tensor:
        mask = torch.zeros(capacity, dtype=torch.bool, device=self.newest.device)
        mask[self.region] = (self.newest >= 0).repeat_interleave(self.tokens)
        return mask

    def after_rewind(self, keep: torch.Tensor) -> None:
        """A slot that lost any token goes whole."""
        kept = keep[:, self.region].view(-1, self.count_slots, self.tokens).all(dim=2).all(dim=0)
        self.forget(~kept)
        lost = (~kept).repeat_interleave(self.tokens)
        self.store.slot_token[:, self.region] = torch.where(
            lost, -1, self.store.slot_token[:, self.region]
        )
        self.known_full = False

    def forget(self, slots: torch.Tensor) -> None:
        """Empty the slots ``slots [count_slots]`` marks."""
        self.newest.masked_fill_(slots, -1)

    def on_prompt_switch(self) -> None:
        return None

    def state_tensors(self) -> list[torch.Tensor]:
        return [self.newest]


class FrameStore(FrameSlots):
    """The frame slots ``base .. base + capacity * T`` of every group of a store; ``counts``
    (device) how many frames a bucket averaged."""

    def __init__(self, rule: FrameMemory, store: Any, base: int, band_base) -> None:
        super().__init__(rule.capacity_frames, store.tokens_per_frame, store, base, band_base)
        self.rule = rule
        self.counts = torch.zeros(rule.capacity_frames, device=self.newest.device)

    def _slot(self, frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The slot of ``frame`` and whether it is kept (device scalars)."""
        rule = self.rule
        if rule.mode == "strided":
            slot = (frame // rule.interval) % rule.capacity_frames
            return slot, frame % rule.interval == 0
        slot = (frame % rule.interval) * rule.capacity_frames // rule.interval
        return slot, torch.ones_like(frame, dtype=torch.bool)

    def absorb(self, frame: torch.Tensor, slots: torch.Tensor) -> None:
        store = self.store
        slot, keep = self._slot(frame)
        target = self.slot_tokens(slot, self.base)
        count = self.counts.gather(0, slot.view(1))
        if self.rule.mode == "strided":
            count = torch.zeros_like(count)
        # a running mean over the bucket's frames; 0 leaves a frame that is not kept out
        weight = torch.where(keep, 1.0 / (count + 1), 0.0).to(store.keys.dtype)
        for buffer in (store.keys, store.values):
            old, new = buffer.index_select(2, target), buffer.index_select(2, slots)
            buffer.index_copy_(2, target, old.lerp(new, weight))
        if store.band is not None:
            band_target = self.slot_tokens(slot, self.band_base)
            new = store.unrotate(store.keys.index_select(2, slots)[..., : store.band_dim], frame)
            old = store.band.index_select(2, band_target)
            store.band.index_copy_(2, band_target, old.lerp(new, weight))
        tokens = torch.where(
            keep, store.slot_token.index_select(1, slots), store.slot_token.index_select(1, target)
        )
        store.slot_token.index_copy_(1, target, tokens)
        self.counts.scatter_(0, slot.view(1), count + keep.float())
        self.took(slot, frame, keep)

    def forget(self, slots: torch.Tensor) -> None:
        super().forget(slots)
        self.counts.masked_fill_(slots, 0)

    def state_tensors(self) -> list[torch.Tensor]:
        return [self.newest, self.counts]
