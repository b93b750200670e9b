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
kept token at any temporal position at read time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from headforcing.cache.policy import CachePolicy, HeadGroupSpec, Layout
from headforcing.model.config import WanConfig
from headforcing.model.rope import Rope3D, cos_sin, rotate, rotate_temporal


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


class HeadGroup:
    """Heads ``start:stop`` of one layer: their kept K/V and the read view of the chunk.

    State (``Hg`` heads, ``N`` kept tokens, ``C`` tokens of the largest chunk):

    - ``keys [B, Hg, N, D]``: rotated in the spatial bands only;
    - ``values [B, Hg, N + C, D]``: kept values, then a slot for the current chunk;
    - ``token_ids [N]`` (CPU): absolute index of every kept token (``frame * T + spatial``),
      ascending; ``frame_ids`` derives from it;
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
        self.start, self.stop, self.rule = spec.start, spec.stop, spec.rule
        self.chunk_frames = chunk_frames
        self.tokens_per_frame = tokens_per_frame
        heads = spec.stop - spec.start
        self.keys = torch.empty(batch, heads, 0, head_dim, device=device, dtype=dtype)
        self.values = torch.empty(batch, heads, 0, head_dim, device=device, dtype=dtype)
        self.token_ids = torch.empty(0, dtype=torch.long)
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
        if self.read_keys is not None:
            tensors.append(self.read_keys)
        return sum(t.numel() * t.element_size() for t in tensors)

    def prepare(self, chunk: ChunkInfo, rope: Rope3D, spatial_angles: torch.Tensor) -> None:
        """Lay out the kept tokens and the chunk; rotate the kept keys once for the chunk."""
        self.layout = self.rule.layout(self.frame_ids, chunk.first_frame, chunk.num_frames)
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

    def attend(self, q, k, v, chunk: ChunkInfo, spatial_cos_sin, commit: bool) -> torch.Tensor:
        """q, k, v: ``[B, L, Hg, D]`` unrotated -> ``[B, L, Hg, D]``."""
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, Hg, L, D]
        kept, length = self.kept_tokens, q.shape[2]
        self.read_keys[:, :, kept : kept + length] = rotate(k, self._chunk_cos, self._chunk_sin)
        self.values[:, :, kept : kept + length] = v
        out = F.scaled_dot_product_attention(
            rotate(q, self._chunk_cos, self._chunk_sin),
            self.read_keys[:, :, : kept + length],
            self.values[:, :, : kept + length],
        )
        if commit:
            self._commit(rotate(k, *spatial_cos_sin), chunk)
        return out.transpose(1, 2)

    def _commit(self, spatial_keys: torch.Tensor, chunk: ChunkInfo) -> None:
        """Append the chunk (its values are already in the slot), then apply the rule."""
        keys = torch.cat([self.keys, spatial_keys], dim=2)
        values = self.values[:, :, : keys.shape[2]]
        token_ids = torch.cat([self.token_ids, chunk.token_ids()])
        frame_ids = token_ids // self.tokens_per_frame
        keep = self.rule.retain(frame_ids, chunk.end_frame, self.chunk_frames)
        if keep is not None:
            index = keep.to(keys.device)
            keys, values, token_ids = keys[:, :, index], values[:, :, index], token_ids[keep]
        self.keys = keys.contiguous()
        self.values = values.contiguous()
        self.token_ids = token_ids
        self.read_keys = None
        self.layout = None


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
        *,
        batch: int = 1,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        policy.check_chunk(chunk_frames)
        self.policy = policy
        self.chunk_frames = chunk_frames
        self.tokens_per_frame = height_tokens * width_tokens
        self.rope = Rope3D(config.head_dim, config.rope_theta)
        self.spatial_angles = self.rope.spatial_angles(height_tokens, width_tokens, device)
        shape = dict(batch=batch, head_dim=config.head_dim, device=device, dtype=dtype)
        self.layers: list[list[HeadGroup]] = []
        for layer in range(config.num_layers):
            specs = policy.head_groups(layer, config.num_heads)
            _check_partition(specs, config.num_heads, layer)
            groups = [
                HeadGroup(spec, chunk_frames, self.tokens_per_frame, **shape) for spec in specs
            ]
            self.layers.append(groups)
        self.frames_done = 0
        self.max_position = -1  # largest temporal position any head has attended at
        self.chunk: ChunkInfo | None = None
        self._spatial_cos_sin = None

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
        if len(groups) == 1:
            out = groups[0].attend(q, k, v, chunk, self._spatial_cos_sin, commit)
        else:
            # each group writes its slice of one buffer: no concatenation
            out = torch.empty_like(v)
            for g in groups:
                heads = slice(g.start, g.stop)
                out[:, :, heads] = g.attend(
                    q[:, :, heads],
                    k[:, :, heads],
                    v[:, :, heads],
                    chunk,
                    self._spatial_cos_sin,
                    commit,
                )
        if commit and layer == len(self.layers) - 1:
            self.frames_done = chunk.end_frame
            self.chunk = None
        return out

    def groups(self):
        for layer_groups in self.layers:
            yield from layer_groups

    def bytes_held(self) -> int:
        """Bytes of every tensor the cache holds (stores, read views, frame ids)."""
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
    bounds = [(spec.start, spec.stop) for spec in specs]
    expected_start = 0
    for start, stop in bounds:
        if start != expected_start or stop <= start:
            break
        expected_start = stop
    if expected_start != num_heads:
        raise ValueError(
            f"layer {layer}: head groups {bounds} must cover heads 0..{num_heads - 1} "
            "contiguously, in order"
        )
