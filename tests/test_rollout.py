"""Long rollouts: bounded caches, positions inside the trained range, determinism."""

import pytest
import torch

from headforcing.cache import KVCache, make_policy
from headforcing.sampling import FlowSchedule, generate_chunks

from .conftest import random_model

LATENT = (16, 8, 8)


def rollout(config, policy, frames, seed=0, model_seed=0):
    model = random_model(config, seed=model_seed)
    context = model.encode_text(torch.randn(1, config.text_len, config.text_dim))
    cache = KVCache(policy, config, 4, 4)
    sizes, latents = [], []
    with torch.no_grad():
        for chunk in generate_chunks(
            model, cache, context, frames, LATENT, torch.Generator().manual_seed(seed)
        ):
            sizes.append(cache.bytes_held())
            latents.append(chunk.latents)
    return cache, sizes, torch.cat(latents, dim=2)


@pytest.mark.parametrize(("name", "params"), [("window", {"window_frames": 21}), ("sink", {})])
@pytest.mark.parametrize("positions", ["absolute", "relative"])
def test_300_frames_constant_cache(small_config, name, params, positions):
    policy = make_policy(name, positions=positions, **params)
    cache, sizes, latents = rollout(small_config, policy, 300)
    window = policy.window_frames
    full_after = -(-(window - 3) // 3)  # chunks until the window is full
    assert len(set(sizes[full_after:])) == 1, "cache size changed after the window filled"
    assert sizes[-1] == max(sizes)
    assert all(len(frames) == window - 3 for frames in cache.kept_frames(1))
    assert torch.isfinite(latents).all()
    if positions == "relative":
        assert cache.max_position < 21
    else:
        assert cache.max_position == 299


def test_same_seed_same_video_other_seed_differs(small_config):
    policy = make_policy("window", window_frames=9)
    _, _, first = rollout(small_config, policy, 15, seed=3)
    _, _, again = rollout(small_config, policy, 15, seed=3)
    _, _, other = rollout(small_config, policy, 15, seed=4)
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 0.1


def test_schedule_is_self_forcing_warped():
    sigmas = FlowSchedule().sigmas()
    assert [round(1000 * s, 1) for s in sigmas] == [1000.0, 937.5, 833.3, 625.0]


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("nope", {}, "unknown policy 'nope'"),
        ("window", {"window_frames": 2}, "smaller than one chunk"),
        ("window", {"window_frames": 6, "sink_frames": 7}, "larger than the window"),
        ("window", {"window_frames": 6, "sink_frames": 4}, "exceed window_frames"),
        ("window", {"positions": "fancy"}, "positions must be one of"),
        ("sink", {"sink_frames": 0}, "sink_frames >= 1"),
    ],
)
def test_bad_policy_parameters(small_config, name, params, message):
    with pytest.raises(ValueError, match=message):
        KVCache(make_policy(name, **params), small_config, 4, 4)
