"""Every command of README.md, run as a new user would, only shorter.

Each ```bash block of the README is read, its lines joined (``\\`` continuations) and split at
``&&``; each ``headforcing ...`` command runs through :func:`headforcing.cli.main` in a fresh
folder per block (the commands of one block share it: ``eval`` reads what ``generate`` wrote),
holding a copy of ``examples/``. Lengths are cut so the whole file runs in well under a minute on
a CPU (:func:`shortened`); nothing else of a command changes. Commands that need real weights
(``--model``) or a GPU (``--device cuda``) must stop at once with the documented one-line error
and exit status 2. ``pip install`` and the test suite itself are not run here.
"""

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from headforcing.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SHORT_FRAMES = 6  # two toy chunks
SCHEDULE_FRAMES = 27  # examples/story.jsonl's last prompt starts at latent frame 24
DEMO_FRAMES = 42  # the demo's least: two 21-frame segments


def bash_blocks(text: str) -> list[list[str]]:
    """The commands of every ```bash block: continuations joined, comments dropped."""
    blocks = []
    for body in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        joined = body.replace("\\\n", " ")
        lines = [line.strip() for line in joined.splitlines()]
        commands = []
        for line in lines:
            if line and not line.startswith("#"):
                commands += [part.strip() for part in line.split("&&")]
        blocks.append(commands)
    return blocks


def _drop_option(argv: list[str], option: str, values: int = 1) -> list[str]:
    if option not in argv:
        return argv
    index = argv.index(option)
    return argv[:index] + argv[index + 1 + values :]


def _drop_multi(argv: list[str], option: str) -> list[str]:
    """Drop ``option`` and every value after it (nargs='+')."""
    if option not in argv:
        return argv
    index = argv.index(option)
    end = index + 1
    while end < len(argv) and not argv[end].startswith("--"):
        end += 1
    return argv[:index] + argv[end:]


def shortened(argv: list[str]) -> list[str]:
    """``argv`` (without ``headforcing``) with lengths cut for the test; the rest untouched."""
    command = argv[0]
    if command in ("generate", "interactive"):
        argv = _drop_option(_drop_option(argv, "--seconds"), "--frames")
        frames = SCHEDULE_FRAMES if "--prompts" in argv else SHORT_FRAMES
        argv += ["--frames", str(frames)]
    if command == "interactive":
        argv += ["--exit-when-done", "--no-pace", "--port", "0"]
    if command == "demo":
        argv = [*_drop_option(argv, "--frames"), "--frames", str(DEMO_FRAMES)]
    if command == "profile":
        argv += ["--frames", str(SHORT_FRAMES), "--chunks", "1"]
    if command == "bench":
        argv = _drop_multi(_drop_option(argv, "--chunks"), "--seconds")
        argv += ["--seconds", "1", "--chunks", "1"]
        if "cpu-bench" in argv:  # the same code on the tiny model: cpu-bench times minutes
            argv[argv.index("cpu-bench")] = "tiny"
    if command == "recall":
        argv = _drop_multi(_drop_option(argv, "--frames"), "--chunks")
        argv += ["--frames", str(SHORT_FRAMES), "--chunks", "1"]
    return argv


def expected_failure(argv: list[str]) -> str | None:
    """The documented one-line error of a command this machine cannot run, else None."""
    if "--model" in argv:
        return str(argv[argv.index("--checkpoint") + 1])  # the missing file is named
    if "--device" in argv and argv[argv.index("--device") + 1].startswith("cuda"):
        if torch.cuda.is_available():
            pytest.skip("a CUDA bench of Wan2.1's shape takes minutes (random weights)")
        return "no CUDA device is available"
    return None


def test_readme_has_the_commands_it_promises():
    commands = [c for block in bash_blocks(README.read_text()) for c in block]
    for expected in ("headforcing demo", "headforcing eval", "headforcing interactive"):
        assert any(c.startswith(expected) for c in commands), expected
    for example in re.findall(r"examples/[\w.]+", README.read_text()):
        assert (ROOT / example).is_file(), example


def test_shortened_keeps_what_a_command_says():
    argv = shlex.split('generate "a red circle" --seconds 60 --policy sink --out a.mp4')
    assert shortened(argv) == [
        "generate",
        "a red circle",
        "--policy",
        "sink",
        "--out",
        "a.mp4",
        "--frames",
        str(SHORT_FRAMES),
    ]


BLOCKS = bash_blocks(README.read_text())


def run_block(commands: list[str], folder: Path, monkeypatch, capsys) -> int:
    """Run ``commands`` (shortened) in ``folder``; fails the test at the first command that does
    not end as documented. Returns how many ran."""
    shutil.copytree(ROOT / "examples", folder / "examples")
    monkeypatch.chdir(folder)
    ran = 0
    for command in commands:
        argv = shlex.split(command)
        if argv[0] == "pip" or argv[:3] == ["python", "-m", "pytest"]:
            continue  # installing is the test environment's job; the suite runs itself
        if argv[0] in ("printf", "torchrun"):  # a shell line; a launch of several processes
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            done = subprocess.run(
                command,
                shell=True,
                cwd=folder,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert done.returncode == 0, f"{command}\n-> exit {done.returncode}\n{done.stderr}"
            ran += 1
            continue
        assert argv[0] == "headforcing", f"README command of an unknown program: {command}"
        argv = shortened(argv[1:])
        failure = expected_failure(argv)
        capsys.readouterr()
        status = main(argv)
        err = capsys.readouterr().err
        if failure is None:
            assert status == 0, f"{command}\n-> exit {status}\n{err}"
        else:
            lines = [line for line in err.splitlines() if line.strip()]
            assert status == 2, f"{command}\n-> exit {status}, expected 2\n{err}"
            assert len(lines) == 1 and failure in lines[0], f"{command}\n{err}"
        ran += 1
    return ran


@pytest.mark.parametrize("block", range(len(BLOCKS)), ids=lambda i: f"block{i}")
def test_every_readme_command_runs(block, tmp_path, monkeypatch, capsys):
    if run_block(BLOCKS[block], tmp_path, monkeypatch, capsys) == 0:
        pytest.skip("this block only installs and runs the test suite")


def test_a_failing_command_fails_the_test(tmp_path, monkeypatch, capsys):
    bad = ['headforcing generate "a red fox trots through fresh snow" --out fox.mp4']
    with pytest.raises(AssertionError, match="exit 2"):
        run_block(bad, tmp_path, monkeypatch, capsys)
