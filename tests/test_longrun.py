"""The paired toy-world benchmarks (long horizon, Head Forcing variants): pairing and intervals
on synthetic per-video values, what a rerun skips, the reporting prompts kept apart from the
tuning sets, and tiny runs of the real thing (one process, then two ranks under torchrun)."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from headforcing.toyworld.benchmark import HEAD_MAP_FILE, LONG_HORIZON, VARIANTS, main
from headforcing.toyworld.evaluate import EVAL_PROMPTS
from headforcing.toyworld.longrun import (
    METRICS,
    POLICY_SPECS,
    VARIANT_POLICIES,
    after_first_segment,
    comparisons,
    horizon_measures,
    reporting_prompts,
    segment_ending_at,
)
from headforcing.toyworld.paired import NO_DIFFERENCE, Table, differences, policy_rows
from headforcing.toyworld.pretrained import WEIGHTS_DIR
from headforcing.toyworld.rollouts import (
    Item,
    identity,
    pending_items,
    plan_items,
    read_records,
)
from headforcing.toyworld.world import random_scene

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
needs_weights = pytest.mark.skipif(
    not (WEIGHTS_DIR / "model.safetensors").exists(), reason="no shipped weights"
)


def video_values(errors: dict[tuple[str, int], float]) -> dict:
    """Per-video values with ``count_error`` as given and the other metrics 0."""
    return {
        video: {m: errors[video] if m == "count_error" else 0.0 for m in METRICS}
        for video in errors
    }


def test_a_difference_pairs_only_the_videos_both_policies_have():
    rng = np.random.default_rng(0)
    videos = [(f"scene {i}", seed) for i in range(6) for seed in (0, 1)]
    full = {video: float(rng.uniform(0, 1)) for video in videos[:5]}  # capped to 5 videos
    head = {video: float(rng.uniform(0, 2)) for video in videos[2:]}  # 10 videos, 3 shared
    values = {"full": video_values(full), "head_forcing": video_values(head)}

    rows = {row.policy: row for row in policy_rows(values, METRICS)}
    assert (rows["full"].videos, rows["head_forcing"].videos) == (5, 10)  # all their own videos
    assert rows["head_forcing"].estimates["count_error"].mean == pytest.approx(
        np.mean(list(head.values()))
    )
    (diff,) = differences(values, [("head_forcing", "full")], METRICS)
    shared = [video for video in videos if video in full and video in head]
    assert diff.pairs == len(shared) == 3
    expected = np.mean([head[video] - full[video] for video in shared])
    estimate = diff.estimates["count_error"]
    assert estimate.mean == pytest.approx(expected) and estimate.count == 3
    assert estimate.low <= expected <= estimate.high


def test_no_measurable_difference_exactly_when_the_interval_holds_zero():
    videos = [(f"scene {i}", 0) for i in range(20)]
    base = video_values({video: 0.5 for video in videos})
    # +-0.3 in turn: mean 0, and a bootstrap of it straddles 0; +0.1..+0.3: every resample > 0
    level = video_values({v: 0.5 + (0.3 if i % 2 else -0.3) for i, v in enumerate(videos)})
    worse = video_values({v: 0.6 + 0.01 * i for i, v in enumerate(videos)})
    values = {"head_forcing": level, "window": base, "sink": worse}
    pairs = [("head_forcing", "window"), ("sink", "window")]
    diffs = differences(values, pairs, METRICS)
    assert diffs[0].no_measurable_difference("count_error") is True
    assert diffs[1].no_measurable_difference("count_error") is False
    assert diffs[1].estimates["count_error"].low > 0

    table = Table("t", 21, policy_rows(values, METRICS), None, diffs)
    lines = table.markdown(["count_error"], []).splitlines()
    assert NO_DIFFERENCE in next(line for line in lines if line.startswith("| head_forcing −"))
    assert NO_DIFFERENCE not in next(line for line in lines if line.startswith("| sink −"))
    verdicts = [
        d["no_measurable_difference"]["count_error"] for d in table.to_json()["differences"]
    ]
    assert verdicts == [True, False]


def test_one_video_or_pair_gets_no_interval_and_no_verdict():
    values = {
        "head_forcing": video_values({("a", 0): 1.0, ("b", 0): 0.0}),
        "full": video_values({("a", 0): 0.0}),
    }
    rows = {row.policy: row for row in policy_rows(values, METRICS)}
    assert rows["full"].estimates["count_error"] is None
    (diff,) = differences(values, [("head_forcing", "full")], METRICS)
    assert diff.pairs == 1 and diff.no_measurable_difference("count_error") is None
    table = Table("t", 21, list(rows.values()), None, [diff]).markdown(["count_error"], [])
    assert "too few (1)" in table and NO_DIFFERENCE not in table


def test_variants_are_compared_with_the_defaults_and_every_baseline():
    pairs = comparisons(VARIANT_POLICIES)
    variants = [name for name in VARIANT_POLICIES if name.startswith("head_forcing")]
    baselines = [name for name in VARIANT_POLICIES if not name.startswith("head_forcing")]
    expected = {(v, b) for v in variants for b in baselines}
    expected |= {(v, "head_forcing") for v in variants if v != "head_forcing"}
    assert set(pairs) == expected and len(pairs) == len(expected)
    assert comparisons(("full", "window", "sink", "head_forcing")) == [
        ("head_forcing", "full"),
        ("head_forcing", "window"),
        ("head_forcing", "sink"),
    ]


def test_measures_read_the_right_segments():
    segments = [{m: float(index) for m in METRICS} for index in range(50)]  # segment i: value i
    assert segment_ending_at(210).of(segments)["count_error"] == 9  # frames 190-210
    assert segment_ending_at(1050).of(segments)["colour_error"] == 49
    assert after_first_segment(210).of(segments)["motion"] == np.mean(range(1, 10))  # 22-210
    assert segment_ending_at(1050).of(segments[:10]) is None  # a 210-frame video
    assert [m.frames for m in horizon_measures(1050)] == [21, 210, 1050]
    assert [m.frames for m in horizon_measures(42)] == [21, 42]
    with pytest.raises(ValueError, match="multiple of 21"):
        horizon_measures(200)


def test_reporting_prompts_are_distinct_and_none_was_used_for_tuning():
    def draw(rng, count):
        generator = np.random.default_rng(rng)
        return [random_scene(generator).prompt() for _ in range(count)]

    tuning = {*EVAL_PROMPTS, *draw(780, 8), *draw(778, 24), *draw(779, 24), *draw(781, 24)}
    prompts = reporting_prompts(40, 791)
    assert len(set(prompts)) == 40 and not set(prompts) & tuning
    # the draw itself, minus the skipped prompts, in order
    kept = [p for p in draw(791, 200) if p not in tuning]
    assert prompts == list(dict.fromkeys(kept))[:40]


def test_plan_caps_a_policy_to_fewer_frames_or_videos():
    prompts, seeds = ["p0", "p1", "p2"], [0, 1]
    items = plan_items(["full", "head_forcing"], prompts, seeds, 1050, {"full": 210}, {"full": 4})
    full = [item for item in items if item.policy == "full"]
    assert [(i.prompt, i.seed) for i in full] == [("p0", 0), ("p1", 0), ("p2", 0), ("p0", 1)]
    assert {i.frames for i in full} == {210}
    assert len([i for i in items if i.policy == "head_forcing" and i.frames == 1050]) == 6
    with pytest.raises(ValueError, match="sink"):
        plan_items(["full"], prompts, seeds, 210, {"sink": 21})


def test_a_rerun_skips_what_a_record_covers(tmp_path):
    hf = identity("head_forcing", "toy-a", None) | {"head_map": "map-1"}
    identities = {"head_forcing": hf, "window": identity("window", "toy-a", None)}
    rows = [
        {**hf, "prompt": "p", "seed": 0, "frames": 1050, "segments": []},  # covers 210 too
        {**hf, "prompt": "p", "seed": 1, "frames": 210, "segments": []},  # too short for 1050
        {**hf, "head_map": "map-2", "prompt": "q", "seed": 0, "frames": 1050, "segments": []},
        {**identities["window"], "prompt": "p", "seed": 0, "frames": 1050, "segments": []},
        {
            **identities["window"],
            "params": {},
            "prompt": "q",
            "seed": 0,
            "frames": 1050,
            "segments": [],
        },  # window with other parameters
        {
            **identities["window"],
            "weights": "toy-b",
            "prompt": "p",
            "seed": 1,
            "frames": 1050,
            "segments": [],
        },
    ]
    (tmp_path / "videos.rank0.jsonl").write_text(
        "".join(json.dumps(row) + "\n" for row in rows[:3]) + '{"policy": "window", "pro'
    )
    (tmp_path / "videos.rank1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[3:]))
    records = read_records(tmp_path)
    assert len(records) == 6  # the line cut by a crash is skipped

    items = plan_items(["head_forcing", "window"], ["p", "q"], [0, 1], 1050)
    left = pending_items(items, records, identities)
    assert set(left) == {
        Item("head_forcing", "p", 1, 1050),
        Item("head_forcing", "q", 0, 1050),
        Item("head_forcing", "q", 1, 1050),
        Item("window", "p", 1, 1050),
        Item("window", "q", 0, 1050),
        Item("window", "q", 1, 1050),
    }
    shorter = plan_items(["head_forcing"], ["p"], [0, 1], 210)
    assert pending_items(shorter, records, identities) == []


# the tiny end-to-end runs: 1 scene x 2 seeds, 42 frames, window and head_forcing
TINY = ["--scenes", "1", "--seeds", "0", "1", "--frames", "42", "--policies", "window"]
TINY += ["head_forcing"]


def with_shipped_head_map(out_dir: Path) -> Path:
    """The results folder's head map made from the shipped one (profiled on the same prompts),
    so that the tests skip the profiling rollouts."""
    from headforcing.heads.headmap import HeadMap
    from headforcing.toyworld.pretrained import load_toy_pipeline

    shipped = HeadMap.load(WEIGHTS_DIR / "head_map.json")
    weights = load_toy_pipeline().weights_id
    head_map = replace(shipped, calibration={**shipped.calibration, "weights": weights})
    return head_map.save(out_dir / HEAD_MAP_FILE)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("long_horizon")
    with_shipped_head_map(out)
    assert main(LONG_HORIZON, ["--out-dir", str(out), *TINY]) == 0
    return out


@needs_weights
def test_one_process_run_reports_every_horizon_and_resumes(one_process, capsys):
    out = one_process
    records = read_records(out)
    assert sorted((r["policy"], r["seed"], r["frames"]) for r in records) == [
        ("head_forcing", 0, 42),
        ("head_forcing", 1, 42),
        ("window", 0, 42),
        ("window", 1, 42),
    ]
    summary = json.loads((out / "long_horizon.json").read_text())
    assert [table["frames"] for table in summary["tables"]] == [21, 42]
    for index, table in enumerate(summary["tables"]):
        for row in table["policies"]:  # the mean over its videos of segment `index`
            mine = [r for r in records if r["policy"] == row["policy"]]
            expected = np.mean([r["segments"][index]["count_error"] for r in mine])
            assert row["videos"] == 2 and row["count_error"]["mean"] == pytest.approx(expected)
        (diff,) = table["differences"]
        assert (diff["subject"], diff["reference"], diff["pairs"]) == ("head_forcing", "window", 2)
    assert "head_forcing − window" in (out / "long_horizon.md").read_text()

    # a rerun makes nothing; the variants at 42 frames reuse these rollouts
    before = (out / "videos.rank0.jsonl").read_text()
    capsys.readouterr()
    assert main(LONG_HORIZON, ["--out-dir", str(out), *TINY]) == 0
    assert "4 videos planned, 4 already done" in capsys.readouterr().err
    assert main(VARIANTS, ["--out-dir", str(out), *TINY]) == 0
    assert "4 already done" in capsys.readouterr().err
    assert (out / "videos.rank0.jsonl").read_text() == before
    variants = json.loads((out / "variants.json").read_text())["tables"]
    assert [table["label"] for table in variants] == [
        "frames 22-42 (the segment ending at frame 42)"
    ]


@needs_weights
def test_a_record_is_the_video_a_direct_rollout_makes_and_a_longer_one_starts_with_it(
    one_process,
):
    from headforcing.heads.headmap import HeadMap
    from headforcing.toyworld.evaluate import sample_video
    from headforcing.toyworld.metrics import video_metrics
    from headforcing.toyworld.pretrained import load_toy_pipeline
    from headforcing.toyworld.world import Scene

    (record,) = [
        r for r in read_records(one_process) if r["policy"] == "head_forcing" and r["seed"] == 1
    ]
    pipeline = load_toy_pipeline()
    policy = POLICY_SPECS["head_forcing"].build(HeadMap.load(one_process / HEAD_MAP_FILE))
    video = sample_video(pipeline, record["prompt"], 42, policy, seed=1)
    segments = video_metrics(video, Scene.from_prompt(record["prompt"]))
    assert [s.as_dict() for s in segments] == record["segments"]
    # causal generation, noise drawn in order: what lets a 1050-frame record stand for 210
    shorter = sample_video(pipeline, record["prompt"], 21, policy, seed=1)
    assert np.array_equal(video[:21], shorter)


@needs_weights
def test_two_ranks_split_the_videos_and_make_the_same_records(one_process, tmp_path):
    with_shipped_head_map(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node=2", str(BENCHMARKS / "long_horizon.py")]
    command += ["--out-dir", str(tmp_path), *TINY]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_records(tmp_path)
    assert sorted(r["rank"] for r in records) == [0, 0, 1, 1]  # equal costs: two each

    def key(record):
        return (record["policy"], record["prompt"], record["seed"])

    single = {key(r): r["segments"] for r in read_records(one_process)}
    assert {key(r): r["segments"] for r in records} == single
    summary = json.loads((tmp_path / "long_horizon.json").read_text())
    assert (
        summary["tables"] == json.loads((one_process / "long_horizon.json").read_text())["tables"]
    )


@pytest.mark.parametrize(
    ("report", "argv", "message"),
    [
        (LONG_HORIZON, ["--frames", "100"], "multiple of 21"),
        (VARIANTS, ["--frames", "21"], "at least 42"),
        (LONG_HORIZON, ["--policy-frames", "full=200"], "multiple of 21"),
        (LONG_HORIZON, ["--limit", "fulll=3"], "POLICY=NUMBER"),
    ],
)
def test_bad_options_are_refused_before_anything_runs(report, argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        main(report, argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err
