"""One store per retention: the K/V of every head group, in every layer, that keeps the same.

The engine's per-chunk work (claiming slots, placing re-placed tokens, eviction, the long-term
memory) runs once per store, over all of its groups together, so Wan's 30 layers cost what 2
do (DESIGN.md, "The engine"). A store stacks its groups' heads, layer after layer:

- ``keys``, ``values``: ``[B, H, capacity, D]``, ``H`` the heads of all its groups; a group is
  the contiguous run of heads ``head_slices[g]``, so a pass reads and writes it as a slice;
- ``slot_token``: ``[G, capacity]`` token id of every slot (``-1``: empty), per group (the
  memory region differs between groups, the sink and the ring do not);
- ``importance``: ``[G, capacity]`` attention mass every stored token received (memories that
  select by attention);
- ``band``: ``[B, H, re-placed tokens, band_dim]`` raw temporal bands of the re-placed tokens
  (relative positions: the sink and the memory), rotated once per chunk to the layout.

Buffers: ``[sink S*T | long-term memory | ring (R+C)*T]``, the ring holding the recent frames
and the chunk (frame ``f`` in frame-slot ``(f - S) mod (R + C)``). Which frame sits where is
the same for every group of a store, so the host keeps it (no read of the device); what the
memory holds is decided on the device, per group, by the memory bank.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from headforcing.cache.chunk import ChunkInfo, sampled_attention
from headforcing.cache.longterm import MemoryBank, per_head
from headforcing.cache.policy import Retention
from headforcing.model.config import WanConfig
from headforcing.model.rope import Rope3D, cos_sin, rotate


class CacheShape(Protocol):
    """What a store needs of its cache (:class:`headforcing.cache.kv.KVCache`): shapes, RoPE,
    device, the open chunk and its sampled query rows."""

    config: WanConfig
    rope: Rope3D
    tokens_per_frame: int
    chunk_frames: int
    token_grid: tuple[int, int]
    batch: int
    device: torch.device
    dtype: torch.dtype
    inverse_frequencies: torch.Tensor
    importance_rows: torch.Tensor | None
    chunk: ChunkInfo | None


# ring frames allocated at most before the video needs them (a ring grows by doubling, up to
# its bound; ``full`` has none); windows of the trained range (21 frames) are allocated whole
RING_START_FRAMES = 24


def ring_allocation(bound: int | None, frames: int) -> int:
    """Frame slots a ring has allocated once it holds ``frames`` frames: ``RING_START_FRAMES``
    (its bound if smaller), doubled until they fit, never past its bound (``None``: none)."""
    if bound is not None:
        frames = min(frames, bound)
    size = min(bound or RING_START_FRAMES, RING_START_FRAMES)
    while size < frames:
        size *= 2
    return min(size, bound) if bound is not None else size


class GroupStore:
    """The buffers and bookkeeping of every head group that keeps ``rule``.

    Parameters
    ----------
    rule:
        What every group of the store keeps.
    head_counts:
        Heads of every group, in the order of the groups (layer after layer).
    cache:
        The cache (shapes, RoPE, device, dtype).
    """

    def __init__(self, rule: Retention, head_counts: list[int], cache: CacheShape) -> None:
        self.rule = rule
        self.cache = cache
        self.tokens_per_frame = tokens = cache.tokens_per_frame
        self.chunk_frames = cache.chunk_frames
        self.band_dim = cache.rope.temporal_dim
        self.sink_frames = rule.sink_frames
        self.bounded = rule.recent_frames is not None
        self.relative = rule.positions == "relative"
        # the ring holds the recent frames and the chunk: its bound, then what is allocated
        # (it grows by doubling up to the bound while the video is shorter: before any wrap)
        self.ring_bound = rule.recent_frames + self.chunk_frames if self.bounded else None
        self.ring_frames = ring_allocation(self.ring_bound, 0)
        self.memory_base = self.sink_frames * tokens
        memory_tokens = rule.memory.capacity(tokens) if rule.memory is not None else 0
        self.ring_base = self.memory_base + memory_tokens
        capacity = self.ring_base + self.ring_frames * tokens

        device = cache.device
        self.num_groups = groups = len(head_counts)
        starts = [sum(head_counts[:g]) for g in range(groups)]
        self.head_slices = [
            slice(start, start + count) for start, count in zip(starts, head_counts, strict=True)
        ]
        self.num_heads = heads = sum(head_counts)
        group_of_head = [g for g, count in enumerate(head_counts) for _ in range(count)]
        self.head_group = torch.tensor(group_of_head, dtype=torch.long, device=device)
        self.membership = F.one_hot(self.head_group, groups).T.float()  # [G, H]

        shape = (cache.batch, heads, capacity, cache.config.head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=cache.dtype)
        self.values = torch.zeros(shape, device=device, dtype=cache.dtype)
        self.slot_token = torch.full((groups, capacity), -1, dtype=torch.int32, device=device)
        self.importance = None
        self.band = None
        replaced = self.memory_base + memory_tokens
        if self.relative and replaced:
            band_shape = (cache.batch, heads, replaced, self.band_dim)
            self.band = torch.zeros(band_shape, device=device, dtype=cache.dtype)
        self.memory: MemoryBank | None = None
        if rule.memory is not None:
            if rule.memory.importance_decay is not None:
                self.importance = torch.zeros(groups, capacity, device=device)
            band_base = self.memory_base if self.band is not None else None
            self.memory = rule.memory.build(self, self.memory_base, band_base)
        self.token_arange = torch.arange(tokens, device=device)
        # ids of the frames that leave the recent frames at a chunk's end (written in place)
        self.leaving = torch.zeros(self.chunk_frames, dtype=torch.long, device=device)

        # host bookkeeping: which frames the sink and every ring frame-slot hold
        self.sink_present = 0
        self.ring: list[int | None] = [None] * self.ring_frames
        self._write_indices: dict[tuple[int, ...], torch.Tensor] = {}
        self._frame_slots: dict[int, torch.Tensor] = {}
        self._views: dict[tuple[int, int], tuple[torch.Tensor, ...]] = {}
        self.pass_views: list[tuple[torch.Tensor, ...]] = []  # this chunk's, per group
        # per chunk (begin): the claimed slots, the attended length, the masks
        self.write_index: torch.Tensor | None = None
        self.length = 0
        self.masks: list[torch.Tensor | None] = [None] * groups
        self.known_full = False
        # relative position of the chunk's first frame: a host int, or ``[G]`` on the device
        self.chunk_position: torch.Tensor | int = 0

    # -- sizes -----------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    def state_tensors(self) -> list[torch.Tensor]:
        """Every tensor the store keeps from chunk to chunk."""
        tensors = [self.keys, self.values, self.slot_token, self.band, self.importance]
        tensors.append(self.leaving)
        if self.memory is not None:
            tensors += self.memory.state_tensors()
        return [tensor for tensor in tensors if tensor is not None]

    def bytes_held(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state_tensors())

    # -- slots -----------------------------------------------------------------------------

    def _ring_slot(self, frame: int) -> int:
        offset = frame - self.sink_frames
        return offset % self.ring_bound if self.bounded else offset

    def frame_start(self, frame: int) -> int:
        """First slot of ``frame``."""
        if frame < self.sink_frames:
            return frame * self.tokens_per_frame
        return self.ring_base + self._ring_slot(frame) * self.tokens_per_frame

    def frame_slots(self, start: int) -> torch.Tensor:
        """``[T]`` slots of the frame that starts at ``start`` (made once per start)."""
        slots = self._frame_slots.get(start)
        if slots is None:
            slots = self._frame_slots[start] = self.token_arange + start
        return slots

    def _grow(self, frames: int) -> None:
        """Make room for ``frames`` ring frames (doubling, up to the bound)."""
        size = ring_allocation(self.ring_bound, frames)
        extra = (size - self.ring_frames) * self.tokens_per_frame
        self.keys = F.pad(self.keys, (0, 0, 0, extra))
        self.values = F.pad(self.values, (0, 0, 0, extra))
        self.slot_token = F.pad(self.slot_token, (0, extra), value=-1)
        if self.importance is not None:
            self.importance = F.pad(self.importance, (0, extra))
        self.ring += [None] * (size - self.ring_frames)
        self.ring_frames = size
        self._views.clear()  # views of the old buffers

    # -- the chunk lifecycle ---------------------------------------------------------------

    def begin(self, chunk: ChunkInfo, chunk_ids: torch.Tensor) -> None:
        """Claim the chunk's slots, place re-placed tokens, pick the layout (no host read)."""
        frames = range(chunk.first_frame, chunk.end_frame)
        ring_used = min(max(chunk.end_frame - self.sink_frames, 0), self.ring_bound or 2**62)
        if ring_used > self.ring_frames:
            self._grow(ring_used)
        starts = tuple(self.frame_start(frame) for frame in frames)
        self.write_index = self._write_indices.get(starts)
        if self.write_index is None:
            index = torch.cat([self.token_arange + start for start in starts])
            self.write_index = self._write_indices[starts] = index
        ring_before = [frame for frame in self.ring if frame is not None]
        for frame in frames:
            if frame >= self.sink_frames:
                slot = self._ring_slot(frame)
                assert self.ring[slot] is None, "the ring must have room for the chunk"
                self.ring[slot] = frame
        self.slot_token.index_copy_(1, self.write_index, chunk_ids.expand(self.num_groups, -1))
        if self.importance is not None:
            self.importance.index_fill_(1, self.write_index, 0.0)
            self.importance.mul_(self.rule.memory.importance_decay)  # once per chunk

        # relative positions: sink, memory, the recent run, then the chunk
        ring_length = len(ring_before)
        assert not ring_before or (
            min(ring_before) == chunk.first_frame - ring_length
            and max(ring_before) == chunk.first_frame - 1
        ), "recent frames must run up to the chunk"
        memory_span = self.memory.span() if self.memory is not None else 0
        self.chunk_position = memory_span + (self.sink_present + ring_length)
        if self.band is not None:
            self._place(chunk.first_frame - self.chunk_position)

        # attend to the sink, the memory and the ring: a bounded ring whole (its empty slots
        # masked while it fills: the shapes never change, so a compiled pass is reused);
        # ``full`` to the frames so far (until a ring wraps, it holds frames in slots 0, 1, ...)
        attended = self.ring_frames if self.bounded else ring_used
        self.length = self.ring_base + attended * self.tokens_per_frame
        self.pass_views = [self.views(group) for group in range(self.num_groups)]
        self.known_full = self._known_full(chunk, attended)

    def top_position(self, num_frames: int, end_frame: int) -> torch.Tensor | int:
        """The largest temporal position this chunk's groups attend at."""
        if not self.relative:
            return end_frame - 1
        top = self.chunk_position + num_frames - 1
        return top.max() if isinstance(top, torch.Tensor) else top

    def set_masks(self, masked: bool) -> None:
        """Attend with a mask of the slots holding tokens (``masked``), or to every slot."""
        if not masked:
            self.masks = [None] * self.num_groups
            return
        held = (self.slot_token[:, None, : self.length] >= 0).unbind(0)  # G x [1, N]
        self.masks = list(held)

    def _known_full(self, chunk: ChunkInfo, attended: int) -> bool:
        """Whether the host knows every attended slot holds a token (no mask needed)."""
        sink_done = max(self.sink_present, min(chunk.end_frame, self.sink_frames))
        ring_done = all(frame is not None for frame in self.ring[:attended])
        memory_done = self.memory is None or self.memory.known_full
        return sink_done == self.sink_frames and ring_done and memory_done

    def _place(self, origin: torch.Tensor | int) -> None:
        """Rotate the re-placed tokens' raw bands to this chunk's phase: relative position
        ``p`` sits at absolute phase ``origin + p`` (``origin``: a host int, or ``[G]``)."""
        tokens, band = self.tokens_per_frame, self.band_dim
        per_group = isinstance(origin, torch.Tensor)
        if self.sink_present:
            sink = torch.arange(self.sink_present, device=self.keys.device)
            positions = origin[:, None] + sink if per_group else (sink + origin)[None]
            region = slice(0, self.sink_present * tokens)
            cos, sin = self.angles(positions.repeat_interleave(tokens, dim=1), per_group)
            self.keys[:, :, region, :band] = rotate(self.band[:, :, region], cos, sin)
        if self.memory is not None:
            relative = self.memory.positions()  # [G, M]
            if relative is not None:
                start = origin[:, None] if per_group else origin
                cos, sin = self.angles(relative + (start + self.sink_present), True)
                raw = self.band[:, :, self.memory_base :]
                self.keys[:, :, self.memory.region, :band] = rotate(raw, cos, sin)

    def angles(self, positions: torch.Tensor, per_group: bool):
        """``(cos, sin)`` of the temporal band at ``positions [G or 1, P]``: ``[H, P, band/2]``
        (per group: every head its group's row) or ``[P, band/2]``."""
        angles = positions.to(torch.float64)[..., None] * self.cache.inverse_frequencies
        cos, sin = cos_sin(angles)
        if per_group:
            return per_head(self, cos), per_head(self, sin)
        return cos[0], sin[0]

    def unrotate(self, x: torch.Tensor, frame: torch.Tensor | int) -> torch.Tensor:
        """Undo the temporal rotation at ``frame`` of ``x [..., D or band]``'s band: the raw
        band (temporal position 0) of a key rotated at its own frame; other channels as
        given. ``x``'s second-to-last dimension is its tokens."""
        band = self.band_dim
        if not isinstance(frame, torch.Tensor):
            frame = torch.tensor(frame, device=x.device)
        angles = -frame.to(torch.float64).view(1, 1) * self.cache.inverse_frequencies
        cos, sin = cos_sin(angles)
        raw = rotate(x[..., :band], cos, sin)
        if x.shape[-1] == band:
            return raw
        return torch.cat([raw, x[..., band:]], dim=-1)

    def views(self, group: int):
        """Group ``group``'s buffers and the part of them a pass attends to (views made once
        per length and allocation, picked in ``begin``: a pass does not re-slice, and a
        compiled pass sees no dictionary)."""
        key = (group, self.length)
        views = self._views.get(key)
        if views is None:
            heads, length = self.head_slices[group], self.length
            keys, values = self.keys[:, heads], self.values[:, heads]
            views = (keys, values, keys[:, :, :length], values[:, :, :length])
            self._views[key] = views
        return views

    def attend(self, group: int, q, k, v, commit: bool) -> torch.Tensor:
        """Group ``group``'s pass: q, k rotated, v ``[B, Hg, L, D]`` -> ``[B, Hg, L, D]``;
        writes the chunk's K/V into its claimed slots."""
        keys, values, attended_keys, attended_values = self.pass_views[group]
        keys.index_copy_(2, self.write_index, k)
        values.index_copy_(2, self.write_index, v)
        mask = self.masks[group]
        out = F.scaled_dot_product_attention(q, attended_keys, attended_values, attn_mask=mask)
        if commit and self.importance is not None:
            rows = self.cache.importance_rows
            mass = sampled_attention(q, attended_keys, rows, mask).sum(dim=(0, 1, 2))  # [N]
            self.importance[group, : self.length].add_(mass)
        return out

    def end(self, chunk: ChunkInfo, frames_done: int) -> list[torch.Tensor]:
        """After the commit (host part): keep the sink's raw bands, and plan the eviction of
        what leaves the recent frames; returns the slots ``[T]`` of every leaving frame, whose
        ids are then in ``leaving`` (the device part: :meth:`evict`)."""
        tokens = self.tokens_per_frame
        sink_end = min(chunk.end_frame, self.sink_frames)
        if chunk.first_frame < sink_end:
            if self.band is not None:
                for frame in range(chunk.first_frame, sink_end):
                    region = slice(frame * tokens, (frame + 1) * tokens)
                    self.band[:, :, region] = self.unrotate(
                        self.keys[:, :, region, : self.band_dim], frame
                    )
            self.sink_present = max(self.sink_present, sink_end)
        if not self.bounded:
            return []
        oldest_kept = frames_done - self.rule.recent_frames
        leaving = sorted(frame for frame in self.ring if frame is not None and frame < oldest_kept)
        for frame in leaving:
            self.ring[self._ring_slot(frame)] = None
        if leaving and self.memory is not None:  # the memory reads the frames' ids
            if len(leaving) > len(self.leaving):  # after a rewind, say: more than a chunk
                self.leaving = torch.zeros(len(leaving), dtype=torch.long, device=self.keys.device)
            self.leaving[: len(leaving)].copy_(torch.tensor(leaving))
        return [self.frame_slots(self.frame_start(frame)) for frame in leaving]

    def evict_all(self, leaving: list[torch.Tensor]) -> None:
        """Device part of :meth:`end`: every leaving frame, oldest first."""
        for index, slots in enumerate(leaving):
            self.evict(self.leaving[index], slots)

    def evict(self, frame: torch.Tensor, slots: torch.Tensor) -> None:
        """Device work of one leaving frame: the memory takes it, its slots empty."""
        if self.memory is not None:
            self.memory.absorb(frame, slots)
        self.slot_token.index_fill_(1, slots, -1)

    # -- prompt switches -------------------------------------------------------------------

    def rewind(self, frame: int, keep: torch.Tensor) -> None:
        """Keep the slots ``keep [G, capacity]`` marks, drop the rest (between chunks; reads
        the device to bring the host's bookkeeping in line)."""
        held = self.slot_token >= 0
        frames = torch.where(held, self.slot_token // self.tokens_per_frame, -1)
        assert not (frames[held & keep] >= frame).any(), "kept tokens precede frame"
        self.slot_token.masked_fill_(held & ~keep, -1)
        if self.memory is not None:
            self.memory.after_rewind(keep)
        tokens = self.tokens_per_frame
        sink = self.slot_token[0, : self.sink_frames * tokens : tokens].tolist()
        ring = self.slot_token[0, self.ring_base :: tokens].tolist()
        self.sink_present = sum(1 for token in sink if token >= 0)
        self.ring = [token // tokens if token >= 0 else None for token in ring]

    def on_prompt_switch(self) -> None:
        if self.memory is not None:
            self.memory.on_prompt_switch()
