"""Every bad input the issue tracker collected ends in one line on stderr that names the
argument or file, exit status 2, no traceback, and nothing written."""

import os
import pickle
import re
import socket
import sys

import pytest
import torch

from headforcing.cli import main

TOY_PROMPT = "a red circle bounces over a green striped background"
TINY = ["--preset", "tiny", "--height", "64", "--width", "64", "--frames", "6"]
HUGE = ["--width", "16000", "--height", "16000", "--scale", "1"]  # H.264 takes it, memory not


class RunsCode:
    def __reduce__(self):
        return (os.system, ("true",))


def make_files(root):
    """The bad files of the cases, in ``root``."""
    (root / "zero.pt").write_bytes(b"")
    torch.save({"generator": {"model.x": torch.ones(64)}}, root / "base.pt")
    good = (root / "base.pt").read_bytes()
    (root / "half.pt").write_bytes(good[: len(good) // 2])
    torch.save(RunsCode(), root / "evil.pt")
    wan = root / "wan"
    (wan / "google" / "umt5-xxl").mkdir(parents=True)
    for name in ("models_t5_umt5-xxl-enc-bf16.pth", "Wan2.1_VAE.pth"):
        (wan / name).write_bytes(b"")
    for name, transformer_files in {
        "diff_truncated": {"diffusion_pytorch_model.safetensors": b"\x10\x00\x00"},
        "diff_zero": {"diffusion_pytorch_model.safetensors": b""},
        "diff_pickle": {"diffusion_pytorch_model.bin": pickle.dumps(RunsCode())},
    }.items():
        for folder in ("transformer", "text_encoder", "tokenizer", "vae"):
            (root / name / folder).mkdir(parents=True)
        for file, data in transformer_files.items():
            (root / name / "transformer" / file).write_bytes(data)
    (root / "a_folder").mkdir()
    (root / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (root / "latin1.txt").write_bytes("un caf\xe9 au lait".encode("latin-1"))
    (root / "deep.jsonl").write_text("[" * 100_000 + "]" * 100_000 + "\n")
    (root / "exists.mp4").write_bytes(b"keep me")
    (root / "exists.json").write_bytes(b"keep me")
    (root / "target.mp4").write_bytes(b"the link's target")
    (root / "link.mp4").symlink_to(root / "target.mp4")
    (root / "a_file").write_bytes(b"")


REAL = ["--dtype", "bfloat16", "--height", "64", "--width", "64", "--frames", "6"]
WAN = ["--wan-dir", "{d}/wan", *REAL]
LORA = ["--lora", "{d}/half.pt", "--lora-alpha", "8"]
CASES = {
    # files
    "zero-byte checkpoint": (
        ["generate", "x", "--model", "self-forcing", "--checkpoint", "{d}/zero.pt", *WAN],
        "zero.pt is empty, truncated",
    ),
    "truncated checkpoint": (
        ["generate", "x", "--model", "causvid", "--checkpoint", "{d}/half.pt", *WAN],
        "half.pt is empty, truncated",
    ),
    "truncated LoRA": (
        ["generate", "x", "--model", "longlive", "--checkpoint", "{d}/base.pt", *LORA, *WAN],
        "half.pt is empty, truncated",
    ),
    "--model longlive without --lora names the flags": (
        ["generate", "x", "--model", "longlive", "--checkpoint", "{d}/base.pt", *WAN],
        "--model longlive merges a LoRA into the base --checkpoint: pass --lora FILE (its "
        "lora.pt) and --lora-alpha (LongLive: 256)",
    ),
    "--lora without --model longlive": (
        ["generate", "x", "--model", "self-forcing", "--checkpoint", "{d}/base.pt", *LORA, *WAN],
        "--lora and --lora-alpha go with --model longlive, not --model self-forcing",
    ),
    "code-running pickle names the global": (
        ["generate", "x", "--model", "self-forcing", "--checkpoint", "{d}/evil.pt", *WAN],
        "it would call posix.system",
    ),
    "truncated safetensors in a diffusers folder": (
        ["generate", "x", "--model", "diffusers", "--diffusers-dir", "{d}/diff_truncated", *REAL],
        "no complete safetensors header",
    ),
    "zero-byte safetensors in a diffusers folder": (
        ["generate", "x", "--model", "diffusers", "--diffusers-dir", "{d}/diff_zero", *REAL],
        "diffusion_pytorch_model.safetensors is empty, truncated",
    ),
    "pickle .bin in a diffusers folder": (
        ["generate", "x", "--model", "diffusers", "--diffusers-dir", "{d}/diff_pickle", *REAL],
        "holds pickle weights and no .safetensors",
    ),
    "head map is a folder": (
        ["generate", "x", *TINY, "--policy", "head_forcing", "--head-map", "{d}/a_folder"],
        "a_folder is a folder",
    ),
    "deeply nested head map": (
        ["generate", "x", *TINY, "--policy", "head_forcing", "--head-map", "{d}/deep.json"],
        "deep.json is nested too deeply",
    ),
    "non-UTF-8 head map": (
        ["generate", "x", *TINY, "--policy", "head_forcing", "--head-map", "{d}/latin1.txt"],
        "latin1.txt is not UTF-8",
    ),
    "non-UTF-8 schedule": (
        ["generate", "--prompts", "{d}/latin1.txt", *TINY],
        "latin1.txt is not UTF-8 text (byte 0xe9",
    ),
    "deeply nested schedule": (
        ["generate", "--prompts", "{d}/deep.jsonl", *TINY],
        "JSON nested too deeply",
    ),
    "profile --prompts missing": (
        ["profile", "--preset", "tiny", "--prompts", "{d}/missing.txt"],
        "--prompts {d}/missing.txt: cannot read it (No such file or directory)",
    ),
    "profile --prompts not UTF-8": (
        ["profile", "--preset", "tiny", "--prompts", "{d}/latin1.txt"],
        "--prompts {d}/latin1.txt is not UTF-8",
    ),
    # numbers and names
    "--seconds inf": (["generate", "x", "--preset", "tiny", "--seconds", "inf"], "--seconds inf"),
    "--seconds nan": (["generate", "x", "--preset", "tiny", "--seconds", "nan"], "--seconds nan"),
    "--seconds -1": (["generate", "x", "--preset", "tiny", "--seconds", "-1"], "--seconds -1"),
    "--height 0": (["generate", "x", "--preset", "tiny", "--height", "0"], "--height 0 is not"),
    "a size and length that cannot fit": (
        ["generate", "x", "--preset", "tiny", *HUGE, "--policy", "full", "--frames", "1000"],
        "GiB are free",
    ),
    "--device bogus": (["generate", "x", *TINY, "--device", "bogus"], "--device 'bogus'"),
    "--text-device bogus": (
        ["generate", "x", *TINY, "--text-device", "bogus"],
        "--text-device 'bogus'",
    ),
    "huge --seed": (["generate", "x", *TINY, "--seed", str(2**64)], "0..2**63-1"),
    "negative --seed": (["generate", "x", *TINY, "--seed", "-1"], "0..2**63-1"),
    "--frames not a number": (["generate", "x", "--frames", "many"], "invalid int value"),
    "PROMPT not UTF-8": (
        ["generate", "caf\udce9", *TINY],
        "PROMPT: the prompt is not valid UTF-8 text (a lone surrogate, U+DCE9, at character 4",
    ),
    # the output
    "--out not .mp4": (
        ["generate", "x", *TINY, "--out", "{d}/x.txt"],
        "give a name ending in .mp4",
    ),
    "--out exists": (["generate", "x", *TINY, "--out", "{d}/exists.mp4"], "--overwrite"),
    "profile --out exists": (
        ["profile", "x", "--preset", "tiny", "--out", "{d}/exists.json"],
        "--out {d}/exists.json already exists; pass --overwrite to replace it",
    ),
    "--out is a link": (
        ["generate", "x", *TINY, "--overwrite", "--out", "{d}/link.mp4"],
        "is a symbolic link",
    ),
    "--out under a file": (
        ["generate", "x", *TINY, "--out", "{d}/a_file/v.mp4"],
        "a_file is not a folder",
    ),
    "--out in an unwritable folder": (
        ["generate", "x", *TINY, "--out", "/proc/headforcing.mp4"],
        "cannot create files in /proc",
    ),
    "demo --out-dir is a file": (["demo", "--out-dir", "{d}/a_file"], "is a file, not a folder"),
    # the live server
    "--port 70000": (["interactive", "x", *TINY, "--port", "70000"], "--port 70000 is not a port"),
    "--port in use": (["interactive", "x", *TINY, "--port", "{busy}"], "choose another --port"),
    "interactive --out not .mp4": (
        ["interactive", "x", *TINY, "--out", "{d}/x.txt"],
        "give a name ending in .mp4",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gets_one_line_naming_the_fix(case, tmp_path, capsys, monkeypatch):
    argv, message = CASES[case]
    # the same answer on every machine: 1 TiB free (the size case needs far more)
    monkeypatch.setattr("headforcing.resources.free_memory", lambda device: 2**40)
    make_files(tmp_path)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    values = {"d": str(tmp_path), "busy": str(busy.getsockname()[1])}
    argv = [arg.format(**values) for arg in argv]
    message = message.format(**values)
    if argv[0] in ("generate", "interactive") and "--out" not in argv:
        argv += ["--out", str(tmp_path / "new.mp4")]
    before = sorted(os.walk(tmp_path))
    try:
        with pytest.raises(SystemExit) as exit_info:
            sys.exit(main(argv))
    finally:
        busy.close()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    # one line; a file found bad while loading follows the "loading the model" progress line
    lines = [line for line in err.splitlines() if line != "loading the model"]
    assert len(lines) == 1 and err.endswith("\n"), err
    assert "error:" in err and message in err and "Traceback" not in err
    assert not re.search(r"\b(lora|lora_alpha|kind)=", err)  # flags, never Python arguments
    assert sorted(os.walk(tmp_path)) == before  # nothing written, created or replaced
    assert (tmp_path / "target.mp4").read_bytes() == b"the link's target"
    assert (tmp_path / "exists.mp4").read_bytes() == b"keep me"


def test_a_stop_while_the_model_loads_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    import headforcing.cli.options as cli_options
    from headforcing.interrupts import Interrupted

    def interrupted_load(args):
        raise Interrupted(15)  # what the SIGTERM handler raises in the middle of loading

    monkeypatch.setattr(cli_options, "build_pipeline", interrupted_load)
    out = tmp_path / "v.mp4"
    assert main(["generate", TOY_PROMPT, "--frames", "6", "--out", str(out)]) == 143
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == "headforcing generate: interrupted (SIGTERM)"
    assert "Traceback" not in err and not out.exists()


def test_overwrite_replaces_a_regular_file(tmp_path):
    from headforcing.io.video import read_video

    out = tmp_path / "v.mp4"
    out.write_bytes(b"old")
    assert main(["generate", "x", *TINY, "--out", str(out), "--overwrite"]) == 0
    assert read_video(out).shape[0] == 21


@pytest.mark.parametrize(
    ("size", "message"),
    [
        (
            ["--width", "16400", "--height", "16", "--scale", "1"],
            "--width 16400 --height 16: the video's frames would be 16400x16 px; the H.264 "
            "encoder takes at most 16384 px a side: give a smaller --width/--height",
        ),
        (
            ["--width", "4096", "--height", "16", "--scale", "8"],
            "frames would be 32768x128 (4096x16 at --scale 8) px; the H.264 encoder takes at most "
            "16384 px a side: give a smaller --width/--height, or a smaller --scale",
        ),
        (["--width", "160000"], "frames would be 320000x256 (160000x128 at --scale auto = 2)"),
        (
            ["--width", "16384", "--height", "16384", "--scale", "1"],
            "FFmpeg takes at most about 264 million pixels a frame (16384x16128)",
        ),
    ],
    ids=["16400 wide", "4096 wide at scale 8", "160000 wide, default height", "16384 square"],
)
@pytest.mark.parametrize("command", ["generate", "interactive"])
def test_a_frame_the_encoder_cannot_take_is_refused_before_loading(
    command, size, message, tmp_path, capsys, monkeypatch
):
    import headforcing.cli.options as cli_options

    def refuse(args):
        raise AssertionError("the model was loaded before the frame size was checked")

    monkeypatch.setattr(cli_options, "build_pipeline", refuse)
    out = tmp_path / "v.mp4"
    argv = [command, "a red ball", "--preset", "tiny", *size, "--out", str(out), "--port", "0"]
    assert main(argv if command == "interactive" else argv[:-2]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err, err
    assert os.listdir(tmp_path) == []
