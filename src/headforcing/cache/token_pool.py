"""A pool of the most attended past tokens: Deep Forcing's participative compression.

Deep Forcing (Yi et al., 2025, arXiv 2512.05081) keeps, between its deep sink and its recent
frames, the ``C`` cached tokens that recent queries attended to most. Ours keeps a pool of ``C``
slots: every frame that leaves the recent frames competes with the pool's tokens, and the ``C``
most important of the union stay (``topk`` on the device). Importance is the attention mass
sampled query rows of every committed chunk gave a token, decayed per chunk (the engine's
measure, shared with the episodic memory); the paper sums raw ``q . k`` scores of recent queries
at the first denoising step and compresses in bursts whenever a 21-frame window is full. The
pool's tokens sit on ``ceil(C / T)`` temporal positions in the order of their frames, between
the sink and the recent frames (the paper re-phases kept keys; its exact placement is not
public).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from headforcing.cache.kv import HeadGroup


@dataclass(frozen=True)
class TokenPoolMemory:
    """Parameters: ``frames`` of tokens' worth kept (``C = frames * T``), the per-chunk decay of
    the importance they are selected by."""

    frames: float = 2.0
    importance_decay: float | None = 0.9

    def __post_init__(self) -> None:
        if not self.frames > 0:
            raise ValueError(f"a token pool needs frames > 0, got {self.frames}")

    def capacity(self, tokens_per_frame: int) -> int:
        return max(1, round(self.frames * tokens_per_frame))

    @property
    def extent(self) -> int:
        return math.ceil(self.frames)

    def build(self, group: HeadGroup, base: int, band_base: int | None) -> TokenPool:
        return TokenPool(self, group, base, band_base)


class TokenPool:
    """One group's pool: slots ``base .. base + C`` of its buffers."""

    def __init__(
        self, rule: TokenPoolMemory, group: HeadGroup, base: int, band_base: int | None
    ) -> None:
        self.size = rule.capacity(group.tokens_per_frame)
        self.tokens_per_frame = group.tokens_per_frame
        self.region = slice(base, base + self.size)
        self.band_base = band_base
        self.group = group
        self.known_full = False
        device = group.keys.device
        self._slots = torch.arange(base, base + self.size, device=device)
        self._band_slots = None if band_base is None else self._slots - base + band_base

    def _held(self) -> torch.Tensor:
        return self.group.slot_token[self.region] >= 0

    def absorb(self, group: HeadGroup, frame: int, start: int) -> None:
        frame_slots = group.token_arange + start
        slots = torch.cat([self._slots, frame_slots])
        scores = group.importance.index_select(0, slots)
        scores = torch.where(
            torch.cat([self._held(), torch.ones_like(frame_slots, dtype=torch.bool)]),
            scores,
            -torch.inf,
        )
        best = scores.topk(self.size, sorted=False).indices
        chosen = slots.index_select(0, best)
        if group.band is not None:
            frame_band = group.unrotate(
                group.keys[:, :, start : start + group.tokens_per_frame, : group.band_dim], frame
            )
            bands = torch.cat([group.band.index_select(2, self._band_slots), frame_band], dim=2)
            group.band.index_copy_(2, self._band_slots, bands.index_select(2, best))
        for buffer in (group.keys, group.values):
            buffer.index_copy_(2, self._slots, buffer.index_select(2, chosen))
        for buffer in (group.slot_token, group.importance):
            buffer.index_copy_(0, self._slots, buffer.index_select(0, chosen))

    def positions(self) -> torch.Tensor:
        """Tokens in the order of their ids (frames), ``T`` to a temporal position."""
        tokens = self.group.slot_token[self.region].long()
        order = torch.where(tokens >= 0, tokens, torch.iinfo(torch.long).max).argsort()
        rank = torch.empty_like(order)
        rank[order] = torch.arange(self.size, device=order.device)
        return rank // self.tokens_per_frame

    def span(self) -> torch.Tensor:
        held = self._held().sum()
        return (held + self.tokens_per_frame - 1) // self.tokens_per_frame

    def full(self) -> torch.Tensor:
        return self._held().all()

    def slot_mask(self, capacity: int) -> torch.Tensor:
        mask = torch.zeros(capacity, dtype=torch.bool, device=self._slots.device)
        mask[self.region] = self._held()
        return mask

    def after_rewind(self, group: HeadGroup, keep: torch.Tensor) -> None:
        self.known_full = False  # dropped tokens are empty slots already

    def on_prompt_switch(self) -> None:
        return None

    def state_tensors(self) -> list[torch.Tensor]:
        return []
