"""Attention recall on planted heads: 1.0 where a policy keeps exactly what a head attends to,
a hand computation where it keeps part of it."""

import pytest
import torch

from headforcing.cache import KVCache, make_policy
from headforcing.heads.recall import RecallMeter, RecallReport, _Tee, measure_recall
from headforcing.model import WanConfig
from headforcing.pipeline import Pipeline

GRID = (4, 4)
TOKENS = 16
CONFIG = WanConfig(
    dim=64, ffn_dim=96, freq_dim=32, text_dim=24, text_len=10, num_heads=4, num_layers=1
)
HEAD_DIM = CONFIG.head_dim
FAR_FRAME = 7


def planted_chunk(first_frame, generator):
    """q, k, v ``[1, 3T, 4, D]``: head 0 looks at the sink (frames 0-2), head 1 at frame
    FAR_FRAME, heads 2 and 3 nowhere in particular (q = 0: uniform). (Recall is of the past:
    a head that looks at the current chunk is the same for every policy.)"""
    shape = (1, 3 * TOKENS, 4, HEAD_DIM)
    q = 0.01 * torch.randn(shape, generator=generator)
    k = 0.01 * torch.randn(shape, generator=generator)
    v = torch.randn(shape, generator=generator)
    marker = torch.zeros(HEAD_DIM)
    marker[-1] = 40.0  # a spatial channel: its score does not depend on temporal positions
    frames = torch.arange(first_frame, first_frame + 3).repeat_interleave(TOKENS)
    q[:, :, [0, 1]] += marker
    q[:, :, 2:] = 0
    k[:, frames < 3, 0] += marker
    k[:, frames == FAR_FRAME, 1] += marker
    return q, k, v


def run(policies, chunks, frames=36):
    reference = KVCache(make_policy("full"), CONFIG, *GRID)
    shadows = {name: KVCache(policy, CONFIG, *GRID) for name, policy in policies.items()}
    meter = RecallMeter(shadows, chunks, query_rows=16)
    reference.observers.append(meter)
    tee = _Tee(reference, shadows)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        while tee.frames_done < frames:
            chunk = tee.begin_chunk(3)
            q, k, v = planted_chunk(chunk.first_frame, generator)
            tee.attention().attend(0, q, k, v)
            tee.attention(commit=True).attend(0, q, k, v)
            tee.end_chunk()
    return meter.recall


def test_recall_is_one_where_a_policy_keeps_what_a_head_attends_to():
    policies = {
        "sink": make_policy("sink", window_frames=9, sink_frames=3),
        "window": make_policy("window", window_frames=9),
        "full": make_policy("full"),
        "deep sink": make_policy("window", window_frames=12, sink_frames=8),  # frames 0-7 + 1
    }
    recall = run(policies, chunks=(10,))  # the chunk at frames 30-32
    sink, window, full = (recall[name][10][0] for name in ("sink", "window", "full"))
    assert sink[0] == pytest.approx(1.0, abs=1e-3)  # the sink head: the sink kept
    assert window[0] < 0.01  # the window dropped the sink
    assert full == pytest.approx([1.0] * 4)
    assert sink[1] < 0.01 and window[1] < 0.01  # frame 7 is in neither
    deep = recall["deep sink"][10][0]
    assert deep[:2] == pytest.approx([1.0, 1.0], abs=1e-3)  # the sink and the far frame kept
    assert deep[2] == pytest.approx((8 + 1) / 30, abs=1e-4)
    # the uniform head: past recall = kept past frames / past frames, by hand
    assert window[2] == pytest.approx(6 / 30, abs=1e-4)
    assert sink[2] == pytest.approx((3 + 3) / 30, abs=1e-4)


def test_recall_report_aggregates_by_head_type(tmp_path):
    recall = {"p": {4: [[1.0, 0.5, 0.0, 1.0]]}}
    report = RecallReport(recall, [["anchor", "memory", "memory", "local"]], "full")
    assert report.by_type() == {"p": {4: {"anchor": 1.0, "memory": 0.25, "local": 1.0}}}
    assert "| p | 4 (12) | 1.000 | 1.000 | 0.250 |" in report.table(3)
    assert report.plot(tmp_path / "recall.png").stat().st_size > 0
    assert report.save(tmp_path / "recall.json").stat().st_size > 0


def test_measure_recall_on_a_model():
    pipeline = Pipeline.with_standins("tiny", height=64, width=64)
    policies = {"window": make_policy("window", window_frames=9), "full": make_policy("full")}
    report = measure_recall(pipeline, "a red ball", policies, frames=24, chunks=(5,))
    full = report.recall["full"][5]
    window = report.recall["window"][5]
    assert all(value == pytest.approx(1.0) for row in full for value in row)
    assert all(0 <= value < 1 for row in window for value in row)
