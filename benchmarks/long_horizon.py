"""Cache policies at 1x, 10x and 50x the training horizon on the toy world, with intervals.

Every policy rolls out the same reporting scenes and seeds (16 random scenes drawn with rng 791,
none of the tuning sets, x seeds 0 and 1: 32 paired videos) to 1050 frames; the tables give, at
21, 210 and 1050 frames, the 21-frame segment ending there: each policy's mean of every metric
against ground truth with a bootstrap 95 % interval (count and colour error; the other metrics
as means), and the paired difference of ``head_forcing`` from each baseline, "no measurable
difference" where its interval holds 0. One record per finished video in the results folder
(``benchmark-results/toy-rng791/`` by default): a rerun skips what is done, so a run can be
stopped and continued. Under ``torchrun`` the videos are split over the ranks by estimated cost.

    # what is pending and what it costs, without running anything
    python benchmarks/long_horizon.py --dry-run
    # the full benchmark on two ranks of one thread each (about 3.7 thread-hours)
    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 benchmarks/long_horizon.py
    # cheaper: full (whose cost grows with the video) on 16 videos, or only to 210 frames
    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 benchmarks/long_horizon.py \\
        --limit full=16
    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 benchmarks/long_horizon.py \\
        --policy-frames full=210
    # the tables of the videos done so far
    python benchmarks/long_horizon.py --report-only

Writes ``long_horizon.md`` and ``long_horizon.json`` (tables and settings), ``head_map.json``
and ``head_map.png`` (the map Head Forcing uses, profiled on the evaluation prompts) and
``videos.rank*.jsonl`` (the per-video records) into the results folder.
"""

import sys

from headforcing.toyworld.benchmark import LONG_HORIZON, main

if __name__ == "__main__":
    sys.exit(main(LONG_HORIZON))
