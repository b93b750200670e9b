"""The field's training-free methods as policies, against the rules of their papers computed
here: which frames each group keeps and where, every pass against dense attention over exactly
those tokens, the memories' selections and merges, and bounded K/V over 600 frames."""

import pytest
import torch

from headforcing.bench import fast_forward
from headforcing.cache import KVCache, make_policy
from headforcing.cache.policies.dummy_forcing import program_heads
from headforcing.heads import HeadMap
from headforcing.model import WanConfig
from headforcing.sampling import generate_chunks
from headforcing.switch import PromptSwitcher
from headforcing.testing import AttentionRecorder, check_against_reference

from .conftest import random_head_map, random_model
from .test_cache import GRID, LATENT

TOKENS = GRID[0] * GRID[1]
FRAMES = 63  # 21 chunks: three times the trained range


def rollout(config, policy, frames=FRAMES, seed=4):
    """Roll out; every pass must match dense attention over the tokens the cache reports.
    Returns the recorder (its log of reports per pass) and the cache."""
    model = random_model(config)
    cache = KVCache(policy, config, *GRID)
    recorder = AttentionRecorder(cache)
    context = model.encode_text(torch.randn(1, config.text_len, config.text_dim))
    with torch.no_grad():
        for _ in generate_chunks(
            model, cache, context, frames, LATENT, torch.Generator().manual_seed(seed)
        ):
            pass
    checked = check_against_reference(recorder)
    assert checked == -(-frames // 3) * 5 * sum(len(groups) for groups in cache.layers)
    return recorder, cache


def window_rule(first, sink, recent):
    """Frames a sink + recent-window rule keeps before a chunk starting at ``first``, and the
    relative positions it puts them at (sink first, recent run after, chunk after that)."""
    kept = sorted(set(range(min(sink, first))) | set(range(max(0, first - recent), first)))
    return kept, list(range(len(kept))), list(range(len(kept), len(kept) + 3))


def check_reports(recorder, expected):
    """Every pass: every group's kept frames and positions are what ``expected(label, first)``
    computes from the paper's rule."""
    for entry in recorder.log:
        first = entry["chunk"].first_frame
        for (_, token_ids, context, chunk), label in zip(
            entry["reports"], entry["labels"], strict=True
        ):
            frames = (token_ids // TOKENS).unique().tolist()
            kept, positions, chunk_positions = expected(label, first)
            assert frames == kept, (label, first)
            per_frame = [int(context[token_ids // TOKENS == f][0]) for f in frames]
            assert per_frame == positions and chunk.tolist() == chunk_positions, (label, first)


@pytest.fixture
def labelled(monkeypatch):
    """The recorder also logs every group's label."""
    attend = AttentionRecorder.attend

    def logging(self, layer, q, k, v, commit):
        out = attend(self, layer, q, k, v, commit)
        self.log[-1]["labels"] = [group.label for group in self.cache.layers[layer]]
        return out

    monkeypatch.setattr(AttentionRecorder, "attend", logging)


def test_infinity_rope_keeps_one_sink_frame_and_five_recent(small_config, labelled):
    recorder, cache = rollout(small_config, make_policy("infinity_rope"))
    check_reports(recorder, lambda label, first: window_rule(first, 1, 5))
    assert cache.max_position == 8  # sink 0, recent 1-5, chunk 6-8


def test_infinity_rope_flushes_at_a_prompt_switch(small_config):
    model = random_model(small_config)
    cache = KVCache(make_policy("infinity_rope"), small_config, *GRID)
    switcher = PromptSwitcher(model, cache, cache.policy.default_switch)
    texts = [torch.randn(1, small_config.text_len, small_config.text_dim) for _ in range(2)]
    with torch.no_grad():
        contexts = [model.encode_text(text) for text in texts]
        for _ in generate_chunks(model, cache, contexts[0], 18, LATENT, torch.Generator()):
            pass
        plan = switcher.apply(contexts[1])
    assert plan.mode == "flush" and plan.rebuilt_frames == 0
    assert cache.kept_frames(0) == [[0, 16, 17]]  # the sink and the last 2 frames


def test_dummy_forcing_programs_heads_from_the_masses(small_config, labelled):
    generator = torch.Generator().manual_seed(3)
    stats = {
        region: torch.rand(2, 4, generator=generator).tolist()
        for region in ("sink", "middle", "recent", "current")
    }
    head_map = HeadMap("test", (("memory",) * 4,) * 2, stats=stats)
    policy = make_policy("dummy_forcing").with_head_map(head_map)
    # the rule, by hand: cost = max of the masses normalised by their maxima over all heads
    sink, middle = torch.tensor(stats["sink"]), torch.tensor(stats["middle"])
    cost = torch.maximum(sink / sink.max(), middle / middle.max()).flatten()
    dummies = set(cost.argsort()[:4].tolist())
    expected = [
        "dummy"
        if layer * 4 + head in dummies
        else "sink"
        if sink[layer, head] >= middle[layer, head]
        else "neighbour"
        for layer in range(2)
        for head in range(4)
    ]
    assert [label for row in program_heads(head_map, 0.5) for label in row] == expected

    windows = {"dummy": (0, 1), "sink": (3, 6), "neighbour": (0, 9)}
    recorder, _ = rollout(small_config, policy)
    check_reports(recorder, lambda label, first: window_rule(first, *windows[label]))


def test_dummy_forcing_needs_statistics(small_config):
    policy = make_policy("dummy_forcing").with_head_map(random_head_map(small_config))
    with pytest.raises(ValueError, match="needs a head map with attention statistics"):
        KVCache(policy, small_config, *GRID)


def test_deep_forcing_keeps_a_deep_sink_the_top_tokens_and_recent_frames(small_config, labelled):
    policy = make_policy("deep_forcing")  # sink 10, recent 4, budget 16: 2 frames of tokens
    recorder, cache = rollout(small_config, policy)
    for entry in recorder.log:
        first = entry["chunk"].first_frame
        for _, token_ids, context, _ in entry["reports"]:
            frames = token_ids // TOKENS
            sink = frames < 10
            recent = ~sink & (frames >= first - 4)
            pool = ~sink & ~recent
            assert sorted(frames[sink].unique().tolist()) == list(range(min(10, first)))
            assert frames[recent].unique().tolist() == list(range(max(10, first - 4), first))
            if first >= 10 + 4 + 3:  # frames have left the recent window: the pool is full
                assert pool.sum() == 2 * TOKENS
            # positions: sink 0-9, the pool's tokens in frame order on 2 slots, recent, chunk
            assert context[sink].tolist() == frames[sink].tolist()
            pool_positions = context[pool]
            assert (pool_positions.diff() >= 0).all() and set(pool_positions.tolist()) <= {10, 11}
    assert cache.max_position <= 10 + 2 + 4 + 2


def test_deep_forcing_pool_keeps_the_most_attended_tokens(small_config):
    """Queries that attend to one spatial token of every frame: the pool keeps those tokens."""
    policy = make_policy("deep_forcing", sink_frames=3, recent_frames=3, budget_frames=7)
    cache = KVCache(policy, small_config, *GRID)
    generator = torch.Generator().manual_seed(0)
    direction = torch.zeros(small_config.head_dim)
    direction[-1] = 6.0  # a spatial channel: its score does not depend on the position
    chosen = torch.tensor([1, 6, 11])  # spatial tokens queries look at
    while cache.frames_done < 60:
        cache.begin_chunk(3)
        for layer in range(small_config.num_layers):
            shape = (1, 3 * TOKENS, 4, small_config.head_dim)
            q = 0.1 * torch.randn(shape, generator=generator) + direction
            k = 0.1 * torch.randn(shape, generator=generator)
            k.view(1, 3, TOKENS, 4, -1)[:, :, chosen] += direction
            cache.attend(layer, q, k, torch.randn(shape, generator=generator), commit=True)
        cache.end_chunk()
    for group in cache.groups():
        ids = group.token_ids
        frames = ids // TOKENS
        pool = ids[(frames >= 3) & (frames < 57)]
        assert pool.numel() == TOKENS  # one frame's worth
        assert set((pool % TOKENS).tolist()) <= set(chosen.tolist())


def test_pyramid_anchor_heads_keep_strided_frames(small_config, labelled):
    head_map = HeadMap("test", (("anchor",) * 4,) * 2)
    policy = make_policy("pyramid_forcing").with_head_map(head_map)

    def rule(label, first):
        # sink 3, the 4 recent frames, and of the frames that left them every 6th, the last 4
        recent = set(range(max(3, first - 4), first))
        left = [f for f in range(3, first - 4) if f % 6 == 0][-4:]
        kept = sorted(set(range(min(3, first))) | set(left) | recent)
        return kept, list(range(len(kept))), list(range(len(kept), len(kept) + 3))

    recorder, _ = rollout(small_config, policy)
    check_reports(recorder, rule)


def committed_values(config, policy, frames):
    """Commit random q/k/v chunk by chunk; returns the cache and every frame's raw values."""
    cache = KVCache(policy, config, *GRID)
    generator = torch.Generator().manual_seed(1)
    values = []
    while cache.frames_done < frames:
        cache.begin_chunk(3)
        shape = (1, 3 * TOKENS, config.num_heads, config.head_dim)
        v = torch.randn(shape, generator=generator)
        for layer in range(config.num_layers):
            cache.attend(
                layer,
                torch.randn(shape, generator=generator),
                torch.randn(shape, generator=generator),
                v,
                commit=True,
            )
        cache.end_chunk()
        values.append(v.view(1, 3, TOKENS, config.num_heads, -1))
    return cache, torch.cat(values, dim=1)  # [1, F, T, H, D]


def test_pyramid_wave_buckets_average_the_frames_of_their_phase(small_config):
    head_map = HeadMap("test", (("local",) * 4,) * 2)
    cache, values = committed_values(
        small_config, make_policy("pyramid_forcing").with_head_map(head_map), 45
    )
    group = cache.layers[0][0]
    memory = group.memory
    for slot, newest in enumerate(memory.frames):
        # by the rule: frames 1.. that left the 4 recent frames, bucket (f mod 6) * 4 // 6
        members = [f for f in range(1, 45 - 4) if (f % 6) * 4 // 6 == slot]
        assert newest == members[-1]
        expected = values[0, members].mean(dim=0).permute(1, 0, 2)  # [H, T, D]
        region = slice(memory.base + slot * TOKENS, memory.base + (slot + 1) * TOKENS)
        assert torch.allclose(group.values[0, :, region], expected, atol=1e-5)


def test_pyramid_veil_heads_merge_patches(small_config):
    head_map = HeadMap("test", (("memory",) * 4,) * 2)
    cache, values = committed_values(
        small_config, make_policy("pyramid_forcing").with_head_map(head_map), 30
    )
    group = cache.layers[0][0]
    memory = group.memory
    assert sorted(frame for frame in memory.frames if frame is not None) == [22, 23, 24, 25]
    for slot, frame in enumerate(memory.frames):
        grid = values[0, frame].view(GRID[0], GRID[1], 4, -1)  # [h, w, H, D]
        patches = grid.unflatten(0, (2, 2)).unflatten(2, (2, 2)).mean(dim=(1, 3))
        expected = patches.flatten(0, 1).permute(1, 0, 2)  # [H, T/4, D]
        region = slice(memory.base + slot * 4, memory.base + (slot + 1) * 4)
        assert torch.allclose(group.values[0, :, region], expected, atol=1e-5)


@pytest.mark.parametrize(
    "name", ["deep_forcing", "infinity_rope", "dummy_forcing", "pyramid_forcing"]
)
def test_600_frames_of_bounded_kv(small_config, name):
    config = WanConfig(**{**small_config.__dict__, "num_layers": 1})
    head_map = random_head_map(config, seed=1)
    stats = {region: [[0.1, 0.4, 0.2, 0.3]] for region in ("sink", "middle", "recent", "current")}
    head_map = HeadMap("test", head_map.labels, stats=stats)
    policy = make_policy(name)
    if hasattr(policy, "with_head_map"):
        policy = policy.with_head_map(head_map)
    cache = KVCache(policy, config, *GRID)
    sizes = []
    for frames in (30, 150, 600):
        fast_forward(cache, frames, config.num_heads, config.head_dim)
        sizes.append(cache.bytes_held())
    assert len(set(sizes)) == 1
    assert cache.max_position < 21
