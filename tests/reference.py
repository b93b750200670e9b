"""Independent references for tests: RoPE by complex multiplication, naive softmax attention,
DiT's 2D sin-cos position table."""

import math

import torch


def reference_rope_angles(head_dim, frame_pos, row, col, theta=10000.0):
    """Angles ``[N, head_dim // 2]`` for tokens at (frame_pos, row, col), written from the
    Wan formula: bands of head_dim - 4*(head_dim//6), 2*(head_dim//6), 2*(head_dim//6)."""
    hw = 2 * (head_dim // 6)
    bands = [(head_dim - 2 * hw, frame_pos), (hw, row), (hw, col)]
    parts = []
    for band, pos in bands:
        freqs = theta ** (-torch.arange(0, band, 2, dtype=torch.float64) / band)
        parts.append(pos.double()[:, None] * freqs[None])
    return torch.cat(parts, dim=1)


def reference_rotate(x, angles):
    """x: ``[..., N, D]``; rotate pairs (2i, 2i+1) as complex numbers by ``angles [N, D/2]``."""
    pairs = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2).contiguous())
    return torch.view_as_real(pairs * torch.polar(torch.ones_like(angles), angles)).flatten(-2)


def naive_attention(q, k, v):
    """q: ``[B, H, Lq, D]``, k, v: ``[B, H, Lk, D]`` -> ``[B, H, Lq, D]`` in float64."""
    scores = q.double() @ k.double().transpose(-1, -2) / q.shape[-1] ** 0.5
    return torch.softmax(scores, dim=-1) @ v.double()


def relative_error(actual, expected):
    difference = (actual.double() - expected.double()).abs().max()
    return (difference / expected.double().abs().max()).item()


def reference_2d_sincos(dim, height, width, theta=10000.0):
    """DiT's 2D sin-cos position embedding, one value at a time: ``[dim, height, width]``;
    channels [0, dim/2) embed the row, [dim/2, dim) the column, cos then sin in each half."""
    quarter = dim // 4
    table = torch.zeros(dim, height, width, dtype=torch.float64)
    for row in range(height):
        for col in range(width):
            for i in range(quarter):
                frequency = theta ** (-i / quarter)
                for offset, position in ((0, row), (dim // 2, col)):
                    table[offset + i, row, col] = math.cos(position * frequency)
                    table[offset + quarter + i, row, col] = math.sin(position * frequency)
    return table.float()
