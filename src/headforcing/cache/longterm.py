"""What a long-term memory is to the engine: the parameters a policy names, and the bank that
holds it for every head group of one store.

A store (:class:`headforcing.cache.store.GroupStore`) holds, for every layer's head group that
keeps the same, one region of slots between the sink and the recent frames; the memory bank
decides what those slots hold, for all of the store's groups at once (a leading group
dimension), so that its work per chunk does not grow with the number of layers. This module
imports nothing from the cache: the memories and the store both depend on it, not on each other.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


class MemoryBank(Protocol):
    """The long-term memory of every group of one store (device work only).

    ``region``: its slots in the store's buffers; ``known_full``: host flag, set by the engine
    from :meth:`full` (read once per chunk until it is true).
    """

    region: slice
    known_full: bool

    def absorb(self, frame: torch.Tensor, slots: torch.Tensor) -> None:
        """Frame ``frame`` (0-dim long), whole in slots ``slots [T]`` at absolute temporal
        phase, leaves the recent frames of every group."""

    def positions(self) -> torch.Tensor | None:
        """``[G, region tokens]`` relative temporal position of every slot, counted from the
        end of the sink (device); ``None`` for an empty region."""

    def span(self) -> torch.Tensor | int:
        """Temporal positions the memory occupies now: ``[G]`` (device) or a host int."""

    def full(self) -> torch.Tensor:
        """Whether every slot of every group holds a token (device bool scalar)."""

    def slot_mask(self, group: int, capacity: int) -> torch.Tensor:
        """``[capacity]`` bool: the slots of ``group`` that hold memory tokens."""

    def after_rewind(self, keep: torch.Tensor) -> None:
        """The store dropped the slots ``keep [G, capacity]`` does not mark (a prompt switch)."""

    def on_prompt_switch(self) -> None: ...

    def state_tensors(self) -> list[torch.Tensor]:
        """Tensors held besides the store's buffers (for ``bytes_held``)."""


class LongTermMemory(Protocol):
    """Parameters of a long-term memory (a frozen dataclass): what a :class:`Retention
    <headforcing.cache.policy.Retention>` names; :meth:`build` makes a store's bank."""

    importance_decay: float | None  # None: the memory selects by no importance

    def capacity(self, tokens_per_frame: int) -> int:
        """Slots of the memory's region."""

    @property
    def extent(self) -> int:
        """Temporal positions it spans at most (relative positions)."""

    def build(self, store: Any, base: int, band_base: int | None) -> MemoryBank: ...


def per_head(store: Any, per_group: torch.Tensor) -> torch.Tensor:
    """``[G, ...]`` -> ``[H, ...]``: every head of the store gets its group's row."""
    return per_group.index_select(0, store.head_group)


def group_sum(store: Any, per_head_values: torch.Tensor) -> torch.Tensor:
    """``[H, ...]`` -> ``[G, ...]``: sums over the heads of every group (one matmul)."""
    flat = per_head_values.reshape(per_head_values.shape[0], -1)
    return (store.membership @ flat).view(-1, *per_head_values.shape[1:])


def gather_tokens(buffer: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """``buffer [B, H, N, C]`` at per-head slots ``[H, K]`` -> ``[B, H, K, C]``."""
    batch, heads, _, channels = buffer.shape
    index = slots[None, :, :, None].expand(batch, heads, -1, channels)
    return buffer.gather(2, index)


def scatter_tokens(buffer: torch.Tensor, slots: torch.Tensor, tokens: torch.Tensor) -> None:
    """``buffer [B, H, N, C]`` at per-head slots ``[H, K]`` <- ``tokens [B, H, K, C]``."""
    batch, heads, _, channels = buffer.shape
    index = slots[None, :, :, None].expand(batch, heads, -1, channels)
    buffer.scatter_(2, index, tokens)
