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
from headforcing.testing import AttentionRecorder, check_against_reference

from .conftest import random_model
from .reference import relative_error

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
    checked = check_against_reference(recorder)
    assert checked == 9 * 5 * small_config.num_layers

    window = params.get("window_frames", 12 if name == "sink" else 21)
    kept = cache.kept_frames()[0]
    if name == "full":
        assert kept == list(range(frames))
    else:
        sink = params.get("sink_frames", 3 if name == "sink" else 0)
        recent = window - sink - 3
        assert kept == sorted(set(range(sink)) | set(range(frames - recent, frames)))
