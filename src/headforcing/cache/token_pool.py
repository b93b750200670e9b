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
from typing import Any

import torch

from headforcing.cache.longterm import gather_tokens, per_head


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

    def build(self, store: Any, base: int, band_base: int | None) -> TokenPool:
        return TokenPool(self, store, base, band_base)


class TokenPool:
    """The pools of every group of one store: slots ``base .. base + C`` of its buffers."""

    def __init__(self, rule: TokenPoolMemory, store: Any, base: int, band_base: int | None) -> None:
        self.size = rule.capacity(store.tokens_per_frame)
        self.tokens_per_frame = store.tokens_per_frame
        self.region = slice(base, base + self.size)
        self.band_base = band_base
        self.store = store
        self.known_full = False
        device = store.keys.device
        self._slots = torch.arange(base, base + self.size, device=device)
        self._band_slots = None if band_base is None else self._slots - base + band_base
        self._ranks = torch.arange(self.size, device=device).expand(store.num_groups, -1)

    def _held(self) -> torch.Tensor:
        """``[G, C]``: pool slots that hold a token."""
        return self.store.slot_token[:, self.region] >= 0

    def absorb(self, frame: torch.Tensor, slots: torch.Tensor) -> None:
        store = self.store
        groups = store.num_groups
        candidates = torch.cat([self._slots, slots])  # [C + T], the same for every group
        scores = store.importance.index_select(1, candidates)  # [G, C + T]
        eligible = torch.cat(
            [self._held(), torch.ones_like(scores[:, : slots.numel()], dtype=torch.bool)], dim=1
        )
        scores = scores.masked_fill(~eligible, -torch.inf)
        best = scores.topk(self.size, dim=1, sorted=False).indices  # [G, C]
        chosen = candidates.expand(groups, -1).gather(1, best)  # [G, C] slots
        best_heads, chosen_heads = per_head(store, best), per_head(store, chosen)
        if store.band is not None:
            frame_band = store.unrotate(
                store.keys.index_select(2, slots)[..., : store.band_dim], frame
            )
            bands = torch.cat([store.band.index_select(2, self._band_slots), frame_band], dim=2)
            store.band.index_copy_(2, self._band_slots, gather_tokens(bands, best_heads))
        for buffer in (store.keys, store.values):
            buffer.index_copy_(2, self._slots, gather_tokens(buffer, chosen_heads))
        for buffer in (store.slot_token, store.importance):
            buffer.index_copy_(1, self._slots, buffer.gather(1, chosen))

    def positions(self) -> torch.Tensor:
        """``[G, C]``: tokens in the order of their ids (frames), ``T`` to a temporal position."""
        tokens = self.store.slot_token[:, self.region].long()
        order = torch.where(tokens >= 0, tokens, torch.iinfo(torch.long).max).argsort(dim=1)
        rank = torch.empty_like(order).scatter_(1, order, self._ranks)
        return rank // self.tokens_per_frame

    def span(self) -> torch.Tensor:
        held = self._held().sum(dim=1)
        return (held + self.tokens_per_frame - 1) // self.tokens_per_frame

    def full(self) -> torch.Tensor:
        return self._held().all()

    def slot_mask(self, group: int, capacity: int) -> torch.Tensor:
        mask = torch.zeros(capacity, dtype=torch.bool, device=self._slots.device)
        mask[self.region] = self._held()[group]
        return mask

    def after_rewind(self, keep: torch.Tensor) -> None:
        self.known_full = False  # dropped tokens are empty slots already

    def on_prompt_switch(self) -> None:
        return None

    def state_tensors(self) -> list[torch.Tensor]:
        return []
