"""Head Forcing's variants against its defaults and the baselines on the toy world.

Every policy rolls out the same reporting scenes and seeds (16 random scenes drawn with rng 791,
none of the tuning sets, x seeds 0 and 1: 32 paired videos) to 210 frames (10x the horizon).
Per video, every metric is averaged over the segments after the first (frames 22-210); the table
gives each policy's mean with a bootstrap 95 % interval and the paired differences of every Head
Forcing variant from ``head_forcing`` (defaults) and from each baseline, "no measurable
difference" where the interval holds 0. The variants (``POLICY_SPECS`` in
``headforcing/toyworld/longrun.py``): larger budgets (local 12, anchor recent 12, working 9, 3
episodes), no episodes (working memory 12), no episodes and no sink (15 recent frames for anchor
and memory heads); all within the 21 trained positions. The variants' parameters were looked at
on another set (rng 780), which the reporting set excludes.

It shares the long-horizon benchmark's results folder (``benchmark-results/toy-rng791/``): run
after it, the baselines and ``head_forcing`` come from the first 210 frames of its rollouts and
only the variants are made.

    python benchmarks/head_forcing_variants.py --dry-run
    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 benchmarks/head_forcing_variants.py
    python benchmarks/head_forcing_variants.py --report-only

Writes ``variants.md`` and ``variants.json`` into the results folder.
"""

import sys

from headforcing.toyworld.benchmark import VARIANTS, main

if __name__ == "__main__":
    sys.exit(main(VARIANTS))
