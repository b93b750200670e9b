"""The public API: docs/api.md's examples run as written, a policy written outside the package
runs through the API and the CLI and matches dense attention, and the API makes the CLI's
frames."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

import headforcing as hf
from headforcing.testing import AttentionRecorder

from .test_readme import shortened

ROOT = Path(__file__).resolve().parents[1]
API = ROOT / "docs" / "api.md"
EXAMPLE = ROOT / "examples" / "every_other_frame.py"
PROMPT = "a red circle bounces over a green striped background"


def decoded(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def cli(*argv, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "headforcing", *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_every_python_example_of_docs_api_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    examples = blocks(API.read_text(), "python")
    assert len(examples) >= 8
    for number, code in enumerate(examples):
        exec(compile(code, f"docs/api.md python block {number + 1}", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "keep_every_other(" in printed or "keep_every_other" in printed
    assert (tmp_path / "window.mp4").is_file()


def test_the_readme_python_section_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (example,) = blocks((ROOT / "README.md").read_text(), "python")
    exec(compile(example, "README.md python block", "exec"), {})
    assert "head_forcing(" in capsys.readouterr().out
    assert len(decoded(tmp_path / "circle.mp4")) == 32  # 4 s of the toy model's 8 fps


def test_every_command_of_docs_api_runs(tmp_path):
    """The outside policy through generate, bench --preset tiny and recall (shortened as the
    README's commands are)."""
    commands = [
        shlex.split(block.replace("\\\n", " "))
        for text in blocks(API.read_text(), "bash")
        for block in re.split(r"\n(?=headforcing )", text.strip())
    ]
    assert [argv[1] for argv in commands] == ["generate", "bench", "recall"]
    for argv in commands:
        argv = [a.replace("examples/", f"{ROOT}/examples/") for a in shortened(argv[1:])]
        result = cli(*argv, cwd=tmp_path)  # the files they write go there
        assert result.returncode == 0, (argv, result.stderr[-2000:])
        assert "every_other_frame" in result.stdout + result.stderr, argv
    assert (tmp_path / "every_other.mp4").is_file() and (tmp_path / "recall.json").is_file()


def test_the_outside_policy_matches_dense_attention():
    policy_cls = hf.policy_class(f"{EXAMPLE}:EveryOtherFrame")
    assert hf.policy_class("every_other_frame") is policy_cls  # registered by its name
    policy = policy_cls(memory_frames=3, recent_frames=3)
    checked = hf.check_policy(policy, frames=36)
    assert checked == 12 * 5 * 2  # chunks x passes x layers, one group each


def test_the_dense_check_fails_when_a_group_reports_other_positions(monkeypatch):
    """The helper users test with can fail: shift one reported position and it must."""
    attend = AttentionRecorder.attend

    def shifted(self, layer, q, k, v, commit):
        out = attend(self, layer, q, k, v, commit)
        heads, ids, context, chunk = self.log[-1]["reports"][0]
        if ids.numel():
            self.log[-1]["reports"][0] = (heads, ids, context + 1, chunk)
        return out

    policy = hf.Sink(window_frames=9, sink_frames=3, positions="relative")
    monkeypatch.setattr(AttentionRecorder, "attend", shifted)
    with pytest.raises(AssertionError, match="against dense attention"):
        hf.check_policy(policy, frames=18)


def test_bad_policy_references_are_one_line(tmp_path):
    (tmp_path / "broken.py").write_text("class NotAPolicy:\n    pass\n")
    cases = [
        (f"{tmp_path}/missing.py:Policy", "no file"),
        (f"{tmp_path}/broken.py:Nothing", "has no Nothing"),
        (f"{tmp_path}/broken.py:NotAPolicy", "is not a headforcing.CachePolicy subclass"),
        ("no_such_module_x:Policy", "cannot import no_such_module_x"),
        ("no_such_policy", "unknown policy 'no_such_policy'"),
    ]
    for reference, message in cases:
        result = cli(
            "generate",
            PROMPT,
            "--frames",
            "3",
            "--policy",
            reference,
            "--out",
            str(tmp_path / "x.mp4"),
        )
        assert result.returncode == 2, (reference, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (reference, result.stderr)
        assert not (tmp_path / "x.mp4").exists()


def test_same_seed_same_frames_through_the_api_and_the_cli(tmp_path):
    out = tmp_path / "cli.mp4"
    result = cli(
        "generate",
        PROMPT,
        "--frames",
        "12",
        "--policy",
        "sink",
        "--seed",
        "3",
        "--scale",
        "1",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    written = decoded(out)
    with av.open(str(out)) as container:
        record = json.loads(container.metadata["comment"])
    pipeline = hf.Pipeline.toy()
    ours = pipeline.generate(PROMPT, latent_frames=12, policy=hf.Sink(positions="relative"), seed=3)
    other = pipeline.generate(
        PROMPT, latent_frames=12, policy=hf.Sink(positions="relative"), seed=4
    )
    assert written.shape == tuple(ours.frames.shape)
    assert {key: record[key] for key in ours.record} == ours.record
    # written by the library's writer chunk by chunk as the CLI writes: the same pixels
    # (H.264 changes the frames; it changes the same frames the same way)
    ours.save(tmp_path / "api.mp4")
    other.save(tmp_path / "other.mp4")
    assert np.array_equal(decoded(tmp_path / "api.mp4"), written)
    assert not np.array_equal(decoded(tmp_path / "other.mp4"), written)  # the check can fail


def test_the_api_names_load_lazily():
    code = "import sys, headforcing; print('torch' in sys.modules, len(headforcing.__all__))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    loaded, names = result.stdout.split()
    assert loaded == "False" and int(names) > 30
    assert set(hf.__all__) <= set(dir(hf))
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        hf.NoSuchThing  # noqa: B018
    assert isinstance(hf.Window(21), hf.CachePolicy) and hf.Window(21).window_frames == 21
