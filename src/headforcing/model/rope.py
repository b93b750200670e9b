"""3D rotary position embedding with a free temporal position per token.

Wan splits ``head_dim`` into a temporal band and two spatial bands (44/42/42 channels for
head_dim 128; the same formula for other sizes). Adjacent channels form the rotated pairs. Angles
are ``position * theta**(-2i/band)`` computed in float64, exactly Wan's table entries, but
computed for any position: there is no 1024-position limit.

Because the bands occupy disjoint channels, the temporal and spatial rotations commute. The cache
uses this: keys are stored rotated in the spatial bands only (temporal position 0) and rotated in
the temporal band at read time, at whatever position a policy assigns.
"""

from __future__ import annotations

import torch


def band_sizes(head_dim: int) -> tuple[int, int, int]:
    """Channels of the (temporal, height, width) bands."""
    spatial = 2 * (head_dim // 6)
    return head_dim - 2 * spatial, spatial, spatial


def _inverse_frequencies(band: int, theta: float) -> torch.Tensor:
    # always on the CPU: a model built under a meta or CUDA device context must still get data
    return 1.0 / theta ** (torch.arange(0, band, 2, dtype=torch.float64, device="cpu") / band)


class Rope3D:
    """Rotation angles for temporal and spatial positions.

    Parameters
    ----------
    head_dim:
        Channels per head.
    theta:
        RoPE base (10000 for Wan).
    """

    def __init__(self, head_dim: int, theta: float = 10000.0) -> None:
        self.head_dim = head_dim
        self.temporal_dim, self.height_dim, self.width_dim = band_sizes(head_dim)
        self.temporal_pairs = self.temporal_dim // 2
        self._inv_t = _inverse_frequencies(self.temporal_dim, theta)
        self._inv_h = _inverse_frequencies(self.height_dim, theta)
        self._inv_w = _inverse_frequencies(self.width_dim, theta)

    def temporal_angles(self, positions: torch.Tensor) -> torch.Tensor:
        """``positions [N]`` -> angles ``[N, temporal_dim // 2]`` in float64."""
        return positions.to(torch.float64)[:, None] * self._inv_t.to(positions.device)

    def spatial_angles(
        self, height_tokens: int, width_tokens: int, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """Angles of one frame's tokens, row-major: ``[h * w, (height_dim + width_dim) // 2]``."""
        rows = torch.arange(height_tokens, dtype=torch.float64, device=device)
        cols = torch.arange(width_tokens, dtype=torch.float64, device=device)
        angle_h = (rows[:, None] * self._inv_h.to(device))[:, None, :].expand(-1, width_tokens, -1)
        angle_w = (cols[:, None] * self._inv_w.to(device))[None, :, :].expand(height_tokens, -1, -1)
        return torch.cat([angle_h, angle_w], dim=-1).reshape(height_tokens * width_tokens, -1)

    def token_angles(self, frame_positions: torch.Tensor, spatial: torch.Tensor) -> torch.Tensor:
        """Full angles for whole frames.

        frame_positions: ``[F]`` temporal position of each frame; spatial: ``[T, P_s]`` from
        :meth:`spatial_angles`. Returns ``[F * T, head_dim // 2]`` (frame-major, float64).
        """
        temporal = self.temporal_angles(frame_positions)  # [F, P_t]
        frames, tokens = temporal.shape[0], spatial.shape[0]
        return torch.cat(
            [
                temporal[:, None, :].expand(-1, tokens, -1),
                spatial[None, :, :].expand(frames, -1, -1),
            ],
            dim=-1,
        ).reshape(frames * tokens, -1)


def cos_sin(angles: torch.Tensor, dtype: torch.dtype = torch.float32):
    """float64 angles ``[L, P]`` -> ``(cos, sin)`` in ``dtype``, each ``[L, P]``."""
    return torch.cos(angles).to(dtype), torch.sin(angles).to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs of ``x [..., L, 2P]`` by angles given as ``cos, sin [L, P]``.

    Computed in the dtype of ``cos`` (float32), returned in the dtype of ``x``. ``L`` is the
    second-to-last dimension of ``x``; lay tensors out as ``[B, H, L, D]``.
    """
    pairs = x.to(cos.dtype).unflatten(-1, (-1, 2))
    real, imag = pairs[..., 0], pairs[..., 1]
    out = torch.stack((real * cos - imag * sin, real * sin + imag * cos), dim=-1)
    return out.flatten(-2).to(x.dtype)


def rotate_temporal(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate only the temporal band (the leading ``2 * cos.shape[-1]`` channels) of ``x``."""
    band = 2 * cos.shape[-1]
    return torch.cat([rotate(x[..., :band], cos, sin), x[..., band:]], dim=-1)
