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


class PatchStore:
    """One group's merged frames (host bookkeeping: the frame in every slot, FIFO order)."""

    def __init__(self, rule: PatchMemory, group: HeadGroup, base: int, band_base) -> None:
        self.rule = rule
        self.grid = group.cache.token_grid
        self.tokens = group.tokens_per_frame // rule.patch**2
        self.region = slice(base, base + rule.capacity_frames * self.tokens)
        self.base, self.band_base = base, band_base
        self.frames: list[int | None] = [None] * rule.capacity_frames
        self.absorbed = 0
        self.known_full = False
        self.device = group.keys.device

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, Hg, T, C]`` -> ``[B, Hg, T / p^2, C]``: the mean of every patch."""
        (height, width), patch = self.grid, self.rule.patch
        blocks = x.unflatten(2, (height // patch, patch, width // patch, patch))
        return blocks.mean(dim=(3, 5)).flatten(2, 3)

    def absorb(self, group: HeadGroup, frame: int, start: int) -> None:
        slot = self.absorbed % self.rule.capacity_frames
        self.absorbed += 1
        source = slice(start, start + group.tokens_per_frame)
        target = slice(self.base + slot * self.tokens, self.base + (slot + 1) * self.tokens)
        keys = group.keys[:, :, source]
        group.keys[:, :, target] = self.merge(keys.float()).to(keys.dtype)
        group.values[:, :, target] = self.merge(group.values[:, :, source].float()).to(keys.dtype)
        if group.band is not None:
            raw = group.unrotate(keys[..., : group.band_dim], frame)
            band = slice(
                self.band_base + slot * self.tokens, self.band_base + (slot + 1) * self.tokens
            )
            group.band[:, :, band] = self.merge(raw.float()).to(raw.dtype)
        (height, width), patch = self.grid, self.rule.patch
        corners = group.slot_token[source].view(height, width)[::patch, ::patch].flatten()
        group.slot_token[target] = corners
        self.frames[slot] = frame
        self.known_full = all(held is not None for held in self.frames)

    def positions(self) -> torch.Tensor:
        order = sorted((frame, slot) for slot, frame in enumerate(self.frames) if frame is not None)
        rank = [0] * len(self.frames)
        for position, (_, slot) in enumerate(order):
            rank[slot] = position
        return torch.tensor(rank, device=self.device).repeat_interleave(self.tokens)

    def span(self) -> int:
        return sum(frame is not None for frame in self.frames)

    def full(self) -> torch.Tensor:
        return torch.tensor(self.known_full)

    def slot_mask(self, capacity: int) -> torch.Tensor:
        mask = torch.zeros(capacity, dtype=torch.bool, device=self.device)
        held = torch.tensor([frame is not None for frame in self.frames], device=self.device)
        mask[self.region] = held.repeat_interleave(self.tokens)
        return mask

    def after_rewind(self, group: HeadGroup, keep: torch.Tensor) -> None:
        kept = keep[self.region].view(len(self.frames), self.tokens).all(dim=1).tolist()
        for slot, whole in enumerate(kept):
            if not whole:
                self.frames[slot] = None
                start = self.base + slot * self.tokens
                group.slot_token[start : start + self.tokens] = -1
        self.known_full = all(frame is not None for frame in self.frames)

    def on_prompt_switch(self) -> None:
        return None

    def state_tensors(self) -> list[torch.Tensor]:
        return []
