"""Long-horizon quality of every cache policy on the toy world, against ground truth.

Profiles the toy model's heads (map + picture), then for every policy generates videos to the
longest horizon and prints, at 21, 210 and 1050 frames, every metric of the 21-frame segment
ending there, beside real clips.

    python benchmarks/long_horizon.py [--out-dir benchmark-results] [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from headforcing.heads.plot import plot_head_map
from headforcing.heads.profile import profile_heads
from headforcing.toyworld.evaluate import EVAL_PROMPTS, real_metrics
from headforcing.toyworld.longrun import (
    HORIZONS,
    baseline_policies,
    format_results,
    run_long_horizon,
)
from headforcing.toyworld.pretrained import load_toy_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path("benchmark-results"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--prompts", type=int, default=2, help="how many eval prompts")
    parser.add_argument("--horizons", type=int, nargs="+", default=list(HORIZONS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out_dir.mkdir(parents=True, exist_ok=True)

    pipeline = load_toy_pipeline()
    prompts = list(EVAL_PROMPTS[: args.prompts])
    head_map = profile_heads(pipeline, list(EVAL_PROMPTS))
    head_map.save(args.out_dir / "toy_head_map.json")
    plot_head_map(head_map, args.out_dir / "toy_head_map.png")
    print("toy head map:", head_map.counts(), file=sys.stderr)
    for layer, labels in enumerate(head_map.labels):
        print(f"  layer {layer}: {' '.join(labels)}", file=sys.stderr)

    began = time.perf_counter()
    results = run_long_horizon(
        pipeline,
        baseline_policies(head_map),
        prompts,
        seeds=args.seeds,
        horizons=args.horizons,
        progress=lambda name, prompt, seed: print(
            f"  {name}: {prompt!r} seed {seed} ({time.perf_counter() - began:.0f} s)",
            file=sys.stderr,
        ),
    )
    real = real_metrics(prompts)[0]
    table = format_results(results, real)
    (args.out_dir / "long_horizon.md").write_text(table + "\n")
    print(f"### toy world, {len(prompts)} prompts x {len(args.seeds)} seeds\n")
    print(table)


if __name__ == "__main__":
    main()
