"""Past frames merged into patches: Pyramid Forcing's veil class.

Pyramid Forcing (arXiv 2605.13111) keeps, for its *veil* heads, past frames merged into
``patch x patch`` patches, ``capacity`` merged frames between the sink and the recent frames.
Ours: a frame that leaves the recent frames is averaged over every ``patch x patch`` block of
its token grid (keys as stored, values, and with relative positions the raw temporal band), and
goes into a first-in-first-out list of ``capacity`` merged frames, one temporal position each.
A merged token carries the id of its block's top-left token. The average of keys rotated at
neighbouring spatial positions is not a key rotated at one position: it blurs the spatial phase
as the merge blurs the content (the paper's exact merge is not public).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from headforcing.cache.frame_memory import FrameSlots


@dataclass(frozen=True)
class PatchMemory:
    """Parameters: ``capacity_frames`` merged frames of ``patch x patch`` blocks."""

    capacity_frames: int = 4
    patch: int = 2
    importance_decay = None

    def __post_init__(self) -> None:
        if self.capacity_frames < 1 or self.patch < 1:
            raise ValueError("capacity_frames and patch must be >= 1")

    def capacity(self, tokens_per_frame: int) -> int:
        return self.capacity_frames * (tokens_per_frame // self.patch**2)

    @property
    def extent(self) -> int:
        return self.capacity_frames

    def build(self, store: Any, base: int, band_base: int | None) -> PatchStore:
        height, width = store.cache.token_grid
        if height % self.patch or width % self.patch:
            raise ValueError(
                f"a token grid of {height}x{width} does not split into {self.patch}x"
                f"{self.patch} patches; use a size whose token grid does"
            )
        return PatchStore(self, store, base, band_base)


class PatchStore(FrameSlots):
    """The merged frames of every group of a store, first in first out."""

    def __init__(self, rule: PatchMemory, store: Any, base: int, band_base) -> None:
        tokens = store.tokens_per_frame // rule.patch**2
        super().__init__(rule.capacity_frames, tokens, store, base, band_base)
        self.rule = rule
        self.grid = store.cache.token_grid
        self.absorbed = torch.zeros((), dtype=torch.long, device=self.newest.device)
        height, width = self.grid
        corners = torch.arange(height * width).view(height, width)[:: rule.patch, :: rule.patch]
        self._corners = corners.flatten().to(self.newest.device)  # [T / p^2] of a frame's T

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H, T, C]`` -> ``[B, H, T / p^2, C]``: the mean of every patch."""
        (height, width), patch = self.grid, self.rule.patch
        blocks = x.unflatten(2, (height // patch, patch, width // patch, patch))
        return blocks.mean(dim=(3, 5)).flatten(2, 3)

    def absorb(self, frame: torch.Tensor, slots: torch.Tensor) -> None:
        store = self.store
        slot = self.absorbed % self.rule.capacity_frames
        self.absorbed += 1
        target = self.slot_tokens(slot, self.base)
        keys = store.keys.index_select(2, slots)
        merged_keys = self.merge(keys.float()).to(keys.dtype)
        store.keys.index_copy_(2, target, merged_keys)
        values = store.values.index_select(2, slots)
        store.values.index_copy_(2, target, self.merge(values.float()).to(values.dtype))
        if store.band is not None:
            raw = store.unrotate(keys[..., : store.band_dim], frame)
            band_target = self.slot_tokens(slot, self.band_base)
            store.band.index_copy_(2, band_target, self.merge(raw.float()).to(raw.dtype))
        corners = store.slot_token.index_select(1, slots.index_select(0, self._corners))
        store.slot_token.index_copy_(1, target, corners)
        self.took(slot, frame, torch.ones_like(frame, dtype=torch.bool))

    def state_tensors(self) -> list[torch.Tensor]:
        return [self.newest, self.absorbed]
