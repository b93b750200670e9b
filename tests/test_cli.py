"""The command line end to end: ``generate`` writes a playable MP4, by default with the shipped
toy-world model."""

import re

import pytest
import torch

from headforcing.cli import main
from headforcing.io.video import read_video
from headforcing.pipeline import Pipeline, latent_frames_for_seconds

TOY_PROMPT = "a red circle bounces over a green striped background"


def test_generate_writes_playable_mp4(tmp_path, capsys):
    out = tmp_path / "video.mp4"
    argv = ["generate", "a red ball bounces on a checkered floor", "--preset", "tiny"]
    assert main([*argv, "--out", str(out)]) == 0
    frames = read_video(out)
    # 21 latent frames -> 81 frames, 5 s at 16 fps; 128 px frames shown at 2x (--scale auto)
    assert frames.shape == (81, 256, 256, 3)
    assert frames.float().std() > 1  # not a blank video

    # the last line: DiT-only and end-to-end frames/s, the device, the steps, the chunk size
    last = capsys.readouterr().err.strip().splitlines()[-1]
    match = re.fullmatch(
        r"speed: ([\d.]+) frames/s DiT only, ([\d.]+) frames/s end to end \(decode and writing "
        r"included\), on CPU \(\d+ threads?\) \(float32\), 4 denoising steps \+ 1 commit pass "
        r"per chunk of 3 latent frames \(12 video frames\)",
        last,
    )
    assert match, last
    dit, end_to_end = map(float, match.groups())
    assert dit >= end_to_end > 0


def test_generate_without_a_model_runs_the_shipped_toy_model(tmp_path, capsys):
    from headforcing.cache import make_policy
    from headforcing.toyworld.evaluate import sample_video
    from headforcing.toyworld.pretrained import load_toy_pipeline

    out = tmp_path / "toy.mp4"
    assert main(["generate", TOY_PROMPT, "--frames", "9", "--out", str(out)]) == 0
    assert "toy on cpu" in capsys.readouterr().err
    from headforcing.io.scale import downscale

    shown = read_video(out).numpy()
    assert shown.shape == (9, 256, 256, 3)  # 32 x 32 toy frames shown at 8x (--scale auto)
    corners = shown[:, ::8, ::8].astype(int) - shown[:, 7::8, 7::8]
    assert abs(corners).mean() < 4  # nearest neighbour: flat 8x8 blocks, but for x264's noise
    frames = torch.from_numpy(downscale(shown, 8)).float()  # toy latents decode 1:1 to 32 x 32
    # the same video as the library's: the shipped weights, the CLI's default policy
    policy = make_policy("window", positions="relative")
    expected = torch.from_numpy(sample_video(load_toy_pipeline(), TOY_PROMPT, 9, policy, seed=0))
    assert (frames - expected.float()).abs().mean() < 6  # H.264 loses a little


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--preset", "wan2.2"], "unknown preset 'wan2.2'; valid presets"),
        (["--policy", "rolling"], "unknown policy 'rolling'"),
        (["--preset", "tiny", "--height", "100"], "height 100 is not a positive multiple of 16"),
        (["--preset", "tiny", "--width", "8"], "width 8 is not a positive multiple of 16"),
        (["--height", "64"], "the toy model makes 32x32 frames"),
        (["--frames", "0"], "--frames must be >= 1"),
        (["--window-frames", "2"], "smaller than one chunk"),
        (["--window-frames", "6", "--sink-frames", "9"], "larger than the window"),
        (["--preset", "wan2.1-t2v-1.3b"], "needs real weights"),
        (["--model", "sora"], "unknown --model 'sora'"),
        (["--model", "self-forcing", "--wan-dir", "/nowhere"], "needs --checkpoint"),
        (["--model", "causvid", "--checkpoint", "x.pt"], "exactly one of --wan-dir"),
    ],
)
def test_bad_input_gets_one_clear_error(tmp_path, capsys, argv, message):
    code = main(["generate", TOY_PROMPT, "--out", str(tmp_path / "v.mp4"), *argv])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_a_prompt_the_toy_model_cannot_read_names_the_alternatives(tmp_path, capsys):
    assert main(["generate", "a red ball", "--out", str(tmp_path / "v.mp4")]) == 2
    err = capsys.readouterr().err
    assert "cannot parse toy-world prompt 'a red ball'" in err
    assert "--model" in err and "--preset tiny" in err and "Traceback" not in err


def test_seconds_to_latent_frames():
    assert latent_frames_for_seconds(5) == 21
    assert latent_frames_for_seconds(60) == 241


def test_interrupted_stream_leaves_playable_video(tmp_path):
    from headforcing.cache import make_policy
    from headforcing.io.video import VideoWriter

    pipeline = Pipeline.with_standins("tiny", height=64, width=64)
    out = tmp_path / "partial.mp4"
    with VideoWriter(out, fps=16) as writer:
        for index, chunk in enumerate(pipeline.stream("a cat", 30, make_policy("window"))):
            writer.write(chunk.frames[0])
            if index == 2:
                break  # the consumer stops mid-stream
    assert read_video(out).shape == (9 + 12 + 12, 64, 64, 3)


def test_bench_prints_a_table(capsys):
    argv = ["bench", "--height", "32", "--width", "32", "--seconds", "1", "2", "--chunks", "1"]
    assert main([*argv, "--policies", "window", "head_forcing"]) == 0
    table = capsys.readouterr().out
    assert "| policy | video s |" in table
    rows = [
        line
        for line in table.splitlines()
        if line.startswith("| window") or line.startswith("| head_forcing")
    ]
    assert len(rows) == 4
