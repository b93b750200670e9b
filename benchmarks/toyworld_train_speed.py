"""Seconds per training step of the toy model, eager against ``torch.compile``, side by side.

    python benchmarks/toyworld_train_speed.py [--steps 30] [--repeats 2] [--threads 2]

Times both stages of the shipped recipe (stage 1: plain diffusion forcing; stage 2: with
self-context, one more forward pass per step) through ``train``, as the training script runs
them: the batch rendered on the fly, AdamW, the EMA update. The first ``--warm`` steps (the
compile, for the compiled runs) are left out of the step time; the last column is those steps
in the first compiled run of each stage (the compile, from an empty cache if none was left in
``/tmp/torchinductor_$USER``, as a fresh training run pays it). Eager and compiled runs
alternate, ``--repeats`` times each, and the table gives the median: on a shared machine one
run alone says little.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from headforcing.toyworld.train import train
from headforcing.toyworld.train_config import TrainConfig

STAGES = {
    "stage 1": {},
    "stage 2 (self-context)": {"self_context_prob": 0.5, "random_start_prob": 0.3},
}


def time_run(stage: dict, steps: int, warm: int, compile: bool) -> tuple[float, float]:
    """(seconds of the first ``warm`` steps, seconds per step after them)."""
    config = TrainConfig(steps=warm + steps, warmup=1, log_every=1, **stage)
    marks: list[float] = []
    start = time.perf_counter()
    train(config, compile=compile, on_log=lambda _: marks.append(time.perf_counter()))
    return marks[warm - 1] - start, (marks[-1] - marks[warm - 1]) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per run")
    parser.add_argument("--warm", type=int, default=3, help="untimed first steps per run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    first = f"first {args.warm} steps, first compiled run"
    print(f"| stage | eager s/step | compiled s/step | speed-up | {first} |")
    print("|---|---|---|---|---|")
    for name, stage in STAGES.items():
        runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for _ in range(args.repeats):
            for compile in (False, True):
                runs[compile].append(time_run(stage, args.steps, args.warm, compile))
        eager = statistics.median(step for _, step in runs[False])
        compiled = statistics.median(step for _, step in runs[True])
        warm = runs[True][0][0]
        print(f"| {name} | {eager:.3f} | {compiled:.3f} | {eager / compiled:.2f}x | {warm:.0f} s |")


if __name__ == "__main__":
    main()
