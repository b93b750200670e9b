"""One stream over several ranks by heads (Ulysses-style sequence parallelism).

Every rank holds ``1/P`` of every latent frame's tokens for the linear layers (projections,
cross-attention, FFN: all per token, modulation per frame) and, for self-attention, all tokens
of its own heads. Around self-attention two ``all_to_all_single`` calls trade one layout for the
other::

    q, k, v [B, F*T_r, H, D]  --all-to-all-->  [B, F*T, H_r, D]  (frame-major: the cache's order)
    out     [B, F*T, H_r, D]  --all-to-all-->  [B, F*T_r, H, D]

so each rank's :class:`~headforcing.cache.kv.KVCache` holds its heads only: the K/V per rank
falls by ``P`` (balanced by :func:`~headforcing.distributed.balance.assign_heads`). Patch and
time embeddings run replicated (small); the output head runs on the token shard and the shards
are gathered, so every rank holds the same flow, draws the same noise (from the same seed) and
stays in step without further messages.

The model's heads are permuted once (:meth:`~headforcing.model.WanModel.set_head_order`) so that
every rank's heads are one contiguous run of q/k/v/o, group after group inside it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from headforcing.cache.kv import KVCache
from headforcing.cache.policy import CachePolicy
from headforcing.distributed.balance import HeadAssignment, assign_heads
from headforcing.distributed.world import World
from headforcing.model.transformer import TextContext


def token_shards(tokens_per_frame: int, ranks: int) -> list[int]:
    """Tokens of every frame each rank holds: as even as can be, the first ranks one more."""
    base, extra = divmod(tokens_per_frame, ranks)
    return [base + (rank < extra) for rank in range(ranks)]


class HeadExchange:
    """The self-attention backend of one pass on one rank: the two all-to-alls around the
    cache's attention of this rank's heads.

    Parameters
    ----------
    inner:
        The cache's backend for the pass (this rank's heads, all tokens).
    heads:
        ``[layer][rank]`` the number of heads of every rank (their positions in q/k/v are
        consecutive, rank after rank).
    tokens:
        Tokens of every frame per rank.
    frames:
        Latent frames of the pass.
    """

    def __init__(self, inner, heads: list[list[int]], tokens: list[int], frames: int, rank: int):
        self.inner, self.heads, self.tokens = inner, heads, tokens
        self.frames, self.rank = frames, rank

    def attend(self, layer: int, q, k, v) -> torch.Tensor:
        """q, k, v: ``[B, F*T_r, H, D]`` (this rank's tokens, all heads) -> ``[B, F*T_r, H, D]``."""
        heads, tokens, frames = self.heads[layer], self.tokens, self.frames
        batch, _, _, head_dim = q.shape
        mine_heads, mine_tokens = heads[self.rank], tokens[self.rank]

        # send every rank its heads of my tokens: [3, B, F, T_r, H_j, D] per rank j
        qkv = torch.stack([q, k, v]).unflatten(2, (frames, mine_tokens))
        send = torch.cat([part.flatten() for part in qkv.split(heads, dim=4)])
        unit = 3 * batch * frames * mine_heads * head_dim
        received = exchange(
            send,
            [3 * batch * frames * mine_tokens * head_dim * h for h in heads],
            [unit * t for t in tokens],
        )
        # every rank's tokens of my heads, put back in frame-major order: [3, B, F, T, H_r, D]
        parts = [
            part.view(3, batch, frames, t, mine_heads, head_dim)
            for part, t in zip(received.split([unit * t for t in tokens]), tokens, strict=True)
        ]
        q, k, v = torch.cat(parts, dim=3).flatten(2, 3).unbind(0)  # [B, F*T, H_r, D]

        out = self.inner.attend(layer, q, k, v)  # [B, F*T, H_r, D]

        # send every rank my heads of its tokens; receive all heads of mine: [B, F, T_r, H, D]
        out = out.unflatten(1, (frames, sum(tokens)))
        send = torch.cat([part.flatten() for part in out.split(tokens, dim=2)])
        unit = batch * frames * mine_tokens * head_dim
        received = exchange(
            send,
            [batch * frames * t * mine_heads * head_dim for t in tokens],
            [unit * h for h in heads],
        )
        parts = [
            part.view(batch, frames, mine_tokens, h, head_dim)
            for part, h in zip(received.split([unit * h for h in heads]), heads, strict=True)
        ]
        return torch.cat(parts, dim=3).flatten(1, 2)


def exchange(send: torch.Tensor, send_sizes: list[int], receive_sizes: list[int]) -> torch.Tensor:
    """One ``all_to_all_single`` of flat tensors: ``send_sizes[j]`` elements to rank ``j``,
    ``receive_sizes[i]`` from rank ``i``."""
    received = send.new_empty(sum(receive_sizes))
    dist.all_to_all_single(received, send, receive_sizes, send_sizes)
    return received


class HeadParallel:
    """A pipeline's transformer run over the ranks of ``world`` by heads.

    Set as ``pipeline.parallel``: the pipeline's caches are then this rank's heads only
    (:meth:`new_cache`) and its passes go through :meth:`__call__`. Every rank runs the same
    chunk loop (same seed, same noise); rank 0 decodes and writes.
    """

    def __init__(self, pipeline, world: World) -> None:
        self.pipeline = pipeline
        self.model = pipeline.model
        self.world = world
        self.tokens = token_shards(pipeline.token_grid[0] * pipeline.token_grid[1], world.size)
        self.assignment: HeadAssignment | None = None
        self.cache: KVCache | None = None  # the newest cache (this rank's heads)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def assign(self, policy: CachePolicy) -> HeadAssignment:
        """The heads of every layer over the ranks, balanced by kept K/V tokens."""
        config, video = self.model.config, self.pipeline.preset.video
        height, width = self.pipeline.token_grid
        return assign_heads(
            policy,
            config.num_layers,
            config.num_heads,
            video.chunk_frames,
            height * width,
            self.world.size,
            video.trained_frames,
        )

    def new_cache(self, policy: CachePolicy) -> KVCache:
        """This rank's cache (its heads only); permutes the model's heads to the assignment."""
        assignment = self.assign(policy)
        self.model.set_head_order(assignment.head_order())
        self.assignment = assignment
        pipeline, video = self.pipeline, self.pipeline.preset.video
        self.cache = KVCache(
            policy,
            self.model.config,
            *pipeline.token_grid,
            video.chunk_frames,
            video.trained_frames,
            device=self.model.device,
            dtype=self.model.dtype,
            head_order=assignment.rank_heads(self.world.rank),
        )
        return self.cache

    @property
    def cache_bytes(self) -> int:
        """Bytes this rank's newest cache holds (0 before any)."""
        return 0 if self.cache is None else self.cache.bytes_held()

    def __call__(
        self, latents: torch.Tensor, timesteps: torch.Tensor, context: TextContext, attention
    ) -> torch.Tensor:
        """The model's forward over the ranks: same arguments, same flow ``[B, C, F, H, W]``.

        ``attention``: this rank's cache backend for the pass.
        """
        if self.assignment is None:
            raise RuntimeError("make the cache with new_cache() before a pass")
        model, rank, tokens = self.model, self.world.rank, self.tokens
        heads = [self.assignment.head_counts(layer) for layer in range(len(model.blocks))]
        # replicated: patch and time embeddings; then this rank's tokens of every frame
        x, grid = model.patchify(latents)  # [B, F, T, C]
        time_emb, time_mod = model.time_embeddings(timesteps.to(model.device))
        first = sum(tokens[:rank])
        x = x[:, :, first : first + tokens[rank]]  # [B, F, T_r, C]
        backend = HeadExchange(attention, heads, tokens, x.shape[1], rank)
        for layer, block in enumerate(model.blocks):
            x = block(x, time_mod, layer, backend, context.keys[layer], context.values[layer])
        out = model.head(x, time_emb)  # [B, F, T_r, C_out * patch volume]
        return model.unpatchify(gather_tokens(out, tokens), grid)


def gather_tokens(shard: torch.Tensor, tokens: list[int]) -> torch.Tensor:
    """Every rank's ``[B, F, T_r, C]`` -> ``[B, F, T, C]`` on every rank (padded to the largest
    shard for ``all_gather``, which wants equal sizes)."""
    largest = max(tokens)
    padded = shard.new_zeros(*shard.shape[:2], largest, shard.shape[3])
    padded[:, :, : shard.shape[2]] = shard
    parts = [torch.empty_like(padded) for _ in tokens]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:, :, :t] for part, t in zip(parts, tokens, strict=True)], dim=2)
