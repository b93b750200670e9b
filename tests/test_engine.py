"""The cache engine's guarantees: host reads per chunk, fixed buffers, bytes, contiguous head
groups, compilation, and the default head_forcing path (calibration before the run)."""

import dataclasses

import pytest
import torch
from torch._dynamo.utils import counters

from headforcing.cache import KVCache, make_policy
from headforcing.cache.policies import HeadForcingPolicy
from headforcing.hostsync import HostSyncCounter
from headforcing.model import DenseAttention, WanConfig, block_causal_mask
from headforcing.pipeline import Pipeline
from headforcing.sampling import generate_chunks

from .conftest import random_head_map, random_model
from .reference import relative_error
from .test_cache import GRID, LATENT


def policies(config):
    return {
        "window": make_policy("window", window_frames=9),
        "sink": make_policy("sink", window_frames=9, sink_frames=3),
        "head_forcing": HeadForcingPolicy(
            head_map=random_head_map(config, seed=2),
            local_frames=3,
            anchor_recent_frames=3,
            working_frames=3,
            max_episodes=3,
            episode_frames=0.5,
            episode_span_frames=2,
        ),
    }


def reads_per_chunk(config, policy, frames):
    """Host reads of every chunk of a rollout: its passes, its commit and its cache updates."""
    model = random_model(config)
    context = model.encode_text(torch.randn(1, config.text_len, config.text_dim))
    cache = KVCache(policy, config, *GRID)
    chunks = generate_chunks(model, cache, context, frames, LATENT, torch.Generator())
    counts = []
    with torch.no_grad():
        while True:
            with HostSyncCounter() as counter:
                try:
                    next(chunks)
                except StopIteration:
                    break
            counts.append(counter.count)
    return counts, cache


def test_the_counter_sees_host_reads():
    tensor = torch.randn(6)
    with HostSyncCounter() as counter:
        _ = tensor.sum() * 2, tensor[torch.tensor([1, 2])], torch.where(tensor > 0, tensor, 0)
    assert counter.count == 0
    with HostSyncCounter() as counter:
        tensor.sum().item()
        tensor.tolist()
        bool(tensor[0] > 0)
        tensor[tensor > 0]
        tensor.nonzero()
        int(tensor.argmax())
        tensor.unique()
    assert counter.count == 7, counter.calls


@pytest.mark.parametrize("name", ["window", "sink", "head_forcing"])
def test_at_most_one_host_read_per_chunk_whatever_the_depth(small_config, name):
    deep = dataclasses.replace(small_config, num_layers=4)
    counts = {}
    for config in (small_config, deep):
        policy = policies(config)[name]
        counts[config.num_layers], cache = reads_per_chunk(config, policy, 36)
    for layers in (2, 4):  # one read per chunk at most, however many layers
        assert max(counts[layers]) <= 1, counts
    if name == "head_forcing":  # episode counts, read until every memory is known full
        memory = [group for group in cache.groups() if group.memory is not None]
        assert memory and all(group.memory.known_full for group in memory)
        assert counts[2][-3:] == counts[4][-3:] == [0, 0, 0]
    else:
        assert sum(counts[2]) == sum(counts[4]) == 0


@pytest.mark.parametrize("name", ["window", "sink", "head_forcing"])
def test_buffers_are_allocated_once_and_hold_at_most_1_1x_the_kv(name):
    # Wan's head size (128 channels: a temporal band of 44), four heads
    config = WanConfig(
        dim=512, ffn_dim=64, freq_dim=32, text_dim=24, text_len=10, num_heads=4, num_layers=2
    )
    policy = {
        "window": make_policy("window"),
        "sink": make_policy("sink"),
        "head_forcing": HeadForcingPolicy(head_map=random_head_map(config, seed=1)),
    }[name]
    cache = KVCache(policy, config, *GRID)
    tensors = ("keys", "values", "slot_token", "band", "importance")

    def storage():
        return [
            getattr(group, field).untyped_storage().data_ptr()
            for group in cache.groups()
            for field in tensors
            if getattr(group, field) is not None
        ]

    before, chunk_tokens = storage(), 3 * GRID[0] * GRID[1]
    with torch.no_grad():
        for _ in range(50):
            cache.begin_chunk(3)
            for layer in range(config.num_layers):
                q, k, v = (torch.randn(1, chunk_tokens, 4, 128) for _ in range(3))
                cache.attend(layer, q, k, v, commit=True)
            cache.end_chunk()
    assert storage() == before, "a buffer was re-allocated"
    # the K/V one chunk needs: what every group keeps, and the chunk itself
    needed = sum(
        2 * (group.kept_tokens + chunk_tokens) * len(group.heads) * 128 * 4
        for group in cache.groups()
    )
    assert cache.bytes_held() <= 1.1 * needed
    if name == "head_forcing":
        assert any(group.band is not None and group.episodes for group in cache.groups())


def test_permuted_heads_equal_the_original_model(small_config):
    """A model whose heads are permuted for a policy computes the same passes; the cache then
    addresses every group as a slice instead of gathering it."""
    policy = policies(small_config)["head_forcing"]
    order = policy.head_order(small_config.num_layers, small_config.num_heads, 3)
    assert order != [list(range(4))] * 2, "the test needs a map that permutes"
    original, permuted = random_model(small_config), random_model(small_config)
    permuted.set_head_order(order)
    context = original.encode_text(torch.randn(1, small_config.text_len, small_config.text_dim))

    # one dense pass: the output does not depend on the order of the heads
    x, t = torch.randn(1, *LATENT[:1], 6, *LATENT[1:]), torch.rand(1, 6) * 1000
    dense = DenseAttention(original.rope, torch.arange(6), *GRID, block_causal_mask(6, 3))
    with torch.no_grad():
        assert (
            relative_error(permuted(x, t, context, dense), original(x, t, context, dense)) <= 1e-5
        )

    # a whole rollout through the cache: gathered groups vs contiguous slices
    latents = []
    for model in (original, permuted):
        cache = KVCache(policy, small_config, *GRID, head_order=model.head_order)
        slices = all(isinstance(group.head_index, slice) for group in cache.groups())
        assert slices == (model is permuted)
        with torch.no_grad():
            chunks = generate_chunks(model, cache, context, 21, LATENT, torch.Generator())
            latents.append(torch.cat([chunk.latents for chunk in chunks], dim=2))
    assert relative_error(latents[1], latents[0]) <= 1e-5
    permuted.set_head_order([list(range(4))] * 2)  # and back
    for ours, theirs in zip(permuted.parameters(), original.parameters(), strict=True):
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("chunks_before", [1, 8])  # while the buffers fill (mask), and full
def test_a_denoising_pass_compiles_without_graph_breaks(small_config, chunks_before):
    model = random_model(small_config)
    policy = policies(small_config)["head_forcing"]
    model.set_head_order(policy.head_order(small_config.num_layers, small_config.num_heads, 3))
    cache = KVCache(policy, small_config, *GRID, head_order=model.head_order)
    context = model.encode_text(torch.randn(1, small_config.text_len, small_config.text_dim))
    with torch.no_grad():
        for _ in generate_chunks(
            model, cache, context, 3 * chunks_before, LATENT, torch.Generator()
        ):
            pass
        cache.begin_chunk(3)
        masked = any(group.mask is not None for group in cache.groups())
        assert masked == (chunks_before == 1)
        x, t = torch.randn(1, *LATENT[:1], 3, *LATENT[1:]), torch.full((1, 3), 500.0)
        for commit in (False, True):
            torch._dynamo.reset()
            explanation = torch._dynamo.explain(model)(x, t, context, cache.attention(commit))
            assert explanation.graph_break_count == 0, explanation.break_reasons
            assert explanation.graph_count == 1


def test_compiled_rollout_equals_the_eager_one(small_config):
    """The cache's in-place writes survive compilation (aot_eager: the graph torch.compile
    builds, run without code generation, to keep the test fast)."""
    policy = policies(small_config)["head_forcing"]
    model = random_model(small_config)
    context = model.encode_text(torch.randn(1, small_config.text_len, small_config.text_dim))
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend="aot_eager")
    latents = []
    for runner in (model, compiled):
        cache = KVCache(policy, small_config, *GRID)
        with torch.no_grad():
            chunks = generate_chunks(runner, cache, context, 27, LATENT, torch.Generator())
            latents.append(torch.cat([chunk.latents for chunk in chunks], dim=2))
    assert relative_error(latents[1], latents[0]) <= 1e-5
    # denoising and commit passes, while the buffers fill (masked) and once full: 4 graphs,
    # whatever the number of groups and when each fills (no recompilation per chunk)
    assert counters["stats"]["unique_graphs"] == 4


def test_default_head_forcing_keeps_the_sink_and_repeats_with_the_stored_map():
    """Without a map, a run profiles one first; anchor and memory heads hold frames 0-2 from
    the first chunk to the last, and a second run with the stored map makes the same video."""
    pipeline = Pipeline.with_standins("tiny", height=64, width=64)
    prompt, policy = "a red ball", make_policy("head_forcing")
    maps = []
    first = [c.frames for c in pipeline.stream(prompt, 36, policy, seed=5, on_head_map=maps.append)]
    assert len(maps) == 1 and maps[0].calibration["before_run"]
    again = [c.frames for c in pipeline.stream(prompt, 36, policy.with_head_map(maps[0]), seed=5)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))

    cache = pipeline.new_cache(policy.with_head_map(maps[0]))
    labels = set()
    for chunk in pipeline.generate_latents(prompt, 36, cache, seed=5):
        for group in cache.groups():
            labels.add(group.label)
            if group.label in ("anchor", "memory") and chunk.first_frame >= 3:
                assert group.frame_ids.unique()[:3].tolist() == [0, 1, 2], chunk.first_frame
    assert {"anchor", "memory"} <= labels
