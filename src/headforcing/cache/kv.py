"""The KV cache: per layer, head groups that each own a store and a rule.

Lifecycle of one chunk (DESIGN.md, ``cache/``):

1. ``begin_chunk(frames)``: every group lays its kept tokens out on temporal positions
   (its rule's :meth:`~headforcing.cache.policy.Retention.layout`) and rotates the stored keys
   to them, once for all the passes of this chunk.
2. Denoising passes (``attention()``): queries attend to ``[kept context + current chunk]``;
   nothing is stored.
3. The clean pass at ``t = 0`` (``attention(commit=True)``) attends the same way, then appends
   the chunk's keys and values and lets the rule evict or select.

Stored keys are rotated in the spatial bands only (temporal position 0), so a group can put any
kept token at any temporal position at read time. One attention call per group; every group
writes its heads' slice of one output buffer (no concatenation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from headforcing.cache.policy import CachePolicy, HeadGroupSpec, Layout
from headforcing.model.config import WanConfig
from headforcing.model.rope import Rope3D, cos_sin, rotate, rotate_temporal

# query rows sampled per chunk to score the importance of stored tokens
IMPORTANCE_ROWS = 64


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
    """Sees every group's rotated queries and keys (the head profiler is one)."""

    def observe(
        self,
        layer: int,
        group: HeadGroup,
        q: torch.Tensor,
        keys: torch.Tensor,
        chunk: ChunkInfo,
        commit: bool,
    ) -> None: ...


def sample_rows(length: int, count: int) -> torch.Tensor:
    """``count`` query rows spread evenly over ``length`` (all rows if fewer)."""
    if length <= count:
        return torch.arange(length)
    return torch.linspace(0, length - 1, count).round().long()


def sampled_attention(q: torch.Tensor, keys: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Softmax attention probabilities of a few query rows, in float32.

    q: ``[B, H, L, D]`` rotated queries; keys: ``[B, H, N, D]`` rotated keys; rows: ``[R]``.
    Returns ``[B, H, R, N]``: memory grows with R * N, never with L * N.
    """
    queries = q[:, :, rows.to(q.device)].float()
    scores = queries @ keys.float().transpose(-1, -2) / q.shape[-1] ** 0.5
    return torch.softmax(scores, dim=-1)


class HeadGroup:
    """Some heads of one layer: their kept K/V and the read view of the current chunk.

    State (``Hg`` heads, ``N`` kept tokens, ``C`` tokens of the chunk):

    - ``keys [B, Hg, N, D]``: rotated in the spatial bands only;
    - ``values [B, Hg, N + C, D]``: kept values, then a slot for the current chunk;
    - ``token_ids [N]`` (CPU): absolute index of every kept token (``frame * T + spatial``),
      ascending; ``frame_ids`` derives from it;
    - ``importance [N]`` (float32, only when the rule wants it): decayed attention mass;
    - ``read_keys [B, Hg, N + C, D]``: kept keys rotated to this chunk's layout, then the slot;
    - ``layout``: the temporal positions used for this chunk.
    """

    def __init__(
        self,
        spec: HeadGroupSpec,
        chunk_frames: int,
        tokens_per_frame: int,
        *,
        batch: int,
        head_dim: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> None:
        self.heads, self.rule, self.label = spec.heads, spec.rule, spec.label
        first, count = spec.heads[0], len(spec.heads)
        contiguous = spec.heads == tuple(range(first, first + count))
        self.head_index = (
            slice(first, first + count) if contiguous else torch.tensor(spec.heads, device=device)
        )
        self.chunk_frames = chunk_frames
        self.tokens_per_frame = tokens_per_frame
        self.keys = torch.empty(batch, count, 0, head_dim, device=device, dtype=dtype)
        self.values = torch.empty(batch, count, 0, head_dim, device=device, dtype=dtype)
        self.token_ids = torch.empty(0, dtype=torch.long)
        self.importance = torch.empty(0, device=device) if self.rule.wants_importance else None
        self.read_keys: torch.Tensor | None = None
        self.layout: Layout | None = None
        self._chunk_cos = self._chunk_sin = None

    @property
    def kept_tokens(self) -> int:
        return self.token_ids.numel()

    @property
    def frame_ids(self) -> torch.Tensor:
        """``[N]`` latent frame of every kept token (CPU)."""
        return self.token_ids // self.tokens_per_frame

    def bytes_held(self) -> int:
        tensors = [self.keys, self.values, self.token_ids]
        tensors += [t for t in (self.read_keys, self.importance) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def prepare(self, chunk: ChunkInfo, rope: Rope3D, spatial_angles: torch.Tensor) -> None:
        """Lay out the kept tokens and the chunk; rotate the kept keys once for the chunk."""
        self.layout = self.rule.layout(self, chunk.first_frame, chunk.num_frames)
        kept, device = self.kept_tokens, self.keys.device
        batch, heads, _, head_dim = self.keys.shape

        read_keys = self.keys.new_empty(batch, heads, kept + chunk.num_tokens, head_dim)
        if kept:
            cos, sin = cos_sin(rope.temporal_angles(self.layout.context.to(device)))
            read_keys[:, :, :kept] = rotate_temporal(self.keys, cos, sin)
        self.read_keys = read_keys
        if self.values.shape[2] < kept + chunk.num_tokens:
            grown = self.values.new_empty(batch, heads, kept + chunk.num_tokens, head_dim)
            grown[:, :, :kept] = self.values[:, :, :kept]
            self.values = grown
        angles = rope.token_angles(self.layout.chunk.to(device), spatial_angles)
        self._chunk_cos, self._chunk_sin = cos_sin(angles)

    def attend(
        self, q, k, v, chunk: ChunkInfo, spatial_cos_sin, commit: bool, observe=None
    ) -> torch.Tensor:
        """q, k, v: ``[B, L, Hg, D]`` unrotated -> ``[B, L, Hg, D]``.

        ``observe(q_rot, keys)`` is called with the rotated queries ``[B, Hg, L, D]`` and all
        keys attended to ``[B, Hg, N + L, D]``.
        """
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, Hg, L, D]
        kept, length = self.kept_tokens, q.shape[2]
        self.read_keys[:, :, kept : kept + length] = rotate(k, self._chunk_cos, self._chunk_sin)
        self.values[:, :, kept : kept + length] = v
        q_rot = rotate(q, self._chunk_cos, self._chunk_sin)
        keys = self.read_keys[:, :, : kept + length]
        out = F.scaled_dot_product_attention(q_rot, keys, self.values[:, :, : kept + length])
        if observe is not None:
            observe(q_rot, keys)
        if commit:
            mass = None
            if self.importance is not None:
                probs = sampled_attention(q_rot, keys, sample_rows(length, IMPORTANCE_ROWS))
                mass = probs.sum(dim=(0, 1, 2))  # [N + L]
            self._commit(rotate(k, *spatial_cos_sin), chunk, mass)
        return out.transpose(1, 2)

    def _commit(self, spatial_keys: torch.Tensor, chunk: ChunkInfo, mass) -> None:
        """Append the chunk (its values are already in the slot), then apply the rule."""
        self.keys = torch.cat([self.keys, spatial_keys], dim=2)
        self.values = self.values[:, :, : self.keys.shape[2]]
        self.token_ids = torch.cat([self.token_ids, chunk.token_ids()])
        if self.importance is not None:
            decay = getattr(self.rule, "importance_decay", 1.0)
            fresh = self.importance.new_zeros(chunk.num_tokens)
            self.importance = torch.cat([self.importance * decay, fresh]) + mass
        self.read_keys = self.layout = None
        self.apply_rule(chunk.end_frame)

    def apply_rule(self, frames_done: int) -> None:
        """Keep what the rule retains (compacting the stores)."""
        keep = self.rule.retain(self, frames_done, self.chunk_frames)
        if keep is not None:
            index = keep.to(self.keys.device)
            self.keys, self.values = self.keys[:, :, index], self.values[:, :, index]
            self.token_ids = self.token_ids[keep]
            if self.importance is not None:
                self.importance = self.importance[index]
        self.keys, self.values = self.keys.contiguous(), self.values.contiguous()

    def keep_only(self, keep: torch.Tensor) -> None:
        """Keep the stored tokens at ``keep`` (indices, ascending), drop the others outside the
        rule (a KV re-cache), and let the rule forget what was dropped."""
        index = keep.to(self.keys.device)
        self.keys = self.keys[:, :, index].contiguous()
        self.values = self.values[:, :, index].contiguous()
        self.token_ids = self.token_ids[keep]
        if self.importance is not None:
            self.importance = self.importance[index]
        self.rule.forget(self)

    def adopt(self, source: HeadGroup, frames_done: int) -> None:
        """Take this group's heads' tokens from ``source`` (which holds a superset of heads),
        then apply this group's rule: a cache regroups without losing what it kept."""
        positions = [source.heads.index(head) for head in self.heads]
        index = torch.tensor(positions, device=source.keys.device)
        kept = source.kept_tokens
        self.keys = source.keys[:, index, :kept].clone()
        self.values = source.values[:, index, :kept].clone()
        self.token_ids = source.token_ids.clone()
        if self.importance is not None:
            self.importance = (
                source.importance.clone()
                if source.importance is not None
                else self.importance.new_zeros(kept)
            )
        self.apply_rule(frames_done)


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
    ) -> None:
        policy.check(chunk_frames, trained_frames)
        self.config = config
        self.chunk_frames = chunk_frames
        self.trained_frames = trained_frames
        self.tokens_per_frame = height_tokens * width_tokens
        self.rope = Rope3D(config.head_dim, config.rope_theta)
        self.spatial_angles = self.rope.spatial_angles(height_tokens, width_tokens, device)
        self._shape = dict(batch=batch, head_dim=config.head_dim, device=device, dtype=dtype)
        self.policy = policy
        self.layers = self._build_layers(policy)
        self.observers: list[AttentionObserver] = []
        self.frames_done = 0
        self.max_position = -1  # largest temporal position any head has attended at
        self.chunk: ChunkInfo | None = None
        self._spatial_cos_sin = None

    def _build_layers(self, policy: CachePolicy) -> list[list[HeadGroup]]:
        layers = []
        for layer in range(self.config.num_layers):
            specs = policy.head_groups(layer, self.config.num_heads, self.chunk_frames)
            _check_partition(specs, self.config.num_heads, layer)
            layers.append(
                [
                    HeadGroup(spec, self.chunk_frames, self.tokens_per_frame, **self._shape)
                    for spec in specs
                ]
            )
        return layers

    def regroup(self, policy: CachePolicy) -> None:
        """Switch to ``policy`` between chunks; every new group starts from what the old
        groups of its layer kept for its heads (each old layer must be one group)."""
        if self.chunk is not None:
            raise RuntimeError("regroup() between chunks only")
        policy.check(self.chunk_frames, self.trained_frames)
        layers = self._build_layers(policy)
        for old_groups, new_groups in zip(self.layers, layers, strict=True):
            if len(old_groups) != 1:
                raise RuntimeError("regroup() needs a single head group per layer to start from")
            for group in new_groups:
                group.adopt(old_groups[0], self.frames_done)
        self.policy, self.layers = policy, layers

    def rewind(self, frame: int, keep: Callable[[HeadGroup], torch.Tensor]) -> None:
        """Step back to ``frame`` for a KV re-cache (a prompt switch, ``headforcing.switch``).

        Every group keeps the tokens ``keep(group)`` marks (``[N]`` bool, all of frames before
        ``frame``) and drops the rest; the caller then commits the frames from ``frame`` on
        again, chunk by chunk, and every rule selects from them as from any new chunk.
        """
        if self.chunk is not None:
            raise RuntimeError("rewind() between chunks only")
        if not 0 <= frame <= self.frames_done:
            raise ValueError(f"cannot rewind to frame {frame}: {self.frames_done} frames are done")
        for group in self.groups():
            mask = keep(group)
            assert not (group.frame_ids[mask] >= frame).any(), "kept tokens must precede frame"
            group.keep_only(mask.nonzero().squeeze(1))
        self.frames_done = frame

    def begin_chunk(self, num_frames: int) -> ChunkInfo:
        """Open the next chunk (it starts where the last one ended) and lay out every group."""
        if self.chunk is not None:
            raise RuntimeError("the previous chunk was never committed (no commit pass ran)")
        if not 1 <= num_frames <= self.chunk_frames:
            raise ValueError(f"a chunk has 1..{self.chunk_frames} frames, got {num_frames}")
        chunk = ChunkInfo(self.frames_done, num_frames, self.tokens_per_frame)
        for group in self.groups():
            group.prepare(chunk, self.rope, self.spatial_angles)
            layout = group.layout
            top = int(layout.chunk.max())
            if layout.context.numel():
                top = max(top, int(layout.context.max()))
            self.max_position = max(self.max_position, top)
        zero = torch.zeros(num_frames, dtype=torch.long, device=self.spatial_angles.device)
        self._spatial_cos_sin = cos_sin(self.rope.token_angles(zero, self.spatial_angles))
        self.chunk = chunk
        return chunk

    def attention(self, commit: bool = False) -> CacheAttention:
        """The backend for one pass over the open chunk; ``commit=True`` for the clean pass."""
        if self.chunk is None:
            raise RuntimeError("call begin_chunk() before a pass")
        return CacheAttention(self, commit)

    def attend(self, layer: int, q, k, v, commit: bool) -> torch.Tensor:
        chunk = self.chunk
        groups = self.layers[layer]
        out = None if len(groups) == 1 else torch.empty_like(v)
        for group in groups:
            observe = None
            if self.observers:

                def observe(q_rot, keys, group=group):
                    for observer in self.observers:
                        observer.observe(layer, group, q_rot, keys, chunk, commit)

            heads = group.head_index
            group_out = group.attend(
                q[:, :, heads],
                k[:, :, heads],
                v[:, :, heads],
                chunk,
                self._spatial_cos_sin,
                commit,
                observe,
            )
            if out is None:
                out = group_out
            else:
                out[:, :, heads] = group_out  # each group writes its slice: no concatenation
        if commit and layer == len(self.layers) - 1:
            self.frames_done = chunk.end_frame
            self.chunk = None
        return out

    def groups(self) -> Iterator[HeadGroup]:
        for layer_groups in self.layers:
            yield from layer_groups

    def bytes_held(self) -> int:
        """Bytes of every tensor the cache holds (stores, read views, token ids, scores)."""
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


def _check_partition(specs: list[HeadGroupSpec], num_heads: int, layer: int) -> None:
    heads = sorted(head for spec in specs for head in spec.heads)
    if heads != list(range(num_heads)) or any(not spec.heads for spec in specs):
        groups = [list(spec.heads) for spec in specs]
        raise ValueError(
            f"layer {layer}: head groups {groups} must split heads 0..{num_heads - 1}, "
            "each head in exactly one non-empty group"
        )
