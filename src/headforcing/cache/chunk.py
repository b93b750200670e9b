"""What one chunk is, and the attention probabilities of a few of its query rows."""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
    queries = q.index_select(2, rows.to(q.device)) * q.shape[-1] ** -0.5
    if queries.dtype != torch.float32:
        queries, keys = queries.float(), keys.float()
    scores = queries @ keys.transpose(-1, -2)
    if valid is not None:
        scores = scores.masked_fill(~valid, -torch.inf)
    return torch.softmax(scores, dim=-1)
