"""``batch`` in one process: the VBench-Long layout (one folder per policy, ``{prompt}-{index}.mp4``
with the prompt recoverable from the name), the manifest, resuming after a crash, bad files."""

import json
import re
from pathlib import Path

import pytest

from headforcing.batch import video_name
from headforcing.cli import main
from headforcing.io.video import read_video

TINY = ["--preset", "tiny", "--height", "32", "--width", "32", "--frames", "3"]


def vbench_prompt(path: Path) -> str:
    """VBench's ``get_prompt_from_filename`` (custom-input modes): the stem, minus ``-N``."""
    return re.sub(r"-\d+$", "", path.stem)


def run_batch(tmp_path, lines, *options):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    return main(["batch", str(prompts), "--out-dir", str(out), *TINY, *options]), out


def test_one_folder_per_policy_named_as_vbench_long_reads_them(tmp_path):
    lines = [
        "a fox in snow",
        '{"prompt": "a fox in snow", "seed": 4}',
        '{"prompt": "rain on a window", "policy": "sink"}',
        '{"prompts": ["a city street", "the street at night"], "switch_frame_indices": [3], '
        '"frames": 6}',
    ]
    code, out = run_batch(tmp_path, lines, "--policies", "window", "head_forcing")
    assert code == 0
    folders = sorted(path.name for path in out.iterdir() if path.is_dir())
    assert folders == ["head_forcing", "sink", "window"]
    names = {folder: sorted(p.name for p in (out / folder).iterdir()) for folder in folders}
    assert (
        names["window"]
        == names["head_forcing"]
        == [
            "a city street-0.mp4",
            "a fox in snow-0.mp4",
            "a fox in snow-1.mp4",
        ]
    )
    assert names["sink"] == ["rain on a window-0.mp4"]  # the item's own policy only
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 7
    for row in rows:
        video = out / row["file"]
        first = row["prompt"] if isinstance(row["prompt"], str) else row["prompt"][0]["prompt"]
        assert vbench_prompt(video) == first
        assert read_video(video).shape[0] == row["pixel_frames"] == 1 + 4 * (row["frames"] - 1)
    schedule = next(row for row in rows if row["file"] == "window/a city street-0.mp4")
    assert schedule["prompt"] == [
        {"frame": 0, "prompt": "a city street"},
        {"frame": 3, "prompt": "the street at night"},
    ]
    assert {row["seed"] for row in rows if "fox" in row["file"]} == {0, 4}


def test_a_name_holds_any_prompt():
    assert video_name("a cat / a dog", 2) == "a cat   a dog-2.mp4"
    long = video_name("é" * 300, 12)
    assert len(long.encode()) <= 255 and long.endswith("-12.mp4")
    assert vbench_prompt(Path(long)) == "é" * 124  # cut at a character boundary


def test_resume_redoes_only_the_video_lost_in_a_crash(tmp_path, capsys):
    lines = ["a fox in snow", "rain on a window", "a koi pond"]
    code, out = run_batch(tmp_path, lines)
    assert code == 0
    lost = out / "window" / "rain on a window-0.mp4"
    before = read_video(lost)
    # a crash mid-video: the video never reached its name, the row was never written, and
    # the unfinished file lies in .partial/ (outside every policy folder)
    lost.unlink()
    rows = (out / "manifest.jsonl").read_text().splitlines()
    (out / "manifest.jsonl").write_text("\n".join(r for r in rows if "rain" not in r) + "\n")
    (out / ".partial" / "rank0").mkdir(parents=True)
    (out / ".partial" / "rank0" / "job1.mp4").write_bytes(b"half a video")
    kept = {p: p.stat().st_mtime_ns for p in out.glob("window/*.mp4")}
    capsys.readouterr()
    code, _ = run_batch(tmp_path, lines)
    assert code == 0
    err = capsys.readouterr().err
    assert "3 videos, 2 already done" in err
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # the two others untouched
    assert (read_video(lost) == before).all()
    assert not (out / ".partial").exists()
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 3


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "a cat", "seeds": 3}', "unknown key 'seeds'"),
        ('{"prompt": "a cat", "seed": -1}', '"seed" must be an integer'),
        ('{"prompt": "a cat", "policy": "rolling"}', "unknown policy 'rolling'"),
        ('{"prompt": "a cat", "frames": 0}', "0 latent frames"),
        ('{"prompt": "a cat", "prompts": ["a dog"]}', 'exactly one of "prompt" or "prompts"'),
        ('{"prompts": ["a", "b"], "switch_frame_indices": [30]}', "but the video ends"),
        ('{"prompt": "a cat"', "must be one JSON object"),
    ],
)
def test_a_bad_item_names_its_line(tmp_path, capsys, line, message):
    code, out = run_batch(tmp_path, ["a fox in snow", line])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "line 2" in err and "Traceback" not in err
    assert not out.exists() or not any(out.rglob("*.mp4"))


def test_an_option_no_swept_policy_takes_is_refused(tmp_path, capsys):
    code, _ = run_batch(tmp_path, ["a fox"], "--policies", "head_forcing", "--window-frames", "9")
    assert code == 2
    assert "--window-frames applies to none of the policies head_forcing" in capsys.readouterr().err
