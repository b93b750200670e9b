"""The cache engine's guarantees: host reads and ATen ops per chunk at the dispatch level (at
Wan's real depth), fixed buffers, bytes, contiguous head groups, compilation, and the default
head_forcing path (calibration before the run)."""

import dataclasses

import pytest
import torch
from torch._dynamo.utils import counters

from headforcing.bench import fast_forward
from headforcing.cache import KVCache, make_policy
from headforcing.cache.policies import HeadForcingPolicy
from headforcing.heads import HeadMap
from headforcing.hostsync import DispatchCounter
from headforcing.model import DenseAttention, WanConfig, block_causal_mask
from headforcing.model.config import get_preset
from headforcing.pipeline import Pipeline
from headforcing.sampling import generate_chunks

from .conftest import random_head_map, random_model
from .reference import relative_error
from .test_cache import GRID, LATENT

# the bounded policies of the field, with their defaults
BOUNDED = [
    "window", "sink", "head_forcing", "deep_forcing", "dummy_forcing", "pyramid_forcing",
    "infinity_rope",
]  # fmt: skip
SKELETON = get_preset("wan-skeleton").model  # Wan2.1-1.3B's 30 layers x 12 heads
SKELETON_GRID = (2, 2)


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


def shipped_rule_map(config, seed=0):
    """A map with the shipped rule's shares (25 % anchor, 15 % local, 60 % memory; at 30 x 12:
    90 / 54 / 216), spread unevenly over the layers, with statistics for dummy_forcing."""
    generator = torch.Generator().manual_seed(seed)
    heads = config.num_layers * config.num_heads
    flat = ["anchor"] * round(0.25 * heads) + ["local"] * round(0.15 * heads)
    flat += ["memory"] * (heads - len(flat))
    flat = [flat[i] for i in torch.randperm(heads, generator=generator).tolist()]
    width = config.num_heads
    labels = tuple(tuple(flat[i : i + width]) for i in range(0, heads, width))
    stats = {
        region: torch.rand(config.num_layers, width, generator=generator).tolist()
        for region in ("sink", "middle", "recent", "current")
    }
    return HeadMap("test", labels, stats=stats)


def bounded_policy(name, config):
    policy = make_policy(name)
    if getattr(policy, "head_map", "-") is None:
        policy = policy.with_head_map(shipped_rule_map(config))
    return policy


def memories_full(cache):
    return all(store.memory.known_full for store in cache.stores if store.memory is not None)


class ChunkCounts:
    """Whole chunks (four denoising passes, the commit pass, ``end_chunk``) of a model whose
    heads are permuted for the policy, counted at the dispatch level."""

    def __init__(self, config, policy, grid=SKELETON_GRID):
        self.config = config
        self.model = random_model(config)
        self.model.set_head_order(policy.head_order(config.num_layers, config.num_heads, 3))
        self.cache = KVCache(policy, config, *grid, head_order=self.model.head_order)
        self.context = self.model.encode_text(torch.zeros(1, config.text_len, config.text_dim))
        self.x = torch.randn(1, config.in_channels, 3, 2 * grid[0], 2 * grid[1])
        self.t = torch.full((1, 3), 500.0)

    def chunk(self, model=None):
        """One chunk; returns the counter of its commit pass and end_chunk."""
        model = self.model if model is None else model
        self.cache.begin_chunk(3)
        for _ in range(4):
            model(self.x, self.t, self.context, self.cache.attention())
        with DispatchCounter() as end:
            self.commit(model)
        return end

    def commit(self, model):
        model(self.x, self.t * 0, self.context, self.cache.attention(commit=True))
        self.cache.end_chunk()

    def compiled_chunk(self, model):
        self.cache.begin_chunk(3)
        for _ in range(4):
            model(self.x, self.t, self.context, self.cache.attention())
        self.commit(model)

    def counted(self):
        """(ops, host reads, ops of commit + end_chunk) of one chunk."""
        with DispatchCounter() as whole:
            end = self.chunk()
        return whole.ops, whole.count, end.ops


def test_the_counter_sees_host_reads():
    """Planted: indexing with a 0-dim tensor is a read (it calls aten::_local_scalar_dense);
    index_select with the same tensor is not; neither is the grad mode a difference."""
    tensor, index = torch.randn(6), torch.tensor(2)
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            with DispatchCounter() as counter:
                _ = tensor.index_select(0, index.view(1)), tensor.sum() * 2
                _ = tensor[torch.tensor([1, 2])], torch.where(tensor > 0, tensor, -tensor)
                _ = tensor.float(), tensor.view(2, 3)  # a no-op conversion, a view
            assert counter.count == 0, counter.calls
            # index_select, sum, mul, index, gt, neg, where
            assert counter.ops == 7, counter.op_calls
            with DispatchCounter() as counter:
                tensor[index]
            assert counter.calls == {"aten::_local_scalar_dense": 1}
            with DispatchCounter() as counter:
                tensor.sum().item()
                tensor.tolist()
                bool(tensor[0] > 0)
                tensor[tensor > 0]
                tensor.nonzero()
                int(tensor.argmax())
                tensor.unique()
                torch.equal(tensor, tensor)
            assert counter.count == 8, counter.calls


@pytest.mark.parametrize("name", BOUNDED)
def test_no_host_read_per_chunk_once_memories_are_full_whatever_the_depth(name):
    """At 2 and at 30 layers (Wan's depth): 0 host reads per chunk once every memory is known
    full, at most 1 before (the engine's once-per-chunk check), counted at the dispatch level."""
    for layers in (2, 30):
        config = dataclasses.replace(SKELETON, num_layers=layers)
        chunks = ChunkCounts(config, bounded_policy(name, config))
        reads = []
        with torch.no_grad():
            for chunk in range(7):  # while the memories fill, then once they are full
                if chunk == 4:
                    fast_forward(chunks.cache, 60, config.num_heads, config.head_dim)
                full = memories_full(chunks.cache)
                reads.append((full, chunks.counted()[1]))
        assert all(count <= 1 for _, count in reads), (layers, reads)
        assert all(count == 0 for full, count in reads if full), (layers, reads)
        assert reads[-1][0], "the memories never filled: the test checks nothing"


def test_bounded_policies_cost_at_most_1_25x_the_window_in_ops_at_wan_depth():
    """Backend ATen ops of one chunk at 30 layers x 12 heads, every memory full: each bounded
    policy within 1.25x of the window's, its commit pass + end_chunk within 2x."""
    measured = {}
    for name in BOUNDED:
        chunks = ChunkCounts(SKELETON, bounded_policy(name, SKELETON))
        with torch.no_grad():
            fast_forward(chunks.cache, 120, SKELETON.num_heads, SKELETON.head_dim)  # 30 s
            chunks.chunk()
            assert memories_full(chunks.cache), name
            ops, reads, end_ops = chunks.counted()
        measured[name] = (ops, end_ops, reads)
    window_ops, window_end, _ = measured["window"]
    ratios = {
        name: (round(ops / window_ops, 3), round(end / window_end, 3))
        for name, (ops, end, _) in measured.items()
    }
    message = f"(ops, commit+end) per chunk / window's: {ratios}; counts: {measured}"
    print(message)
    assert all(chunk <= 1.25 and end <= 2 for chunk, end in ratios.values()), message
    assert all(reads == 0 for _, _, reads in measured.values()), message
    assert window_ops > 5 * 30 * 12, message  # the passes really ran, layer by layer


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


def compiled_chunks(name, compile_passes):
    """At 30 layers, memories full: one compiled chunk, then 20 more; returns the number of
    graphs before and after the 20 (equal: no recompilation) and the graph breaks."""
    chunks = ChunkCounts(SKELETON, bounded_policy(name, SKELETON))
    torch._dynamo.reset()
    counters.clear()
    options = {"backend": "aot_eager", "fullgraph": True}  # fullgraph: a break raises
    model = torch.compile(chunks.model, **options) if compile_passes else chunks.model
    chunks.cache.compile_end_chunk(**options)
    with torch.no_grad():
        fast_forward(chunks.cache, 60, SKELETON.num_heads, SKELETON.head_dim)
        assert memories_full(chunks.cache), name
        chunks.compiled_chunk(model)
        graphs = counters["stats"]["unique_graphs"]
        for _ in range(20):
            chunks.compiled_chunk(model)
    return graphs, counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())


def test_head_forcing_chunk_compiles_whole_at_wan_depth():
    """The denoising pass, the commit pass and end_chunk of head_forcing at 30 layers, each
    one graph (fullgraph), and no recompilation over 20 chunks past the first."""
    first, after, breaks = compiled_chunks("head_forcing", compile_passes=True)
    assert breaks == 0
    assert first >= 3, "the passes and end_chunk were not compiled"
    assert after == first, f"{after - first} recompilations in 20 chunks"


@pytest.mark.parametrize("name", [name for name in BOUNDED if name != "head_forcing"])
def test_end_chunk_compiles_whole_at_wan_depth(name):
    """Every bounded policy's end_chunk (its device part) at 30 layers: one graph, no
    recompilation over 20 chunks (the passes are the same code for every policy)."""
    first, after, breaks = compiled_chunks(name, compile_passes=False)
    assert breaks == 0 and first >= 1
    assert after == first, f"{after - first} recompilations in 20 chunks"


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
