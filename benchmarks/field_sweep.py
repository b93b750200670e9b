"""Every policy on the same toy-world prompts and seeds: quality and speed in one table.

    python benchmarks/field_sweep.py prompts sweep/prompts.txt          # 8 scenes x 2 seeds
    torchrun --standalone --nproc_per_node 2 -m headforcing batch sweep/prompts.txt \\
        --out-dir sweep --frames 210 --policies full window sink head_forcing deep_forcing \\
        infinity_rope dummy_forcing pyramid_forcing --threads 1
    headforcing eval sweep/*/*.mp4 --json sweep/eval.json
    OMP_NUM_THREADS=1 headforcing bench --preset cpu-bench --seconds 60 --json sweep/bench.json \\
        --policies window sink head_forcing deep_forcing infinity_rope dummy_forcing pyramid_forcing
    python benchmarks/field_sweep.py table sweep/eval.json sweep/bench.json

The prompts are random toy scenes drawn with ``--rng 790``: a set kept apart from the scenes the
policies' parameters were looked at on (the variants benchmark draws with 780, the toy model's
selection sets with 778/779/781). Quality: the toy-world count and colour errors against ground
truth, averaged over every segment after the first (the training horizon is one segment), per
video; the mean over videos with a bootstrap 95 % interval, and every policy's paired difference
from ``head_forcing`` (same prompt and seed), "no measurable difference" where the interval
holds 0. Speed: the ``bench`` rows of the same policies on the ``cpu-bench`` preset.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from headforcing.eval.stats import bootstrap_mean, paired_difference

METRICS = ("truth_count_error", "truth_colour_error")


def write_prompts(path: Path, count: int, seeds: list[int], rng: int) -> None:
    from headforcing.toyworld.world import random_scene

    draw = np.random.default_rng(rng)
    prompts = [random_scene(draw).prompt() for _ in range(count)]
    lines = [json.dumps({"prompt": p, "seed": s}) for p in prompts for s in seeds]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print(f"{len(lines)} items ({count} scenes x seeds {seeds}, rng {rng}) in {path}")


def per_video(eval_path: Path) -> dict[str, dict[tuple, dict[str, float]]]:
    """policy -> (prompt, seed) -> metric -> mean over the segments after the first."""
    out: dict[str, dict[tuple, dict[str, float]]] = {}
    for video in json.loads(eval_path.read_text())["videos"]:
        meta, truth = video["metadata"], video["truth"]
        if not truth:
            continue
        later = truth[1:] or truth
        values = {
            name: float(np.mean([segment[name.removeprefix("truth_")] for segment in later]))
            for name in METRICS
        }
        key = (meta.get("prompt"), meta["seed"])
        out.setdefault(meta["policy"], {})[key] = values
    return out


def table(eval_path: Path, bench_path: Path | None, baseline: str = "head_forcing") -> str:
    videos = per_video(eval_path)
    speed = {}
    if bench_path is not None:
        for row in json.loads(bench_path.read_text())["rows"]:
            speed[row["policy"].split("(")[0]] = row
    base = next((name for name in videos if name.split("(")[0] == baseline), None)
    lines = [
        "| policy | videos | count error | colour error | count vs head_forcing | "
        "colour vs head_forcing | ms/chunk | K/V MiB | host reads/chunk |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in sorted(videos.items()):
        keys = sorted(rows, key=str)
        cells = [name, str(len(keys))]
        for metric in METRICS:
            cells.append(str(bootstrap_mean([rows[k][metric] for k in keys])))
        for metric in METRICS:
            if base is None or name == base:
                cells.append("-")
                continue
            shared = [k for k in keys if k in videos[base]]
            difference = paired_difference(
                [rows[k][metric] for k in shared], [videos[base][k][metric] for k in shared]
            )
            verdict = " (no measurable difference)" if difference.holds_zero() else ""
            cells.append(f"{difference}{verdict}")
        row = speed.get(name.split("(")[0])
        if row:
            cells += [f"{row['ms_per_chunk']:.0f}", f"{row['kv_bytes'] / 2**20:.1f}"]
            cells.append(str(row["syncs_per_chunk"]))
        else:
            cells += ["-", "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    prompts = commands.add_parser("prompts")
    prompts.add_argument("out", type=Path)
    prompts.add_argument("--scenes", type=int, default=8)
    prompts.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    prompts.add_argument("--rng", type=int, default=790)
    summary = commands.add_parser("table")
    summary.add_argument("eval_json", type=Path)
    summary.add_argument("bench_json", type=Path, nargs="?")
    args = parser.parse_args()
    if args.command == "prompts":
        write_prompts(args.out, args.scenes, args.seeds, args.rng)
    else:
        print(table(args.eval_json, args.bench_json))


if __name__ == "__main__":
    main()
