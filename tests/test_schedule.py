"""Prompt schedule files: both formats, rounding to chunk boundaries, one error per problem."""

import json
import re

import pytest

from headforcing.cli import main
from headforcing.schedule import FrameClock, PromptSchedule, PromptSegment, load_schedule

CLOCK = FrameClock(fps=16, temporal_stride=4, chunk_frames=3)


def write(tmp_path, *lines, name="schedule.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_our_format_in_seconds_and_frames(tmp_path):
    path = write(
        tmp_path,
        "# a fox story",
        {"seconds": 0, "prompt": "a red fox in snow"},
        "",
        {"seconds": 0.75, "prompt": "the fox looks up"},  # pixel 12 = latent frame 3: a boundary
        {"frame": 13, "prompt": "the fox sleeps"},  # inside chunk 12..14: rounded up to 15
    )
    schedule = load_schedule(path, CLOCK)
    assert [(s.start, s.prompt, s.line) for s in schedule.segments] == [
        (0, "a red fox in snow", 2),
        (3, "the fox looks up", 4),
        (15, "the fox sleeps", 5),
    ]
    assert len(schedule.notes) == 1 and "line 5" in schedule.notes[0]
    assert "latent frame 15" in schedule.notes[0]
    assert [schedule.prompt_at(f) for f in (0, 2, 3, 14, 15, 99)] == [
        "a red fox in snow",
        "a red fox in snow",
        "the fox looks up",
        "the fox looks up",
        "the fox sleeps",
        "the fox sleeps",
    ]


@pytest.mark.parametrize(
    ("seconds", "frame"),
    [(0.0625, 3), (0.25, 3), (0.3125, 3), (1.0, 6), (10.0, 42), (60.0, 240)],
)
def test_seconds_round_up_to_the_next_chunk(seconds, frame):
    assert CLOCK.align(CLOCK.seconds_to_frame(seconds)) == frame


def test_longlive_format(tmp_path):
    line = {"prompts": ["a fox", "the fox looks up", "the fox sleeps"]}
    schedule = load_schedule(write(tmp_path, line), CLOCK, switch_frames=[40, 81])
    assert [s.start for s in schedule.segments] == [0, 42, 81]  # 40 lies inside chunk 39..41
    assert len(schedule.notes) == 1 and "latent frame 42" in schedule.notes[0]
    inline = {**line, "switch_frame_indices": "39, 81"}  # LongLive's config writes a string
    assert load_schedule(write(tmp_path, inline), CLOCK).switch_frames() == [39, 81]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            ['{"seconds": 0, "prompt": "a"', '{"seconds": 1, "prompt": "b"}'],
            "line 1: not valid JSON",
        ),
        ([{"seconds": 0, "prompt": "a"}, "[1, 2]"], "line 2: expected a JSON object"),
        (
            [{"seconds": 0, "prompt": "a"}, {"seconds": 1, "prompt": "  "}],
            "line 2: the prompt is empty",
        ),
        (
            [
                {"seconds": 0, "prompt": "a"},
                {"seconds": 4, "prompt": "b"},
                {"seconds": 2, "prompt": "c"},
            ],
            "line 3: starts at latent frame 9",
        ),
        (
            [
                {"seconds": 0, "prompt": "a"},
                {"frame": 4, "prompt": "b"},
                {"frame": 5, "prompt": "c"},
            ],
            "line 3: starts at latent frame 6 (asked: latent frame 5), not after line 2",
        ),
        ([{"seconds": 1, "prompt": "a"}], "line 1: the first prompt starts at 1 s"),
        ([{"seconds": 0, "prompt": "a", "sconds": 3}], "line 1: unknown key 'sconds'"),
        ([{"seconds": 0, "frame": 0, "prompt": "a"}], 'line 1: give exactly one of "seconds"'),
        ([{"prompt": "a"}], 'line 1: give exactly one of "seconds" or "frame"'),
        ([{"seconds": -1, "prompt": "a"}], 'line 1: "seconds" must be a number >= 0'),
        ([{"frame": 1.5, "prompt": "a"}], 'line 1: "frame" must be an integer >= 0'),
        ([{"seconds": 0, "prompt": 3}], 'line 1: "prompt" must be a string'),
        (["# only a comment", ""], "the schedule has no prompt"),
        ([{"prompts": ["a", "b"]}], "line 1: 2 prompts need 1 switch frame indices, got 0"),
        ([{"prompts": ["a", "b"], "switch_frame_indices": [3]}, {"prompts": ["c"]}], "line 2"),
        ([{"prompts": []}], 'line 1: "prompts" is empty'),
    ],
)
def test_bad_schedules_name_the_line(tmp_path, lines, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_schedule(write(tmp_path, *lines), CLOCK)


def test_a_start_past_the_end_is_refused(tmp_path):
    path = write(tmp_path, {"seconds": 0, "prompt": "a"}, {"seconds": 6, "prompt": "b"})
    schedule = load_schedule(path, CLOCK)
    schedule.check_length(25)
    with pytest.raises(ValueError, match=r"line 2: starts at latent frame 24 .* ends at latent"):
        schedule.check_length(24)


def test_schedule_invariants_without_a_file():
    with pytest.raises(ValueError, match="no prompt"):
        PromptSchedule(())
    one = PromptSchedule.single("a cat")
    assert one.prompt_at(10**6) == "a cat" and one.switch_frames() == []
    with pytest.raises(ValueError, match="not after"):
        PromptSchedule((PromptSegment(0, "a"), PromptSegment(0, "b")))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "give a PROMPT or --prompts FILE (a prompt schedule), one of them"),
        (["a prompt", "--prompts", "{path}"], "not both"),
        (["--prompts", "{path}", "--seconds", "2"], "line 2: starts at latent frame 12"),
        (["--prompts", "{missing}"], "nope.jsonl: cannot read it (No such file"),
        (["a prompt", "--switch-frames", "40"], "--switch-frames goes with --prompts"),
        (["--prompts", "{path}", "--switch-frames", "4x"], "give latent frames like 40,80"),
        (["a prompt", "--switch", "purge"], None),
    ],
)
def test_cli_errors(tmp_path, capsys, argv, message):
    path = write(tmp_path, {"seconds": 0, "prompt": "a"}, {"seconds": 3, "prompt": "b"})
    argv = [a.format(path=path, missing=tmp_path / "nope.jsonl") for a in argv]
    if message is None:  # argparse refuses an unknown choice itself
        with pytest.raises(SystemExit):
            main(["generate", *argv])
        assert "invalid choice: 'purge'" in capsys.readouterr().err
        return
    # the tiny preset's clock: 16 fps, 4 frames per latent frame (3 s -> latent frame 12)
    assert main(["generate", *argv, "--preset", "tiny", "--out", str(tmp_path / "v.mp4")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_generate_with_a_schedule_writes_the_whole_video(tmp_path, capsys):
    path = write(
        tmp_path, {"seconds": 0, "prompt": "a red ball"}, {"seconds": 1, "prompt": "a cube"}
    )
    out = tmp_path / "v.mp4"
    argv = ["generate", "--prompts", str(path), "--frames", "12", "--out", str(out)]
    small = ["--preset", "tiny", "--height", "64", "--width", "64"]
    assert main([*argv, *small, "--switch", "recache"]) == 0
    err = capsys.readouterr().err
    assert "next chunk boundary, latent frame 6" in err
    assert "latent frame 6: 'a cube'" in err

    from headforcing.io.video import read_video

    assert read_video(out).shape == (45, 256, 256, 3)  # 64 px frames shown at 4x (--scale auto)
