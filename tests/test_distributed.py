"""torch.distributed under torchrun, two ranks over gloo on the CPU: ``batch`` makes the videos
``generate`` makes, whoever makes them; head-parallel generation makes the single process's
latents with half the K/V per rank. Each test launches torchrun once or twice (a few seconds)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from headforcing.cli import main
from headforcing.heads import HeadMap
from headforcing.io.video import read_video
from headforcing.model import get_preset
from headforcing.pipeline import Pipeline

from .conftest import random_head_map
from .workers.head_parallel import cases as head_parallel_cases

WORKERS = Path(__file__).parent / "workers"
TINY = ["--preset", "tiny", "--height", "64", "--width", "64"]


def torchrun(*argv: str, ranks: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --standalone`` (a free port of its own) with one thread per rank."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc_per_node={ranks}", *argv]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_batch_on_two_ranks_makes_the_videos_of_generate_and_resumes(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(
        "a red ball bounces\n"
        '{"prompt": "a blue cube spins", "seed": 11}\n'
        "# a comment line\n"
        '{"prompt": "a green cone", "frames": 3}\n'
        "a red ball bounces\n"
    )
    out = tmp_path / "out"
    argv = ["-m", "headforcing", "batch", str(prompts), "--out-dir", str(out), "--frames", "6"]
    first = torchrun(*argv, "--seed", "100", *TINY)
    assert "rank 0:" in first.stderr and "rank 1:" in first.stderr  # both ranks made videos

    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert not list(out.glob("manifest.rank*"))  # merged by rank 0
    expected = [  # (file, seed, latent frames): seeds from the items, never from the ranks
        ("window/a red ball bounces-0.mp4", 100, 6),
        ("window/a blue cube spins-0.mp4", 11, 6),
        ("window/a green cone-0.mp4", 102, 3),
        ("window/a red ball bounces-1.mp4", 103, 6),
    ]
    assert [(row["file"], row["seed"], row["frames"]) for row in rows] == expected
    assert {row["rank"] for row in rows} == {0, 1}
    assert all(row["kv_bytes"] > 0 and row["weights"] == "random-seed0" for row in rows)

    for row in rows:  # the same video from a single-process generate with the item's seed
        single = tmp_path / f"single-{row['seed']}.mp4"
        argv = ["generate", row["prompt"], "--seed", str(row["seed"]), "--frames"]
        assert main([*argv, str(row["frames"]), "--out", str(single), *TINY]) == 0
        assert torch.equal(read_video(out / row["file"]), read_video(single))

    stamps = {path: path.stat().st_mtime_ns for path in out.rglob("*.mp4")}
    argv = ["-m", "headforcing", "batch", str(prompts), "--out-dir", str(out), "--frames", "6"]
    second = torchrun(*argv, "--seed", "100", *TINY)
    assert "4 videos, 4 already done" in second.stderr
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*.mp4")} == stamps


@pytest.fixture(scope="module")
def head_map_file(tmp_path_factory):
    config = get_preset("tiny").model
    head_map = random_head_map(config, seed=1, preset="tiny")
    assert all(set(row) == {"local", "anchor", "memory"} for row in head_map.labels)
    return head_map.save(tmp_path_factory.mktemp("map") / "head_map.json")


def test_head_parallel_on_two_ranks_equals_one_process(tmp_path, head_map_file):
    frames = 12
    torchrun(str(WORKERS / "head_parallel.py"), str(tmp_path), str(head_map_file), str(frames))
    references = {}
    for name, (policy, prompt, switch) in head_parallel_cases(HeadMap.load(head_map_file)).items():
        pipeline = Pipeline.with_standins("tiny", height=64, width=64)
        cache = pipeline.new_cache(policy)
        chunks = pipeline.generate_latents(prompt, frames, cache, seed=3, switch=switch)
        reference = references[name] = torch.cat([chunk.latents for chunk in chunks], dim=2)
        ranks = [torch.load(tmp_path / f"{name}.rank{rank}.pt") for rank in range(2)]
        for rank in ranks:
            assert rank["latents"].shape == reference.shape == (1, 16, frames, 8, 8)
            torch.testing.assert_close(rank["latents"], reference, rtol=0, atol=1e-5)
        shares = [rank["kv_bytes"] / cache.bytes_held() for rank in ranks]
        # each rank holds its heads only: half of the K/V, up to the granularity of 4 heads
        # of unequal size (head_forcing's best split of this map is 0.56 / 0.44)
        assert all(0.4 <= share <= 0.6 for share in shares), (name, shares)
        assert sum(shares) == pytest.approx(1, abs=0.05)
        if name == "window":  # equal heads: half each, but for the token ids every rank keeps
            assert shares == pytest.approx([0.5, 0.5], abs=0.01)
    # the switch case did switch (and re-cache) from latent frame 6 on
    same = references["switch"][:, :, :6] == references["head_forcing"][:, :, :6]
    assert same.all() and not torch.allclose(references["switch"], references["head_forcing"])


def test_generate_by_heads_writes_the_video_on_rank_zero(tmp_path, head_map_file):
    out = tmp_path / "heads.mp4"
    argv = ["-m", "headforcing", "generate", "a red ball", "--parallel", "heads", "--frames", "6"]
    argv += ["--policy", "head_forcing", "--head-map", str(head_map_file), "--out", str(out)]
    result = torchrun(*argv, *TINY)
    assert "heads over 2 ranks" in result.stderr and "largest gap in one layer" in result.stderr
    assert "rank 1: K/V held" in result.stderr
    single = tmp_path / "single.mp4"
    argv = ["generate", "a red ball", "--frames", "6", "--policy", "head_forcing"]
    assert main([*argv, "--head-map", str(head_map_file), "--out", str(single), *TINY]) == 0
    difference = (read_video(out).float() - read_video(single).float()).abs()
    assert difference.mean() < 0.05  # latents agree to 1e-6; H.264 may round a pixel apart


def test_parallel_heads_without_torchrun_says_how_to_launch(tmp_path, capsys):
    argv = ["generate", "a cat", "--parallel", "heads", "--out", str(tmp_path / "v.mp4"), *TINY]
    assert main(argv) == 2
    assert "torchrun --nproc_per_node 2 -m headforcing generate" in capsys.readouterr().err
