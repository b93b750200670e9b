"""Testing a cache policy against dense attention: the project's own reference helpers.

A policy says which tokens every head group keeps and at which temporal positions it shows
them (:attr:`HeadGroup.token_ids <headforcing.cache.group.HeadGroup.token_ids>`,
:attr:`~headforcing.cache.group.HeadGroup.layout`). :func:`check_policy` rolls a small
random model out through the policy's cache and checks every pass of every layer and group
against a naive softmax attention, written here independently of the engine (RoPE by complex
multiplication, float64), over exactly the tokens the cache reports keeping, with the raw K/V
each token was committed with, rotated at the positions the cache reports::

    from headforcing.testing import check_policy
    checked = check_policy(MyPolicy(), frames=30)   # raises AssertionError on a mismatch

Our own tests use the same helpers for every built-in policy.
"""

from __future__ import annotations

import torch

from headforcing.cache.kv import KVCache
from headforcing.cache.policy import CachePolicy
from headforcing.model import WanConfig, WanModel
from headforcing.sampling import generate_chunks

# a model small enough to check every pass in seconds: 2 layers, 4 heads of 16 channels
SMALL = WanConfig(
    dim=64, ffn_dim=96, freq_dim=32, text_dim=24, text_len=10, num_heads=4, num_layers=2
)


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


def relative_error(actual, expected) -> float:
    difference = (actual.double() - expected.double()).abs().max()
    return (difference / expected.double().abs().max()).item()


def random_model(config: WanConfig = SMALL, seed: int = 0) -> WanModel:
    """A model whose every parameter (biases, norms, modulation) is random and non-trivial."""
    torch.manual_seed(seed)
    model = WanModel(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1 + 0.2 * torch.randn_like(param))
            else:
                param.copy_(torch.randn_like(param) / max(param.shape[-1], 1) ** 0.5)
    return model.eval()


class AttentionRecorder:
    """Logs every layer's raw q/k/v, output and the cache's report of what it attends to."""

    def __init__(self, cache: KVCache):
        self.cache, self.log = cache, []
        self._attend = cache.attend
        cache.attend = self.attend

    def attend(self, layer, q, k, v, commit):
        reports = [
            (list(g.heads), g.token_ids.clone(), g.layout.context.clone(), g.layout.chunk.clone())
            for g in self.cache.layers[layer]
        ]
        chunk = self.cache.chunk
        out = self._attend(layer, q, k, v, commit)
        self.log.append(
            dict(layer=layer, q=q, k=k, v=v, out=out, commit=commit, chunk=chunk, reports=reports)
        )
        return out


def check_against_reference(recorder: AttentionRecorder, tolerance: float = 1e-5) -> int:
    """Every logged pass vs naive attention over the tokens the cache reports keeping, with the
    raw K/V last committed for each token (a prompt switch re-commits tokens), rotated
    independently at the positions the cache reports. Returns the (pass, layer, group) checked;
    raises AssertionError at the first mismatch."""
    cache = recorder.cache
    head_dim, tokens_per_frame = cache.config.head_dim, cache.tokens_per_frame
    width = cache.token_grid[1]
    raw_k, raw_v = {}, {}  # layer -> [B, tokens, H, D], indexed by token id
    checked = 0
    for entry in recorder.log:
        layer, chunk = entry["layer"], entry["chunk"]
        for heads, token_ids, context_pos, chunk_pos in entry["reports"]:
            q = entry["q"][:, :, heads].transpose(1, 2)
            spatial = torch.arange(chunk.num_tokens) % tokens_per_frame
            frame_pos = chunk_pos.repeat_interleave(tokens_per_frame)
            angles = reference_rope_angles(head_dim, frame_pos, spatial // width, spatial % width)
            keys = [reference_rotate(entry["k"][:, :, heads].transpose(1, 2), angles)]
            values = [entry["v"][:, :, heads].transpose(1, 2).double()]
            if token_ids.numel():
                assert token_ids.max() < chunk.first_frame * tokens_per_frame, "not causal"
                assert (token_ids[1:] > token_ids[:-1]).all(), "a token kept twice"
                spatial = token_ids % tokens_per_frame
                ctx = reference_rope_angles(
                    head_dim, context_pos, spatial // width, spatial % width
                )
                past_k = raw_k[layer][:, token_ids][:, :, heads].transpose(1, 2)
                keys.insert(0, reference_rotate(past_k, ctx))
                values.insert(0, raw_v[layer][:, token_ids][:, :, heads].transpose(1, 2).double())
            expected = naive_attention(
                reference_rotate(q, angles), torch.cat(keys, 2), torch.cat(values, 2)
            )
            actual = entry["out"][:, :, heads].transpose(1, 2)
            error = relative_error(actual, expected)
            assert error <= tolerance, (
                f"layer {layer}, frames {chunk.first_frame}-{chunk.end_frame - 1}, heads {heads}: "
                f"relative error {error:.2e} against dense attention over the reported tokens"
            )
            checked += 1
        if entry["commit"]:
            ids = chunk.token_ids()
            for store, name in ((raw_k, "k"), (raw_v, "v")):
                tensor = entry[name]
                held = store.setdefault(
                    layer, tensor.new_zeros(tensor.shape[0], 0, *tensor.shape[2:])
                )
                if held.shape[1] < ids[-1] + 1:
                    grown = held.new_zeros(held.shape[0], int(ids[-1]) + 1, *held.shape[2:])
                    grown[:, : held.shape[1]] = held
                    store[layer] = held = grown
                held[:, ids] = tensor
    return checked


def check_policy(
    policy: CachePolicy,
    *,
    config: WanConfig = SMALL,
    grid: tuple[int, int] = (4, 4),
    frames: int = 30,
    seed: int = 0,
) -> int:
    """Roll a random ``config`` model out for ``frames`` latent frames through ``policy``'s
    cache (``grid`` tokens per frame) and check every pass of every layer and head group
    against dense attention over the tokens the cache reports (:func:`check_against_reference`).
    Returns the number of (pass, layer, group) checked."""
    model = random_model(config, seed)
    cache = KVCache(policy, config, *grid)
    recorder = AttentionRecorder(cache)
    context = model.encode_text(torch.randn(1, config.text_len, config.text_dim))
    latent = (config.in_channels, 2 * grid[0], 2 * grid[1])
    with torch.no_grad():
        for _ in generate_chunks(
            model, cache, context, frames, latent, torch.Generator().manual_seed(seed)
        ):
            pass
    return check_against_reference(recorder)
