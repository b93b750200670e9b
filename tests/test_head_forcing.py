"""The head_forcing policy against independent references, and its long-run guarantees."""

import pytest
import torch

from headforcing.bench import fast_forward
from headforcing.cache import KVCache, make_policy
from headforcing.cache.policies import HeadForcingPolicy
from headforcing.heads import HeadMap
from headforcing.model.rope import Rope3D, cos_sin, rotate, rotate_temporal
from headforcing.sampling import generate_chunks
from headforcing.testing import AttentionRecorder, check_against_reference

from .conftest import random_head_map, random_model
from .test_cache import GRID, LATENT

UNLIMITED = dict(
    local_frames=10**6, anchor_recent_frames=10**6, working_frames=10**6, positions="absolute"
)


def rollout_latents(model, cache, frames, seed=3):
    context = model.encode_text(torch.randn(1, model.config.text_len, model.config.text_dim))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        chunks = generate_chunks(model, cache, context, frames, LATENT, generator)
        return torch.cat([chunk.latents for chunk in chunks], dim=2)


def rollout_checked_against_dense_attention(model, policy, config, frames):
    """Roll out ``frames`` frames; every pass, layer and head group must match dense attention
    over exactly the tokens the cache reports. Returns the cache."""
    cache = KVCache(policy, config, *GRID)
    recorder = AttentionRecorder(cache)
    rollout_latents(model, cache, frames)
    checked = check_against_reference(recorder)
    chunks = -(-frames // 3)
    assert checked == chunks * 5 * sum(len(groups) for groups in cache.layers)
    return cache


@pytest.mark.parametrize("map_seed", [0, 1])
def test_unlimited_budgets_with_absolute_positions_equal_full(small_config, map_seed):
    model = random_model(small_config)
    head_map = random_head_map(small_config, seed=map_seed)
    policy = HeadForcingPolicy(head_map=head_map, **UNLIMITED)
    torch.manual_seed(0)
    ours = rollout_latents(model, KVCache(policy, small_config, *GRID), 27)
    torch.manual_seed(0)
    full = rollout_latents(model, KVCache(make_policy("full"), small_config, *GRID), 27)
    error = ((ours - full).abs().max() / full.abs().max()).item()
    assert error <= 1e-5


@pytest.mark.parametrize("positions", ["relative", "absolute"])
def test_every_group_matches_dense_attention_over_reported_tokens(small_config, positions):
    model = random_model(small_config)
    policy = HeadForcingPolicy(
        head_map=random_head_map(small_config, seed=2),
        local_frames=3,
        sink_frames=2,
        anchor_recent_frames=3,
        working_frames=3,
        max_episodes=2,
        episode_frames=0.5,
        episode_span_frames=2,
        positions=positions,
    )
    cache = rollout_checked_against_dense_attention(model, policy, small_config, 30)
    memory = [g for g in cache.groups() if g.label == "memory"]
    assert memory and all(len(g.episodes) == 2 for g in memory)  # selection really ran
    if positions == "relative":
        assert cache.max_position < 21


def test_memory_heads_without_episodes_keep_the_sink_and_the_working_memory(small_config):
    model = random_model(small_config)
    policy = HeadForcingPolicy(
        head_map=random_head_map(small_config, seed=2), max_episodes=0, working_frames=12
    )
    cache = rollout_checked_against_dense_attention(model, policy, small_config, 30)
    memory = [g for g in cache.groups() if g.label == "memory"]
    assert memory
    for group in memory:
        assert group.episodes == []
        assert group.frame_ids.unique().tolist() == [0, 1, 2, *range(30 - 12, 30)]


def test_rotation_identity():
    """Keys rotated at p == keys rotated at q, re-phased in the temporal band by p - q."""
    rope = Rope3D(128)
    keys = torch.randn(2, 3, 50, 128)
    for high in (21, 5000):
        p, q = torch.randint(0, high, (50,)), torch.randint(0, high, (50,))
        at_p = rotate_temporal(keys, *cos_sin(rope.temporal_angles(p)))
        at_q = rotate_temporal(keys, *cos_sin(rope.temporal_angles(q)))
        rephased = rotate_temporal(at_q, *cos_sin(rope.temporal_angles(p - q)))
        assert (rephased - at_p).abs().max() <= 1e-6
        assert torch.equal(at_p[..., rope.temporal_dim :], keys[..., rope.temporal_dim :])
    # a temporal-only rotation is the full rotation at spatial position (0, 0)
    origin = rope.spatial_angles(1, 1).expand(50, -1)
    full = rotate(keys, *cos_sin(rope.token_angles(p[:1], origin).expand(50, -1)))
    assert (
        full - rotate_temporal(keys, *cos_sin(rope.temporal_angles(p[:1].expand(50))))
    ).abs().max() <= 1e-6


def test_2000_frames_bounded_in_range_and_within_budget(small_config):
    model = random_model(small_config)
    policy = HeadForcingPolicy(head_map=random_head_map(small_config), episode_frames=0.5)
    cache = KVCache(policy, small_config, *GRID)
    context = model.encode_text(torch.randn(1, small_config.text_len, small_config.text_dim))
    sizes = []
    with torch.no_grad():
        for _ in generate_chunks(
            model, cache, context, 2001, LATENT, torch.Generator().manual_seed(0)
        ):
            sizes.append(cache.bytes_held())
    assert len(set(sizes[200:])) == 1, "K/V bytes changed in a long run"
    assert cache.max_position < 21
    tokens_per_frame = GRID[0] * GRID[1]
    budget = round(0.5 * tokens_per_frame)
    for group in cache.groups():
        frames = group.frame_ids.unique()
        if group.label == "memory":
            assert len(group.episodes) <= policy.max_episodes
            assert all(e.token_ids.numel() <= budget for e in group.episodes)
            limit = (policy.sink_frames + policy.working_frames) * tokens_per_frame
            assert group.kept_tokens <= limit + policy.max_episodes * budget
        elif group.label == "local":
            assert frames.tolist() == list(range(2001 - 6, 2001))
        else:
            assert frames.tolist() == [0, 1, 2, *range(2001 - 6, 2001)]


def test_planted_content_change_opens_a_new_episode(small_config):
    policy = HeadForcingPolicy(
        head_map=HeadMap("test", tuple(("memory",) * 4 for _ in range(2))),
        novelty_threshold=0.3,
        episode_span_frames=10**6,
    )
    cache = KVCache(policy, small_config, *GRID)
    generator = torch.Generator().manual_seed(0)
    scene_a = torch.randn(small_config.head_dim, generator=generator)
    scene_b = torch.randn(small_config.head_dim, generator=generator)
    tokens = 3 * GRID[0] * GRID[1]
    while cache.frames_done < 2001:
        chunk = cache.begin_chunk(3)
        scene = scene_a if chunk.first_frame < 999 else scene_b
        for layer in range(small_config.num_layers):
            q = torch.randn(1, tokens, 4, small_config.head_dim, generator=generator)
            k = scene + 0.1 * torch.randn(1, tokens, 4, small_config.head_dim, generator=generator)
            cache.attend(layer, q, k, torch.randn_like(q), commit=True)
        cache.end_chunk()
    for group in cache.groups():
        first_evicted = policy.sink_frames
        assert group.opened_at == [first_evicted, 999]


def test_streams_past_the_rope_table(small_config):
    """Absolute positions past 1024 (Wan's RoPE table) still work; relative ones never get there."""
    model = random_model(small_config)
    for positions, top in (("absolute", 1100), ("relative", 20)):
        cache = KVCache(make_policy("window", positions=positions), small_config, *GRID)
        fast_forward(cache, 1098, small_config.num_heads, small_config.head_dim)
        latents = rollout_latents(model, cache, 1101)
        assert torch.isfinite(latents).all() and cache.max_position == top


@pytest.mark.parametrize(
    ("labels", "preset", "message"),
    [
        ([["local"] * 4], "test", "1 layers x 4 heads, the model 2 x 4"),
        ([["local"] * 3] * 2, "test", "2 layers x 3 heads"),
        ([["local", "anchor", "memory", "sink"]] * 2, "test", "unknown head label"),
        ([["local"] * 4] * 2, "wan2.1-t2v-1.3b", "made for preset 'wan2.1-t2v-1.3b'"),
    ],
)
def test_bad_head_map_gets_a_clear_error(tmp_path, small_config, labels, preset, message):
    path = tmp_path / "map.json"
    data = {
        "format": "headforcing.head_map/1",
        "preset": preset,
        "labels": labels,
        "num_layers": len(labels),
        "num_heads": len(labels[0]),
    }
    path.write_text(__import__("json").dumps(data))
    with pytest.raises(ValueError, match=message):
        HeadMap.load(path).check("test", small_config.num_layers, small_config.num_heads)


def test_not_a_head_map(tmp_path):
    path = tmp_path / "map.json"
    path.write_text("{broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        HeadMap.load(path)
    path.write_text('{"labels": []}')
    with pytest.raises(ValueError, match="is not a head map"):
        HeadMap.load(path)


def test_budgets_beyond_the_trained_range_are_refused(small_config):
    with pytest.raises(ValueError, match="memory heads would span 24 temporal positions"):
        KVCache(HeadForcingPolicy(working_frames=12), small_config, *GRID)
    with pytest.raises(ValueError, match="local_frames must be >= 0"):
        HeadForcingPolicy(local_frames=-1)
