"""What a new user meets in the first hour: defaults in ``--help``, what a frame is, ``profile``
refusing prompts the model cannot read, toy videos at a visible size, threads, ignored outputs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from headforcing.cli import build_parser, main
from headforcing.io.scale import display_scale, downscale, parse_scale, upscale
from headforcing.threads import available_cpus, passive_wait_by_default, set_threads

ROOT = Path(__file__).resolve().parents[1]
TOY_PROMPT = "a red circle bounces over a green striped background"


def help_text(command: str) -> str:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    return " ".join(subparsers.choices[command].format_help().split())


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("generate", "--seed SEED seed of the sampler's noise (default: 0)"),
        ("generate", "(default: window)"),  # --policy
        ("generate", "--out OUT output MP4 (default: video.mp4)"),
        ("generate", "(default: 5.0)"),  # --seconds
        ("generate", "(default: auto)"),  # --scale, --device, --dtype
        ("generate", "Default: the policy's (flush for"),  # --switch names its own
        ("interactive", "(default: 8000)"),
        ("demo", "--out-dir OUT_DIR folder of the video and report (default: demo)"),
        ("demo", "(default: window-21 (absolute))"),  # --baseline
        ("demo", "--seed SEED seed of the sampler's noise (default: 0)"),
        ("profile", "(default: 3 4 5 6)"),  # --chunks
        ("profile", "(default: percentile)"),
        ("bench", "(default: full window sink head_forcing)"),
        ("eval", "81 for Wan2.1"),
    ],
)
def test_help_shows_every_default(command, expected):
    assert expected in help_text(command)


def test_every_option_with_a_default_shows_it():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    for name, sub in subparsers.choices.items():
        formatter = sub._get_formatter()
        for action in sub._actions:
            if action.option_strings and action.default not in (None, False, "==SUPPRESS=="):
                assert "default" in formatter._get_help_string(action), (name, action.dest)


def test_frames_help_says_what_a_frame_is():
    text = help_text("generate")
    assert "video frames per latent frame: 1 for --preset toy, 4 for --preset" in text


def test_profile_refuses_prompts_the_toy_model_cannot_read(tmp_path, capsys):
    from headforcing.heads.store import cache_dir

    out = tmp_path / "map.json"
    status = main(["profile", "a red fox in snow", "--out", str(out), "--frames", "6"])
    assert status == 2
    err = capsys.readouterr().err
    assert "cannot parse toy-world prompt 'a red fox in snow'" in err and "--preset tiny" in err
    assert not out.exists() and not (cache_dir() / "head_maps").exists()  # nothing stored


def test_profile_says_where_it_stored_the_map(tmp_path, capsys):
    from headforcing.heads.store import cache_dir

    out = tmp_path / "map.json"
    argv = ["profile", TOY_PROMPT, "--out", str(out), "--frames", "6", "--chunks", "1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    (stored,) = (cache_dir() / "head_maps").glob("toy-*.json")
    assert str(stored) in printed and "every later head_forcing run" in printed


def test_display_scale():
    assert display_scale(32, 32) == 8  # the toy model: 256 px
    assert display_scale(480, 832) == 1  # Wan: as made
    assert display_scale(100, 300) == 3
    assert display_scale(32, 32, 2) == 2
    # real weights are written as made, whatever the size (a 64x48 test of a real model)
    assert display_scale(48, 64) == 6 and display_scale(48, 64, real_weights=True) == 1
    assert display_scale(48, 64, 2, real_weights=True) == 2
    assert parse_scale("auto") == "auto" and parse_scale("3") == 3
    for bad in ("0", "-1", "x", "65"):
        with pytest.raises(ValueError, match="--scale"):
            parse_scale(bad)


def test_downscale_undoes_upscale():
    import numpy as np
    import torch

    frames = torch.randint(0, 256, (2, 4, 6, 3), dtype=torch.uint8)
    big = upscale(frames, 5)
    assert big.shape == (2, 20, 30, 3)
    assert (torch.from_numpy(downscale(big.numpy(), 5)) == frames).all()
    noisy = np.clip(
        big.numpy().astype(int) + np.tile([[-1, 1]], (20, 15))[None, :, :, None], 0, 255
    )
    assert np.abs(downscale(noisy.astype(np.uint8), 5).astype(int) - frames.numpy()).max() <= 1


def test_wait_policy_is_passive_unless_the_user_chose_one():
    environ = {}
    passive_wait_by_default(environ)
    assert environ == {"OMP_WAIT_POLICY": "PASSIVE"}
    environ = {"OMP_WAIT_POLICY": "ACTIVE"}
    passive_wait_by_default(environ)
    assert environ == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_the_command_line_sets_the_wait_policy_before_torch_loads():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = "import headforcing.cli, os, sys; print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "PASSIVE", out.stderr


def test_threads():
    import torch

    before = torch.get_num_threads()
    try:
        assert 1 <= available_cpus() <= (os.cpu_count() or 1)
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
        assert set_threads(None) <= available_cpus()
        with pytest.raises(ValueError, match="--threads 0"):
            set_threads(0)
    finally:
        torch.set_num_threads(before)


def test_threads_option_refuses_zero(capsys):
    assert main(["generate", TOY_PROMPT, "--threads", "0", "--frames", "3"]) == 2
    assert "--threads 0: give a count >= 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    "path", ["demo/demo.mp4", "head_map.json", "head_map.png", "video.mp4", "eval.json"]
)
def test_default_outputs_are_ignored_by_git(path):
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    result = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT, check=False)
    assert result.returncode == 0, f"{path} is not git-ignored"
