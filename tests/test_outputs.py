"""One rule for every file a command writes: an existing file is refused unless ``--overwrite``,
a symbolic link (live or dangling) always, a folder that cannot take files before any work, and
the file is written beside and renamed. And a finished video is a plain MP4: its index
(``moov``, with the whole sample table and the real duration) before the data, no fragments."""

import json
import os
import shlex

import pytest
import torch

from headforcing.batch import video_name
from headforcing.cli import main
from headforcing.io.video import VideoWriter, read_metadata, read_video

from .mp4boxes import moov_facts, top_level

TINY = ["--preset", "tiny", "--height", "32", "--width", "32"]
KEEP = b"keep me"


def a_video(folder):
    """A small MP4 for ``eval`` to read."""
    path = folder / "input.mp4"
    if not path.exists():
        with VideoWriter(path, fps=16) as writer:
            writer.write(torch.randint(0, 255, (9, 32, 32, 3), dtype=torch.uint8))
    return path


TINY_ARGS = " ".join(TINY)
# command -> (argv writing to {out}, the file {out} names, the option named in the refusal)
COMMANDS = {
    "generate": (
        f"generate 'a red ball' {TINY_ARGS} --frames 3 --out {{out}}",
        "video.mp4",
        "--out",
    ),
    "interactive": (
        f"interactive 'a red ball' {TINY_ARGS} --frames 3 --out {{out}} --port 0 --no-pace "
        "--exit-when-done",
        "live.mp4",
        "--out",
    ),
    "demo": ("demo --frames 42 --out-dir {dir}", "demo/demo.mp4", "--out-dir"),
    "demo report": ("demo --frames 42 --out-dir {dir}", "demo/report.md", "--out-dir"),
    "profile": (
        f"profile 'a red ball' {TINY_ARGS} --frames 6 --chunks 1 --out {{out}}",
        "map.json",
        "--out",
    ),
    "profile --png": (
        f"profile 'a red ball' {TINY_ARGS} --frames 6 --chunks 1 --out {{dir}}/map.json "
        "--png {out}",
        "picture.png",
        "--png",
    ),
    "eval --json": ("eval {video} --json {out}", "eval.json", "--json"),
    "eval --plot": ("eval {video} --plot {out}", "eval.png", "--plot"),
    "batch": (
        f"batch {{dir}}/prompts.txt --out-dir {{dir}}/runs {TINY_ARGS} --frames 3",
        f"runs/window/{video_name('a fox', 0)}",
        "--out-dir",
    ),
    "bench --json": (
        f"bench {TINY_ARGS} --seconds 1 --chunks 1 --policies window --json {{out}}",
        "bench.json",
        "--json",
    ),
    "recall": (
        f"recall 'a red ball' {TINY_ARGS} --frames 6 --chunks 1 --policies window --out {{out}}",
        "recall.json",
        "--out",
    ),
}


def prepare(case, tmp_path):
    """The argv of ``case`` and the path it writes, in a fresh folder with its inputs."""
    argv, name, option = COMMANDS[case]
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "prompts.txt").write_text("a fox\n")
    out = folder / name
    out.parent.mkdir(parents=True, exist_ok=True)
    values = {"out": out, "dir": out.parent if case.startswith("demo") else folder}
    if case.startswith("eval"):
        values["video"] = a_video(tmp_path)
    if case == "batch":
        values["dir"] = folder
    return [arg.format(**values) for arg in shlex.split(argv)], out, option


def refusal(argv, capsys, monkeypatch, tmp_path) -> str:
    import headforcing.cli.options as cli_options

    def refuse(args):
        raise AssertionError("work started before the output was checked")

    monkeypatch.setattr(cli_options, "build_pipeline", refuse)
    monkeypatch.setattr("headforcing.toyworld.demo.run_demo", refuse)
    monkeypatch.setattr("headforcing.eval.report.evaluate", refuse)
    monkeypatch.chdir(tmp_path)
    status = main(argv)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert status == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("case", list(COMMANDS))
@pytest.mark.parametrize("overwrite", [False, True], ids=["", "overwrite"])
def test_a_symbolic_link_is_never_written_through(case, overwrite, tmp_path, capsys, monkeypatch):
    argv, out, option = prepare(case, tmp_path)
    target = tmp_path / "target"
    target.write_bytes(KEEP)
    out.symlink_to(target)
    argv += ["--overwrite"] if overwrite else []
    line = refusal(argv, capsys, monkeypatch, tmp_path)
    assert f"error: {option} {out} is a symbolic link; headforcing never writes through" in line
    assert "--overwrite" not in line  # it would not help
    assert target.read_bytes() == KEEP and out.is_symlink()
    target.unlink()  # dangling now: still refused, and nothing created where it points
    line = refusal(argv, capsys, monkeypatch, tmp_path)
    assert f"{option} {out} is a symbolic link" in line and not target.exists()


@pytest.mark.parametrize("case", list(COMMANDS))
def test_an_existing_file_is_refused_then_replaced_with_overwrite(
    case, tmp_path, capsys, monkeypatch
):
    argv, out, option = prepare(case, tmp_path)
    out.write_bytes(KEEP)
    line = refusal(argv, capsys, monkeypatch, tmp_path)
    assert f"error: {option} {out} already exists; pass --overwrite to replace it" in line
    assert out.read_bytes() == KEEP
    monkeypatch.undo()
    monkeypatch.setenv("HEADFORCING_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--overwrite"]) == 0, capsys.readouterr().err
    assert out.is_file() and not out.is_symlink() and out.read_bytes() != KEEP
    leftovers = [name for name in os.listdir(out.parent) if ".part" in name]
    assert leftovers == []  # written beside, then renamed: nothing left beside it
    if out.suffix == ".mp4":
        assert read_video(out).shape[0] > 0
    elif out.suffix == ".json":
        assert json.loads(out.read_text())


@pytest.mark.parametrize("case", ["generate", "profile", "eval --json", "bench --json", "recall"])
def test_a_folder_that_takes_no_files_is_refused_before_the_work(
    case, tmp_path, capsys, monkeypatch
):
    argv, out, option = prepare(case, tmp_path)
    argv = [arg.replace(str(out), f"/proc/{out.name}") for arg in argv]
    line = refusal(argv, capsys, monkeypatch, tmp_path)
    assert f"error: {option} /proc/{out.name}: cannot create files in /proc (" in line
    assert "Errno" not in line


# ------------------------------------------------------------------ a finished video


def test_a_finished_video_is_a_plain_mp4_with_its_index_first(tmp_path):
    out = tmp_path / "video.mp4"
    prompt = "a red ball bounces on a checkered floor"
    argv = ["generate", prompt, *TINY, "--frames", "9", "--scale", "1", "--out", str(out)]
    assert main(argv) == 0
    frames = 1 + 4 * 8  # 9 latent frames
    boxes = top_level(out)
    assert "moof" not in boxes and "mfra" not in boxes, boxes  # no fragments
    assert boxes.index("moov") < boxes.index("mdat"), boxes  # faststart: the index first
    facts = moov_facts(out)
    assert not facts["mvex"] and facts["samples"] == frames
    assert abs(facts["duration_s"] - frames / 16) <= 1e-3  # the real duration, in the header
    import av

    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.frames == frames
        assert abs(float(stream.duration * stream.time_base) - frames / 16) < 1e-6
        assert sum(1 for _ in container.decode(video=0)) == frames
    record = read_metadata(out)  # the run record survives the rewrite
    assert record["prompt"] == prompt and record["frames"] == 9
    assert os.listdir(tmp_path) == ["video.mp4"]


def test_a_writer_closed_without_finishing_keeps_the_fragments(tmp_path):
    out = tmp_path / "cut.mp4"
    writer = VideoWriter(out, fps=16)
    assert not out.exists()  # nothing until a chunk is written
    for _ in range(2):
        writer.write(torch.zeros(9, 32, 32, 3, dtype=torch.uint8))
    assert out.exists()  # from the second chunk on, the file plays while it grows
    writer.close()
    assert "moof" in top_level(out) and read_video(out).shape[0] == 18
    empty = VideoWriter(tmp_path / "none.mp4", fps=16)
    empty.close()
    assert os.listdir(tmp_path) == ["cut.mp4"]
