"""The causal Wan2.1 video diffusion transformer.

Parameter names follow the original Wan code (``patch_embedding``, ``blocks.{i}.self_attn.q``,
``head.head``, ...) so Self-Forcing, LongLive and CausVid state dicts load with ``strict=True``.
Differences from the bidirectional Wan model: timesteps are per latent frame, and self-attention
goes through a backend (the KV cache or a dense masked attention) that owns RoPE and the keys.

Norms, modulation and the time embedding run in float32 whatever the weights' dtype
(:meth:`WanModel.set_dtype` keeps their parameters in float32); the residual stream is float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from headforcing.model.attention import SelfAttentionBackend
from headforcing.model.config import WanConfig
from headforcing.model.rope import Rope3D


def sinusoidal_embedding(dim: int, timesteps: torch.Tensor) -> torch.Tensor:
    """``[N]`` timesteps -> ``[N, dim]`` (cos half first, as Wan), computed in float64."""
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float64, device=timesteps.device) / half
    angles = timesteps.to(torch.float64)[:, None] * torch.pow(10000.0, -exponent)[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


def spatial_sincos(dim: int, height: int, width: int) -> torch.Tensor:
    """``[dim, height, width]`` fixed 2D position embedding (DiT): the first half of the channels
    embeds the token's row, the second half its column (:func:`sinusoidal_embedding` each).
    Computed on every pass: a few thousand sines, constant-folded under ``torch.compile``."""
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    table = torch.cat(
        [
            sinusoidal_embedding(dim // 2, rows.flatten()),
            sinusoidal_embedding(dim // 2, cols.flatten()),
        ],
        dim=1,
    )
    return table.T.unflatten(1, (height, width)).float()


class RMSNorm(nn.Module):
    """RMS norm over the last dim, computed in float32 (Wan's ``WanRMSNorm``)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight


def layer_norm32(x: torch.Tensor, eps: float, norm: nn.LayerNorm | None = None) -> torch.Tensor:
    """LayerNorm in float32; affine when ``norm`` is given."""
    weight = None if norm is None else norm.weight.float()
    bias = None if norm is None else norm.bias.float()
    return F.layer_norm(x.float(), (x.shape[-1],), weight, bias, eps)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Per-frame modulation. x: ``[B, F, T, C]`` float32; shift, scale: ``[B, F, C]``."""
    return x * (1 + scale[:, :, None]) + shift[:, :, None]


@dataclass
class TextContext:
    """Cross-attention keys and values of one prompt, computed once per prompt.

    keys, values: one ``[B, H, text_len, D]`` tensor per layer.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]


class Attention(nn.Module):
    """Wan's attention projections: q, k, v, o and RMS norms of q and k across all heads."""

    def __init__(self, config: WanConfig) -> None:
        super().__init__()
        dim = config.dim
        self.num_heads = config.num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, config.eps)
        self.norm_k = RMSNorm(dim, config.eps)


class SelfAttention(Attention):
    @torch.no_grad()
    def permute_heads(self, order: list[int]) -> None:
        """Put head ``order[i]`` at position ``i`` of q/k/v/o, in place: the q/k RMS norms run
        over all channels, so the permuted layer computes the same output."""
        channels = torch.arange(self.q.out_features, device=self.q.weight.device)
        index = channels.view(self.num_heads, -1)[torch.tensor(order, device=channels.device)]
        index = index.flatten()
        for linear in (self.q, self.k, self.v):
            linear.weight.copy_(linear.weight[index])
            linear.bias.copy_(linear.bias[index])
        for norm in (self.norm_q, self.norm_k):
            norm.weight.copy_(norm.weight[index])
        self.o.weight.copy_(self.o.weight[:, index])

    def forward(self, x: torch.Tensor, layer: int, attention: SelfAttentionBackend):
        # x: [B, L, C] -> q, k, v: [B, L, H, D]
        q = self.norm_q(self.q(x)).unflatten(-1, (self.num_heads, -1))
        k = self.norm_k(self.k(x)).unflatten(-1, (self.num_heads, -1))
        v = self.v(x).unflatten(-1, (self.num_heads, -1))
        out = attention.attend(layer, q, k, v)  # [B, L, H, D]
        return self.o(out.flatten(2))


class CrossAttention(Attention):
    def context_kv(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # text: [B, text_len, C] -> keys, values: [B, H, text_len, D]
        keys = self.norm_k(self.k(text)).unflatten(-1, (self.num_heads, -1)).transpose(1, 2)
        values = self.v(text).unflatten(-1, (self.num_heads, -1)).transpose(1, 2)
        return keys, values

    def forward(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor):
        # x: [B, L, C] -> q: [B, H, L, D]
        q = self.norm_q(self.q(x)).unflatten(-1, (self.num_heads, -1)).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, keys, values)
        return self.o(out.transpose(1, 2).flatten(2))


class WanBlock(nn.Module):
    def __init__(self, config: WanConfig) -> None:
        super().__init__()
        self.eps = config.eps
        self.self_attn = SelfAttention(config)
        self.norm3 = nn.LayerNorm(config.dim, eps=config.eps, elementwise_affine=True)
        self.cross_attn = CrossAttention(config)
        self.ffn = nn.Sequential(
            nn.Linear(config.dim, config.ffn_dim),
            nn.GELU(approximate="tanh"),
            nn.Linear(config.ffn_dim, config.dim),
        )
        self.modulation = nn.Parameter(torch.randn(1, 6, config.dim) / config.dim**0.5)

    def forward(self, x, time_mod, layer, attention, cross_keys, cross_values):
        """x: ``[B, F, T, C]`` float32 residual stream; time_mod: ``[B, F, 6, C]`` float32."""
        dtype = self.ffn[0].weight.dtype
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = (
            self.modulation.float()[:, None] + time_mod
        ).unbind(2)
        frames = x.shape[1]

        h = modulate(layer_norm32(x, self.eps), shift_sa, scale_sa).to(dtype)
        h = self.self_attn(h.flatten(1, 2), layer, attention).unflatten(1, (frames, -1))
        x = x + h.float() * gate_sa[:, :, None]

        h = layer_norm32(x, self.eps, self.norm3).to(dtype).flatten(1, 2)
        x = x + self.cross_attn(h, cross_keys, cross_values).unflatten(1, (frames, -1)).float()

        h = modulate(layer_norm32(x, self.eps), shift_ff, scale_ff).to(dtype)
        x = x + self.ffn(h).float() * gate_ff[:, :, None]
        return x


class Head(nn.Module):
    def __init__(self, config: WanConfig) -> None:
        super().__init__()
        self.eps = config.eps
        out_features = config.out_channels * math.prod(config.patch_size)
        self.head = nn.Linear(config.dim, out_features)
        self.modulation = nn.Parameter(torch.randn(1, 2, config.dim) / config.dim**0.5)

    def forward(self, x: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
        """x: ``[B, F, T, C]`` float32; time_emb: ``[B, F, C]`` float32."""
        shift, scale = (self.modulation.float()[:, None] + time_emb[:, :, None]).unbind(2)
        h = modulate(layer_norm32(x, self.eps), shift, scale)
        return self.head(h.to(self.head.weight.dtype))


class WanModel(nn.Module):
    """Causal Wan2.1 transformer: ``latents [B, C, F, H, W]`` + per-frame ``t`` -> flow."""

    # parameters that stay float32 under set_dtype (time embedding, modulation, norm3)
    _FLOAT32_NAMES = ("time_embedding", "time_projection", "modulation", "norm3")

    def __init__(self, config: WanConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.dim
        self.patch_embedding = nn.Conv3d(
            config.in_channels, dim, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.text_embedding = nn.Sequential(
            nn.Linear(config.text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim)
        )
        self.time_embedding = nn.Sequential(
            nn.Linear(config.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim)
        )
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList(WanBlock(config) for _ in range(config.num_layers))
        self.head = Head(config)
        self.rope = Rope3D(config.head_dim, config.rope_theta)
        # per layer, the original head at every head position of self-attention's q/k/v/o
        self.head_order = [list(range(config.num_heads)) for _ in range(config.num_layers)]

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.patch_embedding.weight.device

    def set_dtype(self, dtype: torch.dtype) -> WanModel:
        """Cast weights to ``dtype``, keeping time embedding, modulation and norm3 in float32."""
        for name, param in self.named_parameters():
            keep32 = any(part in self._FLOAT32_NAMES for part in name.split("."))
            param.data = param.data.to(torch.float32 if keep32 else dtype)
        return self

    def set_head_order(self, order: list[list[int]]) -> WanModel:
        """Permute every layer's self-attention heads (weights, in place) so that original head
        ``order[layer][i]`` sits at position ``i``: a cache policy's head groups become
        contiguous slices, with no gather per pass. The model's output does not change."""
        for layer, (block, wanted) in enumerate(zip(self.blocks, order, strict=True)):
            current = self.head_order[layer]
            if sorted(wanted) != list(range(self.config.num_heads)):
                raise ValueError(f"layer {layer}: {wanted} is not an order of the heads")
            if wanted != current:
                block.self_attn.permute_heads([current.index(head) for head in wanted])
                self.head_order[layer] = list(wanted)
        return self

    def encode_text(self, text: torch.Tensor) -> TextContext:
        """Text embeddings ``[B, text_len, text_dim]`` -> per-layer cross-attention K/V."""
        context = self.text_embedding(text.to(self.device, self.dtype))
        pairs = [block.cross_attn.context_kv(context) for block in self.blocks]
        return TextContext(keys=[k for k, _ in pairs], values=[v for _, v in pairs])

    def time_embeddings(self, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, F]`` timesteps -> embedding ``[B, F, C]`` and modulation ``[B, F, 6, C]``."""
        sinusoid = sinusoidal_embedding(self.config.freq_dim, timesteps.flatten()).float()
        time_emb = self.time_embedding(sinusoid.to(self.time_embedding[0].weight.dtype)).float()
        time_mod = self.time_projection(time_emb.to(self.time_projection[1].weight.dtype))
        time_emb = time_emb.unflatten(0, timesteps.shape)
        return time_emb, time_mod.float().unflatten(0, timesteps.shape).unflatten(-1, (6, -1))

    def forward(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        context: TextContext,
        attention: SelfAttentionBackend,
    ) -> torch.Tensor:
        """Predict the flow.

        latents: ``[B, C_in, F, H, W]``; timesteps: ``[B, F]`` (one per latent frame, 0-1000);
        returns the flow ``[B, C_out, F, H, W]`` in float32.
        """
        x, grid = self.patchify(latents)
        time_emb, time_mod = self.time_embeddings(timesteps.to(self.device))
        for layer, block in enumerate(self.blocks):
            x = block(x, time_mod, layer, attention, context.keys[layer], context.values[layer])
        return self.unpatchify(self.head(x, time_emb), grid)

    def patchify(self, latents: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """``latents [B, C_in, F, H, W]`` -> tokens ``[B, F, T, C]`` float32 (``T = h * w``
        per latent frame) and the token grid ``(F, h, w)``."""
        x = self.patch_embedding(latents.to(self.dtype))
        grid = tuple(x.shape[2:])
        if self.config.spatial_pos_embed:
            x = x + spatial_sincos(self.config.dim, *grid[1:]).to(x)[:, None]
        return x.flatten(3).permute(0, 2, 3, 1).float(), grid

    def unpatchify(self, out: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """The head's ``[B, F, T, C_out * pt * ph * pw]`` -> flow ``[B, C_out, F * pt, H, W]``
        float32."""
        pt, ph, pw = self.config.patch_size
        frames, height, width = grid
        out = out.float().view(out.shape[0], *grid, pt, ph, pw, -1)
        out = out.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return out.reshape(out.shape[0], -1, frames * pt, height * ph, width * pw)
