"""The profiler recovers planted head types; classification rules; the head-map picture."""

import pytest
import torch

from headforcing.cache.kv import ChunkInfo
from headforcing.heads import HeadMap, classify_percentile, classify_threshold
from headforcing.heads.plot import plot_head_map
from headforcing.heads.profile import HeadProfiler, ProfileSettings
from headforcing.pipeline import Pipeline

TOKENS = 8  # tokens per frame
HEAD_DIM = 16
LAYERS, HEADS = 6, 8


class History:
    """Stand-in for a head group holding every earlier frame and the chunk (what the profiler
    reads: the keys attended, their frames, no mask)."""

    def __init__(self, heads, first_frame, keys):
        self.heads = heads
        self.keys = keys
        self.frames = torch.arange(first_frame + 3).repeat_interleave(TOKENS)

    def attended(self):
        return self.keys, self.frames, None


def planted_types(seed=0):
    """40 % memory, 25 % anchor, the rest local, shuffled over all layers and heads."""
    total = LAYERS * HEADS
    kinds = ["anchor"] * round(0.25 * total) + ["local"] * round(0.35 * total)
    kinds += ["memory"] * (total - len(kinds))
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    return [
        [kinds[order[layer * HEADS + head]] for head in range(HEADS)] for layer in range(LAYERS)
    ]


def planted_qk(kind, first_frame, chunk_frames, generator):
    """Rotated q [1, 1, L, D] and keys [1, 1, N + L, D] whose softmax does what ``kind`` says."""
    history, length = first_frame * TOKENS, chunk_frames * TOKENS
    keys = 0.3 * torch.randn(1, 1, history + length, HEAD_DIM, generator=generator)
    q = 0.3 * torch.randn(1, 1, length, HEAD_DIM, generator=generator)
    direction = torch.zeros(HEAD_DIM)
    direction[0] = 4.0
    if kind == "anchor":  # the first chunk stands out
        keys[..., : 3 * TOKENS, :] += direction
        q += direction
    elif kind == "local":  # the current chunk stands out
        keys[..., history:, :] += direction
        q += direction
    else:  # memory: no preference, attention spreads over the whole history
        q.zero_()
    return q, keys


def run_profiler(types, seed=0):
    settings = ProfileSettings(chunks=(3, 4, 5, 6), query_rows=16)
    profiler = HeadProfiler(LAYERS, HEADS, 3, settings)
    generator = torch.Generator().manual_seed(seed)
    for step in range(8):
        chunk = ChunkInfo(3 * step, 3, TOKENS)
        for layer in range(LAYERS):
            for head in range(HEADS):
                q, keys = planted_qk(types[layer][head], chunk.first_frame, 3, generator)
                group = History((head,), chunk.first_frame, keys)
                for commit in (False, False, True):
                    profiler.observe(layer, group, q, chunk, commit)
    return profiler.stats()


def agreement(labels, types):
    pairs = [
        (a, b)
        for row_a, row_b in zip(labels, types, strict=True)
        for a, b in zip(row_a, row_b, strict=True)
    ]
    return sum(a == b for a, b in pairs) / len(pairs)


def test_profiler_recovers_planted_types_with_the_percentile_rule():
    types = planted_types()
    stats = run_profiler(types)
    for region in ("sink", "middle", "recent", "current"):
        assert len(stats[region]) == LAYERS and len(stats[region][0]) == HEADS
    total = torch.tensor([stats[r] for r in stats]).sum(0)
    assert torch.allclose(total, torch.ones_like(total), atol=1e-5)  # masses are probabilities
    labels, rule = classify_percentile(stats, anchor_fraction=0.25, local_fraction=0.35 / 0.75)
    assert agreement(labels, types) >= 0.95
    assert rule["name"] == "percentile"


def test_profiler_recovers_planted_types_with_the_threshold_rule():
    types = planted_types(seed=1)
    labels, _ = classify_threshold(run_profiler(types, seed=1), 0.3, 0.5)
    assert agreement(labels, types) >= 0.95


def test_commit_pass_is_skipped_unless_asked():
    profiler = HeadProfiler(1, 1, 3, ProfileSettings(chunks=(3,)))
    chunk = ChunkInfo(9, 3, TOKENS)
    assert profiler.wants(chunk, commit=False) and not profiler.wants(chunk, commit=True)
    assert not profiler.wants(ChunkInfo(6, 3, TOKENS), commit=False)


def test_percentile_rule_follows_the_reference_recipe():
    # 4 heads: sink masses decide the anchor (top 25 % = 1 head), then current mass the local one
    stats = {
        "sink": [[0.9, 0.1, 0.2, 0.0]],
        "current": [[0.0, 0.8, 0.1, 0.3]],
        "middle": [[0.1, 0.1, 0.7, 0.7]],
        "recent": [[0.0, 0.0, 0.0, 0.0]],
    }
    labels, _ = classify_percentile(stats, anchor_fraction=0.25, local_fraction=1 / 3)
    assert labels == (("anchor", "local", "memory", "memory"),)
    with pytest.raises(ValueError, match="anchor_fraction must lie in"):
        classify_percentile(stats, anchor_fraction=1.5)


def test_profile_end_to_end_on_tiny_writes_map_and_picture(tmp_path):
    from headforcing.heads.profile import profile_heads

    pipeline = Pipeline.with_standins("tiny", height=64, width=64)
    head_map = profile_heads(pipeline, ["a red ball", "a blue cube"])
    path = head_map.save(tmp_path / "map.json")
    again = HeadMap.load(path)
    assert again.labels == head_map.labels and again.preset == "tiny"
    assert sum(again.counts().values()) == 2 * 4
    assert again.calibration["chunks"] == [3, 4, 5, 6]
    picture = plot_head_map(again, tmp_path / "map.png")
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
