"""Two ranks against one process on the CPU: head-parallel ms per chunk and K/V bytes per rank,
and ``batch`` throughput (videos per minute) for 1 and 2 ranks.

    python benchmarks/distributed.py [--frames 27] [--timed-chunks 3] [--batch-items 4]
        [--batch-frames 6] [--json results.json]

One thread per process (``OMP_NUM_THREADS=1``), the ``cpu-bench`` preset (random weights,
Wan-1.3B's attention-to-linear cost ratio; attention-bound at a 21-frame window). Head-parallel:
the DiT only (no decoding), ms per chunk averaged over the last ``--timed-chunks`` chunks, when
the window is full; ``window`` and ``head_forcing`` with a map that gives every layer one head of
each type (cpu-bench has 3 heads). ``batch``: ``--batch-items`` prompts of ``--batch-frames``
latent frames, the whole command timed (start-up, model build and encoding included).
On a GPU, ``--device cuda`` times the single-process path only (one card).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from headforcing.cache import make_policy
from headforcing.heads import HeadMap
from headforcing.pipeline import Pipeline

PRESET = "cpu-bench"
PROMPT = "a red fox trots through fresh snow"


def policies() -> dict:
    labels = (("local", "anchor", "memory"), ("memory", "local", "anchor"))
    head_map = HeadMap(PRESET, labels)
    return {
        "window": make_policy("window"),
        "head_forcing": make_policy("head_forcing").with_head_map(head_map),
    }


def time_chunks(pipeline: Pipeline, policy, frames: int, timed: int) -> tuple[float, int]:
    """ms per chunk over the last ``timed`` chunks, and the cache's bytes at the end."""
    cache = pipeline.new_cache(policy)
    stamps = [time.perf_counter()]
    for _ in pipeline.generate_latents(PROMPT, frames, cache, seed=0):
        if pipeline.model.device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
    spans = [b - a for a, b in itertools.pairwise(stamps)][-timed:]
    return 1000 * sum(spans) / len(spans), cache.bytes_held()


def worker(args) -> None:
    """Under torchrun: every rank runs the stream by heads; rank 0 writes the rows."""
    import torch.distributed as dist

    from headforcing.distributed import HeadParallel, join_world

    world = join_world("gloo")
    rows = []
    for policy in policies().values():
        pipeline = Pipeline.with_standins(PRESET)
        pipeline.parallel = HeadParallel(pipeline, world)
        ms, held = time_chunks(pipeline, policy, args.frames, args.timed_chunks)
        per_rank = [None] * world.size
        dist.all_gather_object(per_rank, held)
        rows.append({"policy": policy.describe(), "ms_per_chunk": ms, "kv_bytes": per_rank})
    if world.is_main:
        Path(args.worker_out).write_text(json.dumps(rows))
    world.close()


def torchrun(ranks: int, *argv: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc_per_node={ranks}", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, env=env, check=True, capture_output=True, text=True)


def batch_rate(ranks: int, items: int, frames: int, folder: Path) -> dict:
    prompts = folder / "prompts.txt"
    prompts.write_text("".join(f"prompt number {i}: a fox in snow\n" for i in range(items)))
    out = folder / f"batch-{ranks}"
    argv = ["-m", "headforcing", "batch", str(prompts), "--out-dir", str(out)]
    argv += ["--preset", PRESET, "--frames", str(frames)]
    began = time.perf_counter()
    if ranks == 1:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run([sys.executable, *argv], env=env, check=True, capture_output=True)
    else:
        torchrun(ranks, *argv)
    seconds = time.perf_counter() - began
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    return {
        "ranks": ranks,
        "videos": len(rows),
        "wall_s": seconds,
        "videos_per_minute": 60 * len(rows) / seconds,
        "mean_video_s": sum(row["wall_s"] for row in rows) / len(rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=27, help="latent frames per stream")
    parser.add_argument("--timed-chunks", type=int, default=3)
    parser.add_argument("--batch-items", type=int, default=4)
    parser.add_argument("--batch-frames", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.worker:
        worker(args)
        return

    single = []
    for name, policy in policies().items():
        pipeline = Pipeline.with_standins(PRESET, device=args.device)
        ms, held = time_chunks(pipeline, policy, args.frames, args.timed_chunks)
        single.append({"policy": policy.describe(), "ms_per_chunk": ms, "kv_bytes": [held]})
        print(f"1 process, {name}: {ms:.0f} ms/chunk, K/V {held / 2**20:.1f} MiB", flush=True)
    results = {"single": single, "command": " ".join(sys.argv), "date": time.ctime()}
    if args.device == "cpu":
        with tempfile.TemporaryDirectory() as folder:
            rows_file = Path(folder) / "rows.json"
            torchrun(
                2,
                __file__,
                "--worker",
                "--worker-out",
                str(rows_file),
                "--frames",
                str(args.frames),
                "--timed-chunks",
                str(args.timed_chunks),
            )
            results["heads_2_ranks"] = json.loads(rows_file.read_text())
            results["batch"] = [
                batch_rate(ranks, args.batch_items, args.batch_frames, Path(folder))
                for ranks in (1, 2)
            ]
    print(format_tables(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))


def format_tables(results: dict) -> str:
    lines = [
        "| policy | ranks | ms/chunk | K/V MiB per rank | speed-up |",
        "|---|---|---|---|---|",
    ]
    parallel = {row["policy"]: row for row in results.get("heads_2_ranks", [])}
    for row in results["single"]:
        mib = row["kv_bytes"][0] / 2**20
        lines.append(f"| {row['policy']} | 1 | {row['ms_per_chunk']:.0f} | {mib:.1f} | 1.00 |")
        other = parallel.get(row["policy"])
        if other is not None:
            shares = " / ".join(f"{held / 2**20:.1f}" for held in other["kv_bytes"])
            speed = row["ms_per_chunk"] / other["ms_per_chunk"]
            lines.append(
                f"| {row['policy']} | 2 (heads) | {other['ms_per_chunk']:.0f} | {shares} | "
                f"{speed:.2f} |"
            )
    if "batch" in results:
        lines += ["", "| batch ranks | videos | wall s | videos/min | mean s per video |"]
        lines.append("|---|---|---|---|---|")
        for row in results["batch"]:
            lines.append(
                f"| {row['ranks']} | {row['videos']} | {row['wall_s']:.1f} | "
                f"{row['videos_per_minute']:.1f} | {row['mean_video_s']:.1f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
