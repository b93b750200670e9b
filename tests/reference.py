"""Independent references for tests: RoPE by complex multiplication and naive softmax attention
(in the package, :mod:`headforcing.testing`, for users' policies too), DiT's 2D sin-cos
position table."""

import math

import torch

from headforcing.testing import (  # noqa: F401 (re-exported for the tests)
    naive_attention,
    reference_rope_angles,
    reference_rotate,
    relative_error,
)


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
