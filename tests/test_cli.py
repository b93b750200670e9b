"""The command line end to end: the README's main command writes a playable MP4."""

import pytest

from headforcing.cli import main
from headforcing.io.video import read_video
from headforcing.pipeline import Pipeline, latent_frames_for_seconds


def test_generate_writes_playable_mp4(tmp_path):
    out = tmp_path / "video.mp4"
    assert main(["generate", "a red ball bounces on a checkered floor", "--out", str(out)]) == 0
    frames = read_video(out)
    assert frames.shape == (81, 128, 128, 3)  # 21 latent frames -> 81 frames, 5 s at 16 fps
    assert frames.float().std() > 1  # not a blank video


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--preset", "wan2.2"], "unknown preset 'wan2.2'; valid presets"),
        (["--policy", "rolling"], "unknown policy 'rolling'"),
        (["--height", "100"], "height 100 is not a positive multiple of 16"),
        (["--width", "8"], "width 8 is not a positive multiple of 16"),
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
    code = main(["generate", "a prompt", "--out", str(tmp_path / "v.mp4"), *argv])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


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
