"""The KV cache: per layer, head groups that each own fixed-capacity buffers on the device.

Lifecycle of one chunk (DESIGN.md, "The engine"):

1. ``begin_chunk(frames)``: every group claims the slots the chunk's tokens will occupy, places
   its re-placed tokens (relative positions: the sink and the memory episodes) at this chunk's
   temporal positions, and decides whether attention needs a mask (only while a buffer is not
   yet full).
2. Denoising passes (``attention()``): per layer, q and k are rotated once for all heads; every
   group writes the chunk's K/V into its claimed slots (in place) and runs one attention call
   over its whole buffer.
3. The clean pass at ``t = 0`` (``attention(commit=True)``) does the same; memory groups also
   score how much sampled queries attend to every stored token.
4. ``end_chunk()``: frames that leave the recent window are dropped or handed to the memory, all
   by tensor operations on the device. While some memory is not yet known to be full, one small
   tensor is read once per chunk (whether each is full); afterwards not even that.

Positions. Every key in a buffer is rotated at an *absolute* temporal phase: the chunk's queries
and keys at their own frame index, so a contiguous run of recent frames never needs re-rotation
(a RoPE score depends only on the position difference). Tokens that relative positions put
elsewhere (the sink, memory episodes) keep their raw temporal band in a small side buffer and
are rotated once per chunk to where the layout wants them: ``band_dim`` of ``head_dim``
channels (44 of 128 for Wan) for those tokens only. The layout a group reports
(:attr:`HeadGroup.layout`) is the relative one; it differs from what the kernel computes by one
shift of all positions, which no attention score can tell apart.

Buffers of a group (``Hg`` heads, ``T`` tokens per frame): ``[sink S*T | long-term memory |
ring (R+C)*T]`` keys and values, the ring holding the recent frames and the chunk (frame ``f``
in frame-slot ``(f - S) mod (R + C)``), plus per slot its token id (``-1``: empty) and, for
memories that select by attention, its importance. A ring larger than the video so far grows
by doubling up to its bound; ``full`` is the one unbounded retention.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Protocol

import torch
import torch.nn.functional as F

from headforcing.cache.memory import MemoryStore
from headforcing.cache.policy import CachePolicy, HeadGroupSpec, Layout
from headforcing.model.config import WanConfig
from headforcing.model.rope import Rope3D, cos_sin, rotate

# query rows sampled per chunk to score the importance of stored tokens
IMPORTANCE_ROWS = 64
# ring frames allocated at most before the video needs them (a ring grows by doubling, up to
# its bound; ``full`` has none); windows of the trained range (21 frames) are allocated whole
RING_START_FRAMES = 24


@dataclass(frozen=True)
class ChunkInfo:
    """The chunk being generated: frames ``first_frame .. first_frame + num_frames - 1``."""

    first_frame: int
    num_frames: int
    tokens_per_frame: int

    @property
    def end_frame(self) -> int:
        return self.first_frame + self.num_frames

    @property
    def num_tokens(self) -> int:
        return self.num_frames * self.tokens_per_frame

    def token_ids(self) -> torch.Tensor:
        """``[num_tokens]`` absolute index of every token of the chunk (CPU, int64)."""
        first = self.first_frame * self.tokens_per_frame
        return torch.arange(first, first + self.num_tokens)


class AttentionObserver(Protocol):
    """Sees every group's rotated queries (the head profiler is one); reads the keys they
    attend to with :meth:`HeadGroup.attended`."""

    def observe(
        self, layer: int, group: HeadGroup, q: torch.Tensor, chunk: ChunkInfo, commit: bool
    ) -> None: ...


def sample_rows(length: int, count: int, device=None) -> torch.Tensor:
    """``count`` query rows spread evenly over ``length`` (all rows if fewer)."""
    if length <= count:
        return torch.arange(length, device=device)
    return torch.linspace(0, length - 1, count, device=device).round().long()


def sampled_attention(
    q: torch.Tensor, keys: torch.Tensor, rows: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Softmax attention probabilities of a few query rows, in float32.

    q: ``[B, H, L, D]`` rotated queries; keys: ``[B, H, N, D]`` rotated keys; rows: ``[R]``;
    valid: ``[1, N]`` bool or ``None`` (all). Returns ``[B, H, R, N]``: memory grows with R * N,
    never with L * N.
    """
    queries = q[:, :, rows.to(q.device)].float()
    scores = queries @ keys.float().transpose(-1, -2) / q.shape[-1] ** 0.5
    if valid is not None:
        scores = scores.masked_fill(~valid, -torch.inf)
    return torch.softmax(scores, dim=-1)


@dataclass(frozen=True)
class Snapshot:
    """What a group keeps, in token order (a report): ids ``[N]`` (CPU), keys ``[B, Hg, N, D]``
    rotated at their own frame (temporal) and position (spatial), values ``[B, Hg, N, D]``."""

    token_ids: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor


class HeadGroup:
    """Some heads of one layer: their fixed-capacity K/V buffers and the rule that fills them.

    Parameters
    ----------
    spec:
        The heads, their retention and label.
    head_index:
        Where the heads sit in the layer's q/k/v: a slice (contiguous, the fast path) or an
        index tensor.
    cache:
        The cache (shapes, RoPE, device, dtype).
    """

    def __init__(self, spec: HeadGroupSpec, head_index, cache: KVCache) -> None:
        self.heads, self.rule, self.label = spec.heads, spec.rule, spec.label
        self.head_index = head_index
        self.cache = cache
        self.tokens_per_frame = tokens = cache.tokens_per_frame
        self.chunk_frames = cache.chunk_frames
        self.band_dim = cache.rope.temporal_dim
        rule = self.rule
        self.sink_frames = rule.sink_frames
        self.bounded = rule.recent_frames is not None
        # the ring holds the recent frames and the chunk: its bound, then what is allocated
        # (it grows by doubling up to the bound while the video is shorter: before any wrap)
        self.ring_bound = rule.recent_frames + self.chunk_frames if self.bounded else None
        self.ring_frames = min(self.ring_bound or RING_START_FRAMES, RING_START_FRAMES)
        memory_base = self.sink_frames * tokens
        memory_tokens = rule.memory.capacity(tokens) if rule.memory is not None else 0
        self.ring_base = memory_base + memory_tokens
        capacity = self.ring_base + self.ring_frames * tokens
        relative = rule.positions == "relative"

        batch, head_dim, device = cache.batch, cache.config.head_dim, cache.device
        shape = (batch, len(self.heads), capacity, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=cache.dtype)
        self.values = torch.zeros(shape, device=device, dtype=cache.dtype)
        self.slot_token = torch.full((capacity,), -1, dtype=torch.int32, device=device)
        self.importance = None
        self.band = None
        replaced = self.sink_frames * tokens + memory_tokens
        if relative and replaced:
            band_shape = (batch, len(self.heads), replaced, self.band_dim)
            self.band = torch.zeros(band_shape, device=device, dtype=cache.dtype)
        self.memory: MemoryStore | None = None
        if rule.memory is not None:
            if rule.memory.importance_decay is not None:
                self.importance = torch.zeros(capacity, device=device)
            band_base = memory_base if self.band is not None else None
            self.memory = rule.memory.build(self, memory_base, band_base)
        self.token_arange = torch.arange(tokens, device=device)

        # host bookkeeping: which frames the sink and every ring frame-slot hold
        self.sink_present = 0
        self.ring: list[int | None] = [None] * self.ring_frames
        # per chunk (begin_chunk): the claimed slots, the attended length, the mask
        self.write_index: torch.Tensor | None = None
        self.length = 0
        self.mask: torch.Tensor | None = None
        self.known_full = False
        self.chunk_position: torch.Tensor | int = 0  # relative position of the chunk's 1st frame

    # -- sizes -----------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    def bytes_held(self) -> int:
        tensors = [self.keys, self.values, self.slot_token, self.band, self.importance]
        if self.memory is not None:
            tensors += self.memory.state_tensors()
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    # -- the chunk lifecycle ---------------------------------------------------------------

    def _ring_slot(self, frame: int) -> int:
        offset = frame - self.sink_frames
        return offset % self.ring_bound if self.bounded else offset

    def _frame_start(self, frame: int) -> int:
        """First slot of ``frame``."""
        if frame < self.sink_frames:
            return frame * self.tokens_per_frame
        return self.ring_base + self._ring_slot(frame) * self.tokens_per_frame

    def _grow(self, frames: int) -> None:
        """Make room for ``frames`` ring frames (doubling, up to the bound)."""
        size = self.ring_frames
        while size < frames:
            size *= 2
        size = min(size, self.ring_bound or size)
        extra = (size - self.ring_frames) * self.tokens_per_frame
        self.keys = F.pad(self.keys, (0, 0, 0, extra))
        self.values = F.pad(self.values, (0, 0, 0, extra))
        self.slot_token = F.pad(self.slot_token, (0, extra), value=-1)
        if self.importance is not None:
            self.importance = F.pad(self.importance, (0, extra))
        self.ring += [None] * (size - self.ring_frames)
        self.ring_frames = size

    def begin(self, chunk: ChunkInfo, chunk_ids: torch.Tensor) -> None:
        """Claim the chunk's slots, place re-placed tokens, pick the mask (no host read)."""
        frames = range(chunk.first_frame, chunk.end_frame)
        ring_used = min(max(chunk.end_frame - self.sink_frames, 0), self.ring_bound or 2**62)
        if ring_used > self.ring_frames:
            self._grow(ring_used)
        starts = [self._frame_start(frame) for frame in frames]
        self.write_index = torch.cat([self.token_arange + start for start in starts])
        ring_before = [frame for frame in self.ring if frame is not None]
        for frame in frames:
            if frame >= self.sink_frames:
                slot = self._ring_slot(frame)
                assert self.ring[slot] is None, "the ring must have room for the chunk"
                self.ring[slot] = frame
        self.slot_token.index_copy_(0, self.write_index, chunk_ids)
        if self.importance is not None:
            self.importance.index_fill_(0, self.write_index, 0.0)

        # relative positions: sink, episodes, the recent run, then the chunk
        ring_length = len(ring_before)
        assert not ring_before or (
            min(ring_before) == chunk.first_frame - ring_length
            and max(ring_before) == chunk.first_frame - 1
        ), "recent frames must run up to the chunk"
        episodes = self.memory.span() if self.memory is not None else 0
        self.chunk_position = self.sink_present + episodes + ring_length
        if self.band is not None:
            self._place(chunk.first_frame - self.chunk_position)

        # attend to the sink, the memory and the ring: a bounded ring whole (its empty slots
        # masked while it fills: the shapes never change, so a compiled pass is reused);
        # ``full`` to the frames so far (until a ring wraps, it holds frames in slots 0, 1, ...)
        attended = self.ring_frames if self.bounded else ring_used
        self.length = self.ring_base + attended * self.tokens_per_frame
        self.known_full = self._known_full(chunk, attended)

    def set_mask(self, masked: bool) -> None:
        """Attend with a mask of the slots holding tokens (``masked``), or to every slot."""
        self.mask = (self.slot_token[None, : self.length] >= 0) if masked else None

    def _known_full(self, chunk: ChunkInfo, attended: int) -> bool:
        """Whether the host knows every attended slot holds a token (no mask needed)."""
        sink_done = max(self.sink_present, min(chunk.end_frame, self.sink_frames))
        ring_done = all(frame is not None for frame in self.ring[:attended])
        memory_done = self.memory is None or self.memory.known_full
        return sink_done == self.sink_frames and ring_done and memory_done

    def _place(self, origin) -> None:
        """Rotate the re-placed tokens' raw bands to this chunk's phase: relative position
        ``p`` sits at absolute phase ``origin + p`` (``origin`` may be a device scalar)."""
        tokens, band = self.tokens_per_frame, self.band_dim
        if self.sink_present:
            sink = torch.arange(self.sink_present, device=self.keys.device) + origin
            region = slice(0, self.sink_present * tokens)
            cos, sin = self._angles(sink, repeat=tokens)
            self.keys[:, :, region, :band] = rotate(self.band[:, :, region], cos, sin)
        if self.memory is not None:
            positions = origin + self.sink_present + self.memory.positions()  # [tokens]
            cos, sin = self._angles(positions)
            raw = self.band[:, :, self.sink_frames * tokens :]
            self.keys[:, :, self.memory.region, :band] = rotate(raw, cos, sin)

    def _angles(self, positions: torch.Tensor, repeat: int = 1):
        """``(cos, sin)`` of the temporal band at ``positions [P]``, each repeated ``repeat``
        times: ``[P * repeat, band_dim // 2]``."""
        angles = positions.to(torch.float64)[:, None] * self.cache.inverse_frequencies
        return cos_sin(angles.repeat_interleave(repeat, dim=0))

    def unrotate(self, x: torch.Tensor, frame: int) -> torch.Tensor:
        """Undo the temporal rotation at ``frame`` of ``x [..., D or band]``'s band: the raw
        band (temporal position 0) of a key rotated at its own frame; other channels as given."""
        band = self.band_dim
        position = torch.full((1,), -frame, device=x.device)
        cos, sin = self._angles(position)
        raw = rotate(x[..., None, :band], cos, sin)[..., 0, :]
        if x.shape[-1] == band:
            return raw
        return torch.cat([raw, x[..., band:]], dim=-1)

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, commit: bool
    ) -> torch.Tensor:
        """q, k: rotated, v: ``[B, Hg, L, D]`` -> ``[B, Hg, L, D]``; writes the chunk's K/V."""
        self.keys.index_copy_(2, self.write_index, k)
        self.values.index_copy_(2, self.write_index, v)
        keys, values = self.keys[:, :, : self.length], self.values[:, :, : self.length]
        mask = self.mask
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        if commit and self.importance is not None:
            rows = self.cache.importance_rows
            mass = sampled_attention(q, keys, rows, mask).sum(dim=(0, 1, 2))  # [N]
            decay = self.rule.memory.importance_decay
            self.importance[: self.length].mul_(decay).add_(mass)
        return out

    def end(self, chunk: ChunkInfo, frames_done: int) -> None:
        """After the commit: keep the sink's raw bands, evict what leaves the recent frames."""
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
            return
        oldest_kept = frames_done - self.rule.recent_frames
        evicted = sorted(frame for frame in self.ring if frame is not None and frame < oldest_kept)
        for frame in evicted:
            start = self._frame_start(frame)
            if self.memory is not None:
                self.memory.absorb(self, frame, start)
            self.slot_token[start : start + tokens] = -1
            self.ring[self._ring_slot(frame)] = None

    # -- prompt switches -------------------------------------------------------------------

    def rewind(self, frame: int, keep: torch.Tensor) -> None:
        """Keep the slots ``keep [capacity]`` marks, drop the rest (between chunks; reads the
        device to bring the host's bookkeeping in line)."""
        held = self.slot_token >= 0
        assert not (self.slot_frames()[held & keep] >= frame).any(), "kept tokens precede frame"
        self.slot_token.masked_fill_(held & ~keep, -1)
        if self.memory is not None:
            self.memory.after_rewind(self, keep)
        tokens = self.tokens_per_frame
        sink = self.slot_token[: self.sink_frames * tokens : tokens].tolist()
        ring = self.slot_token[self.ring_base :: tokens].tolist()
        self.sink_present = sum(1 for token in sink if token >= 0)
        self.ring = [token // tokens if token >= 0 else None for token in ring]

    def memory_slots(self) -> torch.Tensor | None:
        """``[capacity]`` bool: slots that are long-term memory (episodes); ``None``: none."""
        return None if self.memory is None else self.memory.slot_mask(self.capacity)

    def on_prompt_switch(self) -> None:
        if self.memory is not None:
            self.memory.on_prompt_switch()

    # -- reports (they read the device: tests, profiling, progress; never per pass) ----------

    def slot_frames(self) -> torch.Tensor:
        """``[capacity]`` frame of every slot's token (``-1``: empty), on the device."""
        return torch.where(self.slot_token >= 0, self.slot_token // self.tokens_per_frame, -1)

    def attended(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """During a pass: the keys attended ``[B, Hg, N, D]``, their frames ``[N]`` and the
        mask ``[1, N]`` (``None``: all)."""
        return self.keys[:, :, : self.length], self.slot_frames()[: self.length], self.mask

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
        return getattr(self.memory, "episodes", lambda group: [])(self)

    @property
    def opened_at(self) -> list[int]:
        return getattr(self.memory, "opened_at", list)()

    @property
    def layout(self) -> Layout:
        """The temporal positions of the open chunk: kept tokens (ascending id), chunk frames."""
        chunk = self.cache.chunk
        if chunk is None:
            raise RuntimeError("layout is defined while a chunk is open")
        frames = self.frame_ids
        chunk_frames = torch.arange(chunk.first_frame, chunk.end_frame)
        if self.rule.positions == "absolute":
            return Layout(frames, chunk_frames)
        start = int(self.chunk_position)
        position = frames - chunk.first_frame + start  # the recent run: right before the chunk
        position[frames < self.sink_frames] = frames[frames < self.sink_frames]
        if self.memory is not None:
            kept = self._kept_slots()
            in_memory = self.memory_slots()[kept].cpu()
            offsets = self.memory.positions()[kept[in_memory] - self.memory.region.start]
            position[in_memory] = self.sink_present + offsets.cpu()
        return Layout(position, chunk_frames - chunk.first_frame + start)

    def snapshot(self) -> Snapshot:
        """Kept tokens with keys at their own absolute frame (what a ``full`` cache holds)."""
        slots = self._kept_slots()
        keys = self.keys[:, :, slots].clone()
        if self.band is not None:
            tokens = self.slot_token[slots].long()
            frames = tokens // self.tokens_per_frame
            replaced = slots < self.ring_base  # sink and memory: the band is [sink | memory]
            raw = self.band[:, :, slots[replaced]]
            cos, sin = self._angles(frames[replaced])
            keys[:, :, replaced, : self.band_dim] = rotate(raw, cos, sin)
        return Snapshot(self.slot_token[slots].long().cpu(), keys, self.values[:, :, slots].clone())


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
        self.layers = [
            self._build_layer(layer, policy, head_order) for layer in range(config.num_layers)
        ]
        self.observers: list[AttentionObserver] = []
        self.frames_done = 0
        self.chunk: ChunkInfo | None = None
        self._max_position = torch.full((), -1, dtype=torch.long, device=self.device)
        self.importance_rows: torch.Tensor | None = None
        self._cos = self._sin = None
        self._passes = {commit: CacheAttention(self, commit) for commit in (False, True)}

    def _build_layer(self, layer: int, policy: CachePolicy, head_order) -> list[HeadGroup]:
        specs = policy.head_groups(layer, self.config.num_heads, self.chunk_frames)
        _check_partition(specs, self.config.num_heads, layer)
        order = list(range(self.config.num_heads)) if head_order is None else head_order[layer]
        held = set(order)  # a cache of some heads only (one rank of a head-parallel stream)
        groups = []
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
            groups.append(HeadGroup(spec, index, self))
        return groups

    # -- the chunk lifecycle ---------------------------------------------------------------

    def begin_chunk(self, num_frames: int) -> ChunkInfo:
        """Open the next chunk (it starts where the last one ended) and prepare every group."""
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
        groups = list(self.groups())
        for group in groups:
            group.begin(chunk, chunk_ids)
            if group.rule.positions == "relative":
                top = group.chunk_position + num_frames - 1  # a device scalar with a memory
            else:
                top = chunk.end_frame - 1
            if isinstance(top, torch.Tensor):
                self._max_position = torch.maximum(self._max_position, top)
            else:
                self._max_position = self._max_position.clamp_min(top)
        # one mask decision for all: while any group has an empty slot, every group masks, so
        # a compiled pass sees two layouts in a video (filling, full), not one per group
        masked = not all(group.known_full for group in groups)
        for group in groups:
            group.set_mask(masked)
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
        out = None if len(groups) == 1 else torch.empty_like(q)
        for group in groups:
            heads = group.head_index
            group_q = q[:, heads]
            group_out = group.attend(group_q, k[:, heads], v[:, heads], commit)
            for observer in self.observers:
                observer.observe(layer, group, group_q, self.chunk, commit)
            if out is None:
                out = group_out
            else:
                out[:, heads] = group_out  # each group writes its slice: no concatenation
        return out.transpose(1, 2)

    def end_chunk(self) -> None:
        """After the commit pass: every group evicts or memorises; at most one host read (the
        episode counts, while some memory is not yet known to be full)."""
        chunk = self.chunk
        if chunk is None:
            raise RuntimeError("no chunk is open")
        self.frames_done = chunk.end_frame
        for group in self.groups():
            group.end(chunk, self.frames_done)
        self.chunk = None
        pending = [
            group.memory
            for group in self.groups()
            if group.memory is not None and not group.memory.known_full
        ]
        if pending:
            full = torch.stack([memory.full() for memory in pending]).tolist()
            for memory, is_full in zip(pending, full, strict=True):
                memory.known_full = is_full

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
        for group in self.groups():
            group.rewind(frame, keep(group))
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
        return sum(group.bytes_held() for group in self.groups())

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


def _check_partition(specs: list[HeadGroupSpec], num_heads: int, layer: int) -> None:
    heads = sorted(head for spec in specs for head in spec.heads)
    if heads != list(range(num_heads)) or any(not spec.heads for spec in specs):
        groups = [list(spec.heads) for spec in specs]
        raise ValueError(
            f"layer {layer}: head groups {groups} must split heads 0..{num_heads - 1}, "
            "each head in exactly one non-empty group"
        )
