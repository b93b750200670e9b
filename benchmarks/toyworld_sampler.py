"""Choose the toy preset's sampler: metrics of samples vs real clips for steps x shift.

Usage::

    python benchmarks/toyworld_sampler.py [--weights DIR] [--steps 4 8 12 16] [--shifts 1 3 5]
        [--tail 40 20]

``--tail`` appends low-noise steps (1000-step scale, before the shift) after the even ones.

Prints one markdown table per setting (21 frames, ``full`` cache, the evaluation prompts, two
seeds) and a summary line with the number of failed metrics.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from headforcing.sampling import FlowSchedule
from headforcing.toyworld.evaluate import (
    EVAL_PROMPTS,
    compare_to_real,
    format_table,
    model_metrics,
    real_metrics,
)
from headforcing.toyworld.pretrained import load_toy_pipeline


def even_steps(count: int) -> tuple[int, ...]:
    """``count`` evenly spaced steps from 1000 down (before the shift warps them)."""
    return tuple(round(1000 * (count - i) / count) for i in range(count))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 8, 12, 16])
    parser.add_argument("--shifts", type=float, nargs="+", default=[1.0, 3.0, 5.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--tail", type=int, nargs="*", default=[], help="extra final steps")
    args = parser.parse_args()
    torch.set_num_threads(1)

    pipeline = load_toy_pipeline(weights_dir=args.weights)
    real = real_metrics(EVAL_PROMPTS)[0]
    for count in args.steps:
        for shift in args.shifts:
            pipeline.schedule = FlowSchedule((*even_steps(count), *args.tail), shift)
            start = time.perf_counter()
            rows = compare_to_real(model_metrics(pipeline, EVAL_PROMPTS, args.seeds)[0], real)
            seconds = time.perf_counter() - start
            failed = [row.name for row in rows if not row.passed]
            name = f"{count}" + (f" + {args.tail}" if args.tail else "")
            print(f"\n## steps {name}, shift {shift}: {seconds:.1f} s, failed: {failed or 'none'}")
            print(format_table(rows))


if __name__ == "__main__":
    main()
