"""A head group: some heads of one layer, a view of the store of every group that keeps the
same (:mod:`headforcing.cache.store`), and the reports of what it keeps and where."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from headforcing.cache.policy import HeadGroupSpec, Layout
from headforcing.cache.store import GroupStore
from headforcing.model.rope import cos_sin, rotate


@dataclass(frozen=True)
class Snapshot:
    """What a group keeps, in token order (a report): ids ``[N]`` (CPU), keys ``[B, Hg, N, D]``
    rotated at their own frame (temporal) and position (spatial), values ``[B, Hg, N, D]``."""

    token_ids: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor


class HeadGroup:
    """Some heads of one layer: a view of their store's buffers, and the rule that fills them.

    Parameters
    ----------
    spec:
        The heads, their retention and label.
    head_index:
        Where the heads sit in the layer's q/k/v: a slice (contiguous, the fast path) or an
        index tensor.
    store, index:
        The store of every group that keeps the same, and this group's place in it.
    """

    def __init__(self, spec: HeadGroupSpec, head_index, store: GroupStore, index: int) -> None:
        self.heads, self.rule, self.label = spec.heads, spec.rule, spec.label
        self.head_index = head_index
        self.store, self.index = store, index
        self.store_heads = store.head_slices[index]
        self.cache = store.cache
        self.tokens_per_frame = store.tokens_per_frame
        self.chunk_frames = store.chunk_frames
        self.sink_frames = store.sink_frames
        self.band_dim = store.band_dim

    # -- views of the store (the buffers stay the store's: a view never copies) -------------

    @property
    def keys(self) -> torch.Tensor:
        """``[B, Hg, capacity, D]``."""
        return self.store.keys[:, self.store_heads]

    @property
    def values(self) -> torch.Tensor:
        return self.store.values[:, self.store_heads]

    @property
    def band(self) -> torch.Tensor | None:
        band = self.store.band
        return None if band is None else band[:, self.store_heads]

    @property
    def slot_token(self) -> torch.Tensor:
        """``[capacity]`` token id of every slot (``-1``: empty)."""
        return self.store.slot_token[self.index]

    @property
    def importance(self) -> torch.Tensor | None:
        importance = self.store.importance
        return None if importance is None else importance[self.index]

    @property
    def memory(self):
        """The store's memory bank (shared by its groups), or ``None``."""
        return self.store.memory

    @property
    def mask(self) -> torch.Tensor | None:
        return self.store.masks[self.index]

    @property
    def length(self) -> int:
        return self.store.length

    @property
    def capacity(self) -> int:
        return self.store.capacity

    @property
    def ring_base(self) -> int:
        return self.store.ring_base

    @property
    def chunk_position(self) -> int:
        """Relative temporal position of the open chunk's first frame (reads the device)."""
        position = self.store.chunk_position
        return int(position[self.index]) if isinstance(position, torch.Tensor) else position

    # -- the pass ----------------------------------------------------------------------------

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, commit: bool
    ) -> torch.Tensor:
        """q, k: rotated, v: ``[B, Hg, L, D]`` -> ``[B, Hg, L, D]``; writes the chunk's K/V."""
        return self.store.attend(self.index, q, k, v, commit)

    def memory_slots(self) -> torch.Tensor | None:
        """``[capacity]`` bool: slots that are long-term memory; ``None``: none."""
        memory = self.store.memory
        return None if memory is None else memory.slot_mask(self.index, self.capacity)

    def on_prompt_switch(self) -> None:
        self.store.on_prompt_switch()

    # -- reports (they read the device: tests, profiling, progress; never per pass) ----------

    def slot_frames(self) -> torch.Tensor:
        """``[capacity]`` frame of every slot's token (``-1``: empty), on the device."""
        tokens = self.slot_token
        return torch.where(tokens >= 0, tokens // self.tokens_per_frame, -1)

    def attended(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """During a pass: the keys attended ``[B, Hg, N, D]``, their frames ``[N]`` and the
        mask ``[1, N]`` (``None``: all)."""
        length = self.length
        return self.keys[:, :, :length], self.slot_frames()[:length], self.mask

    def _kept_slots(self) -> torch.Tensor:
        """Slots of kept tokens (the open chunk's excluded), in ascending token order."""
        tokens = self.slot_token.long()
        held = tokens >= 0
        chunk = self.cache.chunk
        if chunk is not None:
            held &= tokens < chunk.first_frame * self.tokens_per_frame
        slots = held.nonzero().squeeze(1)
        return slots[tokens[slots].argsort()]

    @property
    def token_ids(self) -> torch.Tensor:
        """``[N]`` absolute index of every kept token (CPU, ascending)."""
        return self.slot_token[self._kept_slots()].long().cpu()

    @property
    def frame_ids(self) -> torch.Tensor:
        """``[N]`` latent frame of every kept token (CPU)."""
        return self.token_ids // self.tokens_per_frame

    @property
    def kept_tokens(self) -> int:
        return self.token_ids.numel()

    @property
    def episodes(self):
        episodes = getattr(self.store.memory, "episodes", None)
        return [] if episodes is None else episodes(self.index)

    @property
    def opened_at(self) -> list[int]:
        opened_at = getattr(self.store.memory, "opened_at", None)
        return [] if opened_at is None else opened_at(self.index)

    @property
    def layout(self) -> Layout:
        """The temporal positions of the open chunk: kept tokens (ascending id), chunk frames."""
        chunk = self.cache.chunk
        if chunk is None:
            raise RuntimeError("layout is defined while a chunk is open")
        kept = self._kept_slots()
        frames = self.slot_token[kept].long().cpu() // self.tokens_per_frame
        chunk_frames = torch.arange(chunk.first_frame, chunk.end_frame)
        if self.rule.positions == "absolute":
            return Layout(frames, chunk_frames)
        start = self.chunk_position
        sink_present = self.store.sink_present
        position = frames - chunk.first_frame + start  # the recent run: right before the chunk
        # the sink by slot, not by frame: a recache-new-sink switch puts later frames there
        in_sink = (kept < self.store.memory_base).cpu()
        position[in_sink] = kept[in_sink].cpu() // self.tokens_per_frame
        memory = self.store.memory
        if memory is not None:
            in_memory = self.memory_slots()[kept].cpu()
            relative = memory.positions()[self.index]
            offsets = relative[kept[in_memory] - memory.region.start]
            position[in_memory] = sink_present + offsets.cpu()
        return Layout(position, chunk_frames - chunk.first_frame + start)

    def snapshot(self) -> Snapshot:
        """Kept tokens with keys at their own absolute frame (what a ``full`` cache holds)."""
        slots = self._kept_slots()
        keys = self.keys[:, :, slots].clone()
        band = self.band
        if band is not None:
            tokens = self.slot_token[slots].long()
            frames = tokens // self.tokens_per_frame
            replaced = slots < self.ring_base  # sink and memory: the band is [sink | memory]
            raw = band[:, :, slots[replaced]]
            angles = frames[replaced].to(torch.float64)[:, None] * self.cache.inverse_frequencies
            keys[:, :, replaced, : self.store.band_dim] = rotate(raw, *cos_sin(angles))
        tokens = self.slot_token[slots].long().cpu()
        return Snapshot(tokens, keys, self.values[:, :, slots].clone())
