"""Text is checked where it enters: a lone surrogate or a control character in a command-line
prompt, a schedule file (JSONL or one prompt per line), a ``batch`` item or the live page's
``POST /prompt`` is refused at once with one line (or a 400) naming the source and the reason,
before any model loads; a refused POST leaves the running prompt in effect. A hypothesis test
drives random text through the check into the text encoders."""

import json
import os
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import headforcing.cli.options as cli_options
import headforcing.loading
from headforcing.cache import make_policy
from headforcing.cli import main
from headforcing.interactive import LiveSession, serve
from headforcing.io.decoders import pixel_frames
from headforcing.io.text import MAX_PROMPT_CHARS, HashedTextEncoder, check_prompt
from headforcing.pipeline import Pipeline
from headforcing.prompts import check_loaded_prompts

from .test_interactive import post_prompt, state_of, wait_until

TOY_PROMPT = "a red circle bounces over a green striped background"
TINY = ["--preset", "tiny", "--height", "64", "--width", "64", "--frames", "6", "--scale", "1"]
SURROGATE = "a red \ud800 ball"  # what JSON's "\ud800" and undecodable argv bytes become
CONTROL = "a red \x1b[31m ball"  # an escape sequence: invisible, and it would colour a terminal
REASONS = {
    SURROGATE: "the prompt is not valid UTF-8 text (a lone surrogate, U+D800, at character 7",
    CONTROL: "the prompt holds the control character U+001B at character 7",
}


def no_loading(monkeypatch):
    """Fail the test if a command gets as far as loading a model."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the text was checked")

    monkeypatch.setattr(cli_options, "build_pipeline", refuse)
    monkeypatch.setattr(headforcing.loading, "load_pipeline", refuse)


def refused(argv, capsys) -> str:
    """Run ``argv``: exit status 2 and one line on stderr, returned."""
    status = main(argv)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert status == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("text", [SURROGATE, CONTROL], ids=["surrogate", "control"])
@pytest.mark.parametrize(
    "argv",
    [
        ["generate", "{text}", *TINY, "--out", "{d}/v.mp4"],
        ["interactive", "{text}", *TINY, "--out", "{d}/v.mp4", "--port", "0"],
        ["profile", "{text}", "--preset", "tiny", "--out", "{d}/map.json"],
        ["recall", "{text}", "--preset", "tiny", "--out", "{d}/recall.json"],
        ["demo", "--prompt", "{text}", "--out-dir", "{d}/demo"],
    ],
    ids=lambda argv: argv[0],
)
def test_a_prompt_argument_is_refused_in_one_line(argv, text, tmp_path, capsys, monkeypatch):
    no_loading(monkeypatch)
    argv = [arg.format(text=text, d=tmp_path) for arg in argv]
    line = refused(argv, capsys)
    where = "--prompt" if argv[0] == "demo" else "PROMPT"
    assert f"error: {where}: {REASONS[text]}" in line
    assert os.listdir(tmp_path) == []


def write_schedule(path, prompt: str, json_lines: bool = True):
    if json_lines:  # a JSON escape: the file itself is valid UTF-8
        lines = [
            '{"seconds": 0, "prompt": "a red ball"}',
            json.dumps({"frame": 3, "prompt": prompt}),
        ]
    else:
        lines = ["a red ball", prompt]
    path.write_text("# two prompts\n" + "\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.parametrize("text", [SURROGATE, CONTROL], ids=["surrogate", "control"])
def test_a_jsonl_schedule_names_its_file_and_line(text, tmp_path, capsys, monkeypatch):
    no_loading(monkeypatch)
    schedule = tmp_path / "story.jsonl"
    write_schedule(schedule, text)
    argv = ["generate", "--prompts", str(schedule), *TINY, "--out", str(tmp_path / "v.mp4")]
    assert f"error: {schedule} line 3: {REASONS[text]}" in refused(argv, capsys)
    assert not (tmp_path / "v.mp4").exists()


def test_a_longlive_schedule_names_its_file_and_line(tmp_path, capsys, monkeypatch):
    no_loading(monkeypatch)
    schedule = tmp_path / "longlive.jsonl"
    line = {"prompts": ["a red ball", SURROGATE], "switch_frame_indices": [3]}
    schedule.write_text(json.dumps(line) + "\n")
    argv = ["generate", "--prompts", str(schedule), *TINY, "--out", str(tmp_path / "v.mp4")]
    assert f"error: {schedule} line 1: {REASONS[SURROGATE]}" in refused(argv, capsys)


def test_a_plain_prompt_file_names_its_line(tmp_path, capsys, monkeypatch):
    no_loading(monkeypatch)
    prompts = tmp_path / "calibration.txt"
    write_schedule(prompts, CONTROL, json_lines=False)
    argv = ["profile", "--prompts", str(prompts), "--preset", "tiny"]
    argv += ["--out", str(tmp_path / "map.json")]
    assert f"error: {prompts} line 3: {REASONS[CONTROL]}" in refused(argv, capsys)


@pytest.mark.parametrize(
    ("line", "text"),
    [
        (lambda text: text, CONTROL),  # a plain line (a surrogate cannot be in a UTF-8 file)
        (lambda text: json.dumps({"prompt": text, "seed": 3}), SURROGATE),
        (lambda text: json.dumps({"prompt": text}), CONTROL),
        (
            lambda text: json.dumps({"prompts": ["a red ball", text], "switch_frame_indices": [3]}),
            SURROGATE,
        ),
    ],
    ids=["plain line", "json surrogate", "json control", "json schedule"],
)
def test_a_batch_item_names_its_line(line, text, tmp_path, capsys, monkeypatch):
    no_loading(monkeypatch)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"a red fox in snow\n{line(text)}\n", encoding="utf-8")
    out_dir = tmp_path / "runs"
    argv = ["batch", str(prompts), "--out-dir", str(out_dir), *TINY[:-2]]
    assert f"error: {prompts} line 2: {REASONS[text]}" in refused(argv, capsys)
    assert not out_dir.exists()


def test_a_refused_post_keeps_the_running_prompt_to_the_planned_length(tmp_path):
    pipeline = Pipeline.with_standins("tiny", height=32, width=32)
    out = tmp_path / "live.mp4"
    session = LiveSession(pipeline, make_policy("window"), "a red ball", 15, out, pace=True)
    server = serve(session, port=0)
    try:
        session.start()
        wait_until(lambda: state_of(server.url)["chunks"] >= 1, what="the first chunk")
        for body, reason in (
            (b'{"prompt": "a \\ud800 b"}', "not valid UTF-8 text (a lone surrogate, U+D800"),
            (b'{"prompt": "a \\u0007 b"}', "the control character U+0007 at character 3"),
            (json.dumps({"prompt": "x" * (MAX_PROMPT_CHARS + 1)}).encode(), "characters; at most"),
        ):
            status, reply = post_prompt(server.url, body)
            assert status == 400 and reason in reply["error"], reply
            assert "\n" not in reply["error"]
            assert state_of(server.url)["queued"] is None
        session.join(60)
        state = state_of(server.url)
    finally:
        session.stop()
        session.join(30)
        server.shutdown()
        server.server_close()
    assert state["done"] and state["error"] is None, state
    assert state["frames_written"] == pixel_frames(15) and state["latent_frames"] == 15
    assert state["prompt"] == "a red ball" and state["switches"] == []


def test_a_prompt_longer_than_the_encoder_reads_is_refused_before_the_first_chunk(tmp_path, capsys):
    # tokens are counted by the loaded encoder (umT5 needs its tokenizer), before any chunk
    words = " ".join(["red"] * 17)  # the tiny preset's stand-in encoder reads 16 tokens
    out = tmp_path / "v.mp4"
    assert main(["generate", words, *TINY, "--out", str(out)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "loading the model" and len(lines) == 2
    assert "PROMPT: the prompt is 17 tokens long; the text encoder reads 16" in lines[1]
    assert not out.exists()


# ---------------------------------------------------------------- random text, every encoder

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
any_text = st.text(st.characters(exclude_categories=()), max_size=40)  # surrogates included
words = st.lists(st.sampled_from(["a", "red", "circle", "bounces", "\x00", "\u200b", " "]))
prompts = any_text | words.map(" ".join) | st.sampled_from([TOY_PROMPT, "", " \t\n", "x" * 5000])


def one_line_refusal(error: ValueError, where: str) -> None:
    message = str(error)
    assert message.startswith(f"{where}: ") and "\n" not in message and "\r" not in message


@pytest.fixture(scope="module")
def toy_pipeline():
    from headforcing.toyworld.pretrained import load_toy_pipeline

    return load_toy_pipeline()


@pytest.fixture(scope="module")
def umt5_encoder(tmp_path_factory):
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    from headforcing.io.umt5 import UMT5TextEncoder

    from . import test_umt5

    folder = tmp_path_factory.mktemp("umt5")
    test_umt5._save_tokenizer(folder / "tokenizer")
    torch.save(test_umt5._wan_state_dict(test_umt5.TINY), folder / "umt5.pth")
    return UMT5TextEncoder.from_wan_files(
        folder / "umt5.pth", folder / "tokenizer", dtype=torch.float32, text_len=8
    )


@SETTINGS
@given(text=prompts)
def test_any_text_reaches_the_stand_in_encoder_or_is_refused_in_one_line(text):
    encoder = HashedTextEncoder(text_len=16, text_dim=8)
    try:
        check_prompt(text, "PROMPT", encoder)
    except ValueError as error:
        one_line_refusal(error, "PROMPT")
        return
    assert encoder.encode([text]).shape == (1, 16, 8)


@SETTINGS
@given(text=prompts)
def test_any_text_reaches_the_toy_model_or_is_refused_in_one_line(text, toy_pipeline):
    try:  # what generate does with PROMPT: before loading, then with the loaded model
        check_prompt(text, "PROMPT")
        check_loaded_prompts(toy_pipeline, text, "PROMPT")
    except ValueError as error:
        assert "\n" not in str(error) and "\r" not in str(error)
        return
    assert toy_pipeline.text_encoder.encode([text]).shape[0] == 1


@SETTINGS
@given(text=prompts)
def test_any_text_reaches_umt5_or_is_refused_in_one_line(text, umt5_encoder):
    try:
        check_prompt(text, "the schedule line 2", umt5_encoder)
    except ValueError as error:
        one_line_refusal(error, "the schedule line 2")
        return
    assert umt5_encoder.encode([text]).shape[:2] == (1, 8)


def test_the_check_refuses_what_the_encoders_crash_on():
    # the crash the issue found: the stand-in encoder hashes UTF-8 bytes, the chunk loop died
    with pytest.raises(UnicodeEncodeError):
        HashedTextEncoder(16, 8).encode([SURROGATE])
    for text, reason in REASONS.items():
        with pytest.raises(ValueError, match=f"^PROMPT: {re.escape(reason)}"):
            check_prompt(text, "PROMPT")
    assert check_prompt("a fox\tin\nsnow", "PROMPT") == "a fox\tin\nsnow"  # whitespace passes
