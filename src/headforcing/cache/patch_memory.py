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
from typing import TYPE_CHECKING

import torch

from headforcing.cache.frame_memory import FrameSlots

if TYPE_CHECKING:
    from headforcing.cache.kv import HeadGroup


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

    def build(self, group: HeadGroup, base: int, band_base: int | None) -> PatchStore:
        height, width = group.cache.token_grid
        if height % self.patch or width % self.patch:
            raise ValueError(
                f"a token grid of {height}x{width} does not split into {self.patch}x"
                f"{self.patch} patches; use a size whose token grid does"
            )
        return PatchStore(self, group, base, band_base)


class PatchStore(FrameSlots):
    """One group's merged frames, first in first out."""

    def __init__(self, rule: PatchMemory, group: HeadGroup, base: int, band_base) -> None:
        tokens = group.tokens_per_frame // rule.patch**2
        super().__init__(rule.capacity_frames, tokens, group, base, band_base)
        self.rule = rule
        self.grid = group.cache.token_grid
        self.absorbed = 0

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, Hg, T, C]`` -> ``[B, Hg, T / p^2, C]``: the mean of every patch."""
        (height, width), patch = self.grid, self.rule.patch
        blocks = x.unflatten(2, (height // patch, patch, width // patch, patch))
        return blocks.mean(dim=(3, 5)).flatten(2, 3)

    def absorb(self, group: HeadGroup, frame: int, start: int) -> None:
        slot = self.absorbed % self.rule.capacity_frames
        self.absorbed += 1
        source, target = slice(start, start + group.tokens_per_frame), self.slot_range(slot)
        keys = group.keys[:, :, source]
        group.keys[:, :, target] = self.merge(keys.float()).to(keys.dtype)
        group.values[:, :, target] = self.merge(group.values[:, :, source].float()).to(keys.dtype)
        if group.band is not None:
            raw = group.unrotate(keys[..., : group.band_dim], frame)
            band = self.slot_range(slot, self.band_base)
            group.band[:, :, band] = self.merge(raw.float()).to(raw.dtype)
        (height, width), patch = self.grid, self.rule.patch
        corners = group.slot_token[source].view(height, width)[::patch, ::patch].flatten()
        group.slot_token[target] = corners
        self.took(slot, frame)
