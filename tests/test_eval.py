"""``headforcing eval`` on videos whose answer is known, written here with PyAV: a frozen video,
a flickering one, a fading one and one whose colour drifts; and the toy-world ground truth of
``eval`` against the toy-world metrics computed directly."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from headforcing.cli import main
from headforcing.eval.report import evaluate
from headforcing.eval.segments import sources
from headforcing.io.video import VideoWriter, read_video
from headforcing.toyworld.metrics import video_metrics
from headforcing.toyworld.world import Scene, render_clip

FRAMES = 48
SIZE = 64
TOY_PROMPT = "a red circle bounces over a green striped background"


def _textured(level: np.ndarray) -> np.ndarray:
    """``[F, 3]`` colours -> ``[F, SIZE, SIZE, 3]`` frames with a fixed texture on top."""
    texture = (np.indices((SIZE, SIZE)).sum(axis=0) % 8 < 4)[None, :, :, None] * 30
    return np.clip(level[:, None, None, :] + texture, 0, 255).astype(np.uint8)


def synthetic(kind: str) -> np.ndarray:
    """``[FRAMES, SIZE, SIZE, 3]`` uint8 frames of a video whose measures are known."""
    t = np.arange(FRAMES, dtype=np.float64)[:, None]
    grey = np.array([[120.0, 120.0, 120.0]])
    if kind == "frozen":
        return _textured(np.repeat(grey, FRAMES, axis=0))
    if kind == "flickering":  # brightness jumps up and down every frame
        return _textured(grey + np.where(t % 2 == 0, -40.0, 40.0))
    if kind == "fading":  # darker and darker: 200 -> ~20 over the video
        return _textured(np.repeat(200 - 180 * t / FRAMES, 3, axis=1))
    if kind == "colour drift":  # grey turns red
        return _textured(grey + t / FRAMES * np.array([[100.0, -80.0, -80.0]]))
    if kind == "moving":  # a bright square crosses the frame
        frames = _textured(np.repeat(grey, FRAMES, axis=0))
        for index in range(FRAMES):
            frames[index, 20:36, index : index + 16] = 250
        return frames
    raise AssertionError(kind)


KINDS = ("frozen", "flickering", "fading", "colour drift", "moving")


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval")
    results = {}
    for kind in KINDS:
        path = folder / f"{kind.replace(' ', '_')}.mp4"
        with VideoWriter(path, fps=16) as writer:
            writer.write(torch.from_numpy(synthetic(kind)))
        (source,) = sources(path)
        results[kind] = evaluate(source, segment_frames=16)
    return results


def test_segments_cover_the_video(measured):
    segments = measured["frozen"].segments
    assert [(s.start, s.frames) for s in segments] == [(0, 16), (16, 16), (32, 16)]


def test_frozen_video_has_no_motion_flicker_or_drift(measured):
    frozen = measured["frozen"]
    for segment in frozen.segments:
        assert segment.motion < 1e-3
        assert segment.dynamic_degree == 0
        assert segment.flicker < 1e-3
    assert all(abs(value) < 1e-3 for value in frozen.drift().values())


def test_flicker_ranks_the_flickering_video_first(measured):
    flicker = {kind: measured[kind].segments[0].flicker for kind in KINDS}
    assert flicker["flickering"] > 0.1  # 80 levels peak to peak: ~40 / 255 in amplitude
    assert max(v for k, v in flicker.items() if k != "flickering") < flicker["flickering"] / 5
    assert flicker["fading"] < 0.01  # a linear fade is low-frequency


def test_drift_ranks_fading_and_colour_drift_above_frozen(measured):
    frozen = measured["frozen"].drift()
    for kind in ("fading", "colour drift"):
        drifted = measured[kind].drift()
        assert drifted["background_drift"] > frozen["background_drift"] + 0.1
        assert drifted["colour_drift"] > frozen["colour_drift"] + 0.5
    # a fade moves the luminance; the red drift mostly the hue (its luminance barely changes)
    assert measured["fading"].drift()["background_drift"] > 0.3


def test_motion_and_dynamic_degree(measured):
    moving = measured["moving"].segments[0]
    assert moving.dynamic_degree == 1.0
    assert moving.motion > 5 * measured["frozen"].segments[0].motion  # 32 of 4096 pixels move
    assert measured["flickering"].segments[0].dynamic_degree == 1.0  # it changes, too


def test_sharpness_sees_the_texture():
    from headforcing.eval.measures import luminance, sharpness

    sharp = synthetic("frozen")[:4]
    blurred = ((sharp.astype(np.float32) + np.roll(sharp, 1, axis=2)) / 2).astype(np.uint8)
    assert sharpness(luminance(sharp)) > 2 * sharpness(luminance(blurred))


def _toy_video(path, frames: np.ndarray, scale: int, schedule=None) -> None:
    metadata = {
        "headforcing": "test",
        "preset": "toy",
        "weights": "toy-test",
        "fps": 8,
        "vae_stride": 1,
        "trained_frames": 21,
        "seed": 0,
        "policy": "truth",
        "frames": len(frames),
    }
    metadata |= {"schedule": schedule} if schedule else {"prompt": TOY_PROMPT}
    with VideoWriter(path, fps=8, scale=scale, metadata=metadata) as writer:
        writer.write(torch.from_numpy(frames))


def test_toy_truth_is_the_toyworld_metrics_of_the_same_clip(tmp_path):
    scene = Scene.from_prompt(TOY_PROMPT)
    clip = render_clip(scene, 50)
    path = tmp_path / "toy.mp4"
    _toy_video(path, clip, scale=8)
    assert read_video(path).shape == (50, 256, 256, 3)  # shown at 8x
    (source,) = sources(path)
    result = evaluate(source)
    assert result.segment_frames == 21  # 21 latent frames of stride 1
    # the same numbers as the toy-world metrics of the decoded clip at its own size
    decoded = read_video(path).numpy().reshape(50, 32, 8, 32, 8, 3).mean(axis=(2, 4))
    direct = video_metrics(np.round(decoded).astype(np.uint8), scene, 21)
    assert result.truth == direct
    # and a true clip scores as one: no background error, no flicker, all sprites found
    for metrics in result.truth:
        assert metrics.background_error < 0.01
        assert metrics.count_error == 0
        assert metrics.motion == pytest.approx(video_metrics(clip, scene)[0].motion, abs=0.05)


def test_toy_truth_of_a_wrong_video_is_bad(tmp_path):
    clip = render_clip(Scene.from_prompt("a blue square bounces over a gray dotted background"), 30)
    path = tmp_path / "wrong.mp4"
    _toy_video(path, clip, scale=1)  # the metadata says red circle over green stripes
    (truth,) = evaluate(sources(path)[0]).truth
    assert truth.background_error > 0.1
    assert truth.colour_error > 0.3


def test_toy_truth_follows_a_schedule(tmp_path):
    from headforcing.toyworld.world import render_schedule

    second = "a blue square bounces over a gray dotted background"
    schedule = [(0, Scene.from_prompt(TOY_PROMPT)), (24, Scene.from_prompt(second))]
    clip, scenes = render_schedule(schedule, 48)
    path = tmp_path / "schedule.mp4"
    _toy_video(path, clip, scale=2, schedule=[[0, TOY_PROMPT], [24, second]])
    result = evaluate(sources(path)[0], segment_frames=24)
    decoded = read_video(path).numpy().reshape(48, 32, 2, 32, 2, 3).mean(axis=(2, 4))
    assert result.truth == video_metrics(np.round(decoded).astype(np.uint8), scenes, 24)
    assert [m.background_error < 0.01 for m in result.truth] == [True, True]


def test_eval_command_writes_table_json_and_plot(tmp_path, capsys):
    paths = []
    for kind in ("frozen", "flickering"):
        path = tmp_path / f"{kind}.mp4"
        with VideoWriter(path, fps=16) as writer:
            writer.write(torch.from_numpy(synthetic(kind)))
        paths.append(str(path))
    out_json, out_png = tmp_path / "eval.json", tmp_path / "eval.png"
    argv = ["eval", *paths, "--segment-frames", "16", "--json", str(out_json)]
    assert main([*argv, "--plot", str(out_png)]) == 0
    table = capsys.readouterr().out
    assert "frozen.mp4" in table and "flicker" in table
    report = json.loads(out_json.read_text())
    assert [len(v["segments"]) for v in report["videos"]] == [3, 3]
    assert out_png.stat().st_size > 10_000


def test_eval_refuses_what_it_cannot_read(tmp_path, capsys):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    assert main(["eval", str(text)]) == 2
    assert main(["eval", str(tmp_path / "missing.mp4")]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 2 and all(line.startswith("headforcing eval: error:") for line in errors)


def test_demo_panels_are_measured_apart(tmp_path):
    from headforcing.toyworld.demo import panel_layout, side_by_side

    scene = Scene.from_prompt(TOY_PROMPT)
    real = render_clip(scene, 42)
    wrong = render_clip(
        Scene.from_prompt("a blue square bounces over a gray dotted background"), 42
    )
    picture = side_by_side({"real clip": real, "wrong": wrong}, scale=3)
    metadata = {
        "headforcing": "test",
        "preset": "toy",
        "weights": "toy-test",
        "vae_stride": 1,
        "trained_frames": 21,
        "prompt": TOY_PROMPT,
        "scale": 3,
        "panels": panel_layout(("real clip", "wrong"), 32, 3),
    }
    path = tmp_path / "demo.mp4"
    with VideoWriter(path, fps=8, metadata=metadata) as writer:
        writer.write(torch.from_numpy(np.ascontiguousarray(picture)))
    real_panel, wrong_panel = (evaluate(source) for source in sources(path))
    assert (real_panel.label, wrong_panel.label) == ("demo.mp4: real clip", "demo.mp4: wrong")
    assert [m.count_error for m in real_panel.truth] == [0, 0]
    assert all(m.background_error < 0.01 for m in real_panel.truth)
    assert all(m.background_error > 0.1 for m in wrong_panel.truth)


@given(frames=st.integers(1, 200), segment=st.integers(6, 90))
@settings(max_examples=200, deadline=None)
def test_segments_are_the_toyworld_segments(frames, segment):
    """The streamed cut equals the toy-world metrics' rule: segments of ``segment`` frames, a last
    piece shorter than half a segment joined to the one before."""
    import itertools

    from headforcing.eval.segments import segments

    stream = (np.full((1, 1, 3), index % 256, dtype=np.uint8) for index in range(frames))
    cut = [(start, len(chunk)) for start, chunk in segments(stream, segment)]
    bounds = [*range(0, frames, segment), frames]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < segment // 2:
        del bounds[-2]
    assert cut == [(a, b - a) for a, b in itertools.pairwise(bounds)]


def test_bootstrap_interval_covers_the_true_mean_about_95_percent_of_the_time():
    from headforcing.eval.stats import bootstrap_mean, paired_difference

    rng = np.random.default_rng(12)
    covered = 0
    for repeat in range(400):
        sample = rng.exponential(2.0, size=40)  # skewed; true mean 2.0
        estimate = bootstrap_mean(sample, resamples=500, seed=repeat)
        covered += estimate.low <= 2.0 <= estimate.high
    # percentile bootstrap of 40 skewed values: a little below nominal; 400 repeats: +-2.2 %
    assert 0.89 <= covered / 400 <= 0.98
    same = paired_difference([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert same.mean == 0 and same.holds_zero()
    shifted = paired_difference(list(rng.normal(1, 0.1, 30)), list(rng.normal(0, 0.1, 30)))
    assert not shifted.holds_zero() and shifted.low > 0.9
