"""The KV cache: per layer, head groups; per retention, one store of every layer's groups.

Lifecycle of one chunk (DESIGN.md, "The engine"):

1. ``begin_chunk(frames)``: every store claims the slots the chunk's tokens will occupy, places
   its re-placed tokens (relative positions: the sink and the long-term memory) at this chunk's
   temporal positions, and decides whether attention needs a mask (only while a buffer is not
   yet full).
2. Denoising passes (``attention()``): per layer, q and k are rotated once for all heads; every
   group writes the chunk's K/V into its claimed slots (in place) and runs one attention call
   over its whole buffer.
3. The clean pass at ``t = 0`` (``attention(commit=True)``) does the same; groups with a memory
   that selects by attention also score how much sampled queries attend to every stored token.
4. ``end_chunk()``: frames that leave the recent window are dropped or handed to the memory,
   all by tensor operations on the device. While some memory is not yet known to be full, one
   small tensor is read once per chunk (whether each is full); afterwards not even that.

**Work does not grow with depth.** Every head group of every layer that keeps the same (one
:class:`~headforcing.cache.policy.Retention`) lives in one
:class:`~headforcing.cache.store.GroupStore`: its heads stacked, layer after layer. Steps 1 and
4 run once per store, over all of its groups at once; only the passes (step 2, 3) run per layer
and group, as the model does. A :class:`HeadGroup` is one layer's view of its store.

Positions. Every key in a buffer is rotated at an *absolute* temporal phase: the chunk's queries
and keys at their own frame index, so a contiguous run of recent frames never needs re-rotation
(a RoPE score depends only on the position difference). Tokens that relative positions put
elsewhere (the sink, the memory) keep their raw temporal band in a small side buffer and are
rotated once per chunk to where the layout wants them: ``band_dim`` of ``head_dim`` channels
(44 of 128 for Wan) for those tokens only. The layout a group reports (:attr:`HeadGroup.layout`)
is the relative one; it differs from what the kernel computes by one shift of all positions,
which no attention score can tell apart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Protocol

import torch

from headforcing.cache.chunk import ChunkInfo, sample_rows, sampled_attention
from headforcing.cache.group import HeadGroup, Snapshot
from headforcing.cache.policy import CachePolicy, HeadGroupSpec, Retention
from headforcing.cache.store import GroupStore
from headforcing.model.config import WanConfig
from headforcing.model.rope import Rope3D, cos_sin, rotate

# query rows sampled per chunk to score the importance of stored tokens
IMPORTANCE_ROWS = 64

__all__ = ["ChunkInfo", "HeadGroup", "KVCache", "Snapshot", "sample_rows", "sampled_attention"]


class AttentionObserver(Protocol):
    """Sees every group's rotated queries (the head profiler is one); reads the keys they
    attend to with :meth:`HeadGroup.attended`."""

    def observe(
        self, layer: int, group: HeadGroup, q: torch.Tensor, chunk: ChunkInfo, commit: bool
    ) -> None: ...


class KVCache:
    """Self-attention K/V of every layer for one video stream; a self-attention backend.

    Parameters
    ----------
    policy:
        What every head group keeps and where it puts it.
    config:
        The transformer's shape (layers, heads, head_dim, RoPE base).
    height_tokens, width_tokens:
        Token grid of one latent frame (latent size divided by the patch size).
    chunk_frames:
        Latent frames per chunk (3 for Self-Forcing).
    trained_frames:
        Latent frames the model was trained on (positions at or past it are out of range).
    batch, device, dtype:
        Of the stored K/V (the model's dtype).
    head_order:
        Per layer, the original head of every head position of the q/k/v the cache receives
        (after :meth:`headforcing.model.WanModel.set_head_order`); ``None``: the original
        order. Naming fewer heads than the model has makes a cache of those heads only (one
        rank of a head-parallel stream): every group keeps its heads among them.
    """

    def __init__(
        self,
        policy: CachePolicy,
        config: WanConfig,
        height_tokens: int,
        width_tokens: int,
        chunk_frames: int = 3,
        trained_frames: int = 21,
        *,
        batch: int = 1,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        head_order: list[list[int]] | None = None,
    ) -> None:
        policy.check(chunk_frames, trained_frames)
        self.config = config
        self.chunk_frames = chunk_frames
        self.trained_frames = trained_frames
        self.tokens_per_frame = height_tokens * width_tokens
        self.token_grid = (height_tokens, width_tokens)
        self.batch, self.device, self.dtype = batch, torch.device(device), dtype
        self.rope = Rope3D(config.head_dim, config.rope_theta)
        self.spatial_angles = self.rope.spatial_angles(height_tokens, width_tokens, self.device)
        self.inverse_frequencies = self.rope.temporal_angles(torch.ones(1, device=self.device))[0]
        self.policy = policy
        self.stores: list[GroupStore] = []
        self.layers = self._build(policy, head_order)
        # per layer, the groups' head counts when they are contiguous and in order (else None)
        self._split_sizes = [_split_sizes(groups) for groups in self.layers]
        self.observers: list[AttentionObserver] = []
        self.frames_done = 0
        self.chunk: ChunkInfo | None = None
        self._max_position = torch.full((), -1, dtype=torch.long, device=self.device)
        self.importance_rows: torch.Tensor | None = None
        self._cos = self._sin = None
        self._passes = {commit: CacheAttention(self, commit) for commit in (False, True)}
        self._evict = self.evict

    def _layer_specs(self, layer: int, policy: CachePolicy, head_order):
        """``(spec, head_index)`` of every group of ``layer`` among the heads this cache holds."""
        specs = policy.head_groups(layer, self.config.num_heads, self.chunk_frames)
        _check_partition(specs, self.config.num_heads, layer)
        order = list(range(self.config.num_heads)) if head_order is None else head_order[layer]
        held = set(order)  # a cache of some heads only (one rank of a head-parallel stream)
        out = []
        for spec in specs:
            if not held.issuperset(spec.heads):
                spec = replace(spec, heads=tuple(head for head in spec.heads if head in held))
                if not spec.heads:
                    continue
            where = sorted(order.index(head) for head in spec.heads)
            if where == list(range(where[0], where[0] + len(where))):
                index = slice(where[0], where[0] + len(where))
            else:  # a model whose heads were not permuted for this policy: gather
                index = torch.tensor(where, device=self.device)
            # the group's heads in the order its buffers hold them
            spec = replace(spec, heads=tuple(order[position] for position in where))
            out.append((spec, index))
        return out

    def _build(self, policy: CachePolicy, head_order) -> list[list[HeadGroup]]:
        """One store per retention over every layer's groups, then each layer's views."""
        layer_specs = [
            self._layer_specs(layer, policy, head_order) for layer in range(self.config.num_layers)
        ]
        members: dict[Retention, list[int]] = {}
        for specs in layer_specs:
            for spec, _ in specs:
                members.setdefault(spec.rule, []).append(len(spec.heads))
        stores = {rule: GroupStore(rule, counts, self) for rule, counts in members.items()}
        self.stores = list(stores.values())
        taken = dict.fromkeys(stores, 0)
        layers = []
        for specs in layer_specs:
            groups = []
            for spec, index in specs:
                groups.append(HeadGroup(spec, index, stores[spec.rule], taken[spec.rule]))
                taken[spec.rule] += 1
            layers.append(groups)
        return layers

    # -- the chunk lifecycle ---------------------------------------------------------------

    def begin_chunk(self, num_frames: int) -> ChunkInfo:
        """Open the next chunk (it starts where the last one ended) and prepare every store."""
        if self.chunk is not None:
            raise RuntimeError("the previous chunk was never ended (end_chunk)")
        if not 1 <= num_frames <= self.chunk_frames:
            raise ValueError(f"a chunk has 1..{self.chunk_frames} frames, got {num_frames}")
        chunk = ChunkInfo(self.frames_done, num_frames, self.tokens_per_frame)
        self.chunk = chunk
        first_token = chunk.first_frame * self.tokens_per_frame
        chunk_ids = torch.arange(
            first_token, first_token + chunk.num_tokens, dtype=torch.int32, device=self.device
        )
        for store in self.stores:
            store.begin(chunk, chunk_ids)
            top = store.top_position(num_frames, chunk.end_frame)
            if isinstance(top, torch.Tensor):
                self._max_position = torch.maximum(self._max_position, top)
            else:
                self._max_position = self._max_position.clamp_min(top)
        # one mask decision for all: while any store has an empty slot, every store masks, so
        # a compiled pass sees two layouts in a video (filling, full), not one per store
        masked = not all(store.known_full for store in self.stores)
        for store in self.stores:
            store.set_masks(masked)
        # the chunk's rotation at its absolute frames, shared by every group and layer
        frames = torch.arange(chunk.first_frame, chunk.end_frame, device=self.device)
        self._cos, self._sin = cos_sin(self.rope.token_angles(frames, self.spatial_angles))
        self.importance_rows = sample_rows(chunk.num_tokens, IMPORTANCE_ROWS, self.device)
        return chunk

    def attention(self, commit: bool = False) -> CacheAttention:
        """The backend for one pass over the open chunk; ``commit=True`` for the clean pass."""
        if self.chunk is None:
            raise RuntimeError("call begin_chunk() before a pass")
        return self._passes[commit]

    def attend(self, layer: int, q, k, v, commit: bool) -> torch.Tensor:
        """q, k, v: ``[B, L, H, D]`` unrotated -> ``[B, L, H, D]``."""
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, L, D]
        q, k = rotate(q, self._cos, self._sin), rotate(k, self._cos, self._sin)
        groups = self.layers[layer]
        sizes = self._split_sizes[layer]
        if sizes is not None:  # contiguous groups in order: their q/k/v in one call each
            parts = zip(q.split(sizes, 1), k.split(sizes, 1), v.split(sizes, 1), strict=True)
        else:
            parts = ((q[:, g.head_index], k[:, g.head_index], v[:, g.head_index]) for g in groups)
        outs = []
        for group, (group_q, group_k, group_v) in zip(groups, parts, strict=True):
            outs.append(group.store.attend(group.index, group_q, group_k, group_v, commit))
            for observer in self.observers:
                observer.observe(layer, group, group_q, self.chunk, commit)
        if len(outs) == 1:
            out = outs[0]
        elif sizes is not None:  # one copy of the outputs
            out = torch.cat(outs, dim=1)
        else:  # gathered heads: each group writes its heads
            out = torch.empty_like(q)
            for group, group_out in zip(groups, outs, strict=True):
                out[:, group.head_index] = group_out
        return out.transpose(1, 2)

    def end_chunk(self) -> None:
        """After the commit pass: every store evicts or memorises, once for all its layers;
        at most one host read (whether memories are full, until they are known to be)."""
        chunk = self.chunk
        if chunk is None:
            raise RuntimeError("no chunk is open")
        self.frames_done = chunk.end_frame
        leaving = [store.end(chunk, self.frames_done) for store in self.stores]  # host plans
        self._evict(leaving)
        self.chunk = None
        pending = [
            store.memory
            for store in self.stores
            if store.memory is not None and not store.memory.known_full
        ]
        if pending:
            full = torch.stack([memory.full() for memory in pending]).tolist()
            for memory, is_full in zip(pending, full, strict=True):
                memory.known_full = is_full

    def evict(self, leaving: list[list[torch.Tensor]]) -> None:
        """The device part of ``end_chunk``: every store's leaving frames (their slots, per
        store) go to its memory or away. Tensor operations only: it compiles whole."""
        for store, slots in zip(self.stores, leaving, strict=True):
            store.evict_all(slots)

    def compile_end_chunk(self, **options) -> None:
        """Run the device part of every later ``end_chunk`` through ``torch.compile``
        (``options``: its keyword arguments)."""
        self._evict = torch.compile(self.evict, **options)

    def mark_static(self) -> None:
        """Mark every buffer the passes and ``end_chunk`` write in place as a static address,
        so that CUDA graphs (``reduce-overhead``) may replay over them instead of copying."""
        for store in self.stores:
            for tensor in store.state_tensors():
                torch._dynamo.mark_static_address(tensor)

    def rewind(self, frame: int, keep: Callable[[HeadGroup], torch.Tensor]) -> None:
        """Step back to ``frame`` for a KV re-cache (a prompt switch, ``headforcing.switch``).

        Every group keeps the slots ``keep(group)`` marks (``[capacity]`` bool, all of frames
        before ``frame``) and drops the rest; the caller then commits the frames from ``frame``
        on again, chunk by chunk, and every rule selects from them as from any new chunk.
        """
        if self.chunk is not None:
            raise RuntimeError("rewind() between chunks only")
        if not 0 <= frame <= self.frames_done:
            raise ValueError(f"cannot rewind to frame {frame}: {self.frames_done} frames are done")
        by_store: dict[int, list[torch.Tensor]] = {id(store): [] for store in self.stores}
        for group in sorted(self.groups(), key=lambda group: group.index):
            by_store[id(group.store)].append(keep(group))
        for store in self.stores:
            store.rewind(frame, torch.stack(by_store[id(store)]))
        self.frames_done = frame

    # -- reports ---------------------------------------------------------------------------

    def groups(self) -> Iterator[HeadGroup]:
        for layer_groups in self.layers:
            yield from layer_groups

    @property
    def position_record(self) -> torch.Tensor:
        """The largest temporal position attended so far, as a device scalar (no host read)."""
        return self._max_position

    @property
    def max_position(self) -> int:
        """Largest temporal position any head has attended at (reads the device)."""
        return int(self._max_position)

    def bytes_held(self) -> int:
        """Bytes of every tensor the cache holds (K/V, raw bands, token ids, scores)."""
        return sum(store.bytes_held() for store in self.stores)

    def kept_frames(self, layer: int = 0) -> list[list[int]]:
        """Distinct frames each group of ``layer`` keeps (for reports and tests)."""
        return [group.frame_ids.unique().tolist() for group in self.layers[layer]]


class CacheAttention:
    """One pass's view of the cache, handed to the transformer as its attention backend."""

    def __init__(self, cache: KVCache, commit: bool) -> None:
        self.cache = cache
        self.commit = commit

    def attend(self, layer: int, q, k, v):
        return self.cache.attend(layer, q, k, v, self.commit)


def contiguous_groups(
    policy: CachePolicy, config: WanConfig, chunk_frames: int, head_order
) -> bool:
    """Whether every head group of ``policy`` is a contiguous run of the model's heads in
    ``head_order`` (per layer, the original head at every position)."""
    for layer, order in enumerate(head_order):
        for spec in policy.head_groups(layer, config.num_heads, chunk_frames):
            where = sorted(order.index(head) for head in spec.heads)
            if where != list(range(where[0], where[0] + len(where))):
                return False
    return True


def _split_sizes(groups: list[HeadGroup]) -> list[int] | None:
    """The head counts of a layer's groups if they are slices that follow each other from
    head 0 on, else ``None`` (gathered heads)."""
    start = 0
    for group in groups:
        index = group.head_index
        if not isinstance(index, slice) or index.start != start:
            return None
        start = index.stop
    return [len(group.heads) for group in groups]


def _check_partition(specs: list[HeadGroupSpec], num_heads: int, layer: int) -> None:
    heads = sorted(head for spec in specs for head in spec.heads)
    if heads != list(range(num_heads)) or any(not spec.heads for spec in specs):
        groups = [list(spec.heads) for spec in specs]
        raise ValueError(
            f"layer {layer}: head groups {groups} must split heads 0..{num_heads - 1}, "
            "each head in exactly one non-empty group"
        )
