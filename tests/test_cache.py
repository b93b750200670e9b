"""The KV cache against independent references.

- ``full`` + absolute positions: an AR rollout equals one dense forward with a block-causal mask.
- every policy, every pass, every layer: the cache's attention equals naive attention over exactly
  the tokens the cache reports keeping, rotated (independently) at the positions it reports.
"""

import pytest
import torch

from headforcing.cache import KVCache, make_policy
from headforcing.model import DenseAttention, block_causal_mask
from headforcing.sampling import generate_chunks

from .conftest import random_model
from .reference import naive_attention, reference_rope_angles, reference_rotate, relative_error

GRID = (4, 4)  # tokens per frame: 4 x 4
LATENT = (16, 8, 8)


def record_model_passes(model):
    """Wrap model.forward to log (latents, timesteps, output, commit) of every pass."""
    log, forward = [], model.forward

    def recording(latents, timesteps, context, attention):
        out = forward(latents, timesteps, context, attention)
        log.append((latents.clone(), timesteps.clone(), out.clone(), attention.commit))
        return out

    model.forward = recording
    return log


def test_full_absolute_equals_dense_block_causal(small_config):
    model = random_model(small_config)
    context = model.encode_text(torch.randn(1, small_config.text_len, small_config.text_dim))
    cache = KVCache(make_policy("full"), small_config, *GRID)
    log = record_model_passes(model)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        clean = [c.latents for c in generate_chunks(model, cache, context, 12, LATENT, generator)]
    model.forward = type(model).forward.__get__(model)

    frames = 12
    dense = DenseAttention(model.rope, torch.arange(frames), *GRID, block_causal_mask(frames, 3))
    passes_per_chunk = 5
    for index, (latents, timesteps, out, commit) in enumerate(log):
        chunk = index // passes_per_chunk
        # earlier chunks enter as their clean latents at t = 0, exactly what the cache stored
        history = torch.cat([*clean[:chunk], latents], dim=2)
        t = torch.cat([torch.zeros(1, 3 * chunk), timesteps], dim=1)
        first = 3 * chunk
        mask = block_causal_mask(first + 3, 3)
        dense = DenseAttention(model.rope, torch.arange(first + 3), *GRID, mask)
        with torch.no_grad():
            expected = model(history, t, context, dense)[:, :, first:]
        assert relative_error(out, expected) <= 1e-5, f"pass {index} (commit={commit})"
    assert len(log) == 4 * passes_per_chunk


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


def check_against_reference(recorder: AttentionRecorder, head_dim: int, tokens_per_frame: int):
    """Every logged pass vs naive attention over the tokens the cache reports keeping, with the
    raw K/V last committed for each token (a prompt switch re-commits tokens), rotated
    independently at the positions the cache reports."""
    raw_k, raw_v = {}, {}  # layer -> [B, tokens, H, D], indexed by token id
    width, checked = GRID[1], 0
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
                assert token_ids.max() < chunk.first_frame * tokens_per_frame  # causal
                assert (token_ids[1:] > token_ids[:-1]).all()  # no token twice
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
            assert relative_error(actual, expected) <= 1e-5, (layer, chunk, heads)
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


POLICY_CASES = [
    ("full", {}),
    ("window", {"window_frames": 6}),
    ("window", {"window_frames": 9, "sink_frames": 3}),
    ("window", {"window_frames": 21}),
    ("sink", {"window_frames": 7, "sink_frames": 2}),
    ("sink", {}),
]


@pytest.mark.parametrize("positions", ["absolute", "relative"])
@pytest.mark.parametrize(("name", "params"), POLICY_CASES)
def test_every_pass_matches_dense_attention_over_reported_tokens(
    small_config, name, params, positions
):
    model = random_model(small_config)
    context = model.encode_text(torch.randn(1, small_config.text_len, small_config.text_dim))
    policy = make_policy(name, positions=positions, **params)
    cache = KVCache(policy, small_config, *GRID)
    recorder = AttentionRecorder(cache)
    generator = torch.Generator().manual_seed(2)
    frames = 26  # 8 full chunks and a last chunk of 2 frames
    with torch.no_grad():
        for _ in generate_chunks(model, cache, context, frames, LATENT, generator):
            pass
    checked = check_against_reference(recorder, small_config.head_dim, GRID[0] * GRID[1])
    assert checked == 9 * 5 * small_config.num_layers

    window = params.get("window_frames", 12 if name == "sink" else 21)
    kept = cache.kept_frames()[0]
    if name == "full":
        assert kept == list(range(frames))
    else:
        sink = params.get("sink_frames", 3 if name == "sink" else 0)
        recent = window - sink - 3
        assert kept == sorted(set(range(sink)) | set(range(frames - recent, frames)))
