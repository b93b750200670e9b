"""Head Forcing variants against the baselines on the toy world, on random prompts.

Every policy rolls out the same random scenes (``random_scene``, not the evaluation prompts) to
``--frames`` frames; the table gives, averaged over the videos, the count and colour error of the
first 21-frame segment, their mean over all later segments, and the last segment's count, colour
and motion.

    python benchmarks/head_forcing_variants.py [--prompts 8] [--rng 780] [--seeds 0]
        [--frames 210] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from headforcing.cache import make_policy
from headforcing.toyworld.evaluate import sample_video
from headforcing.toyworld.metrics import video_metrics
from headforcing.toyworld.pretrained import load_toy_pipeline
from headforcing.toyworld.world import Scene, random_scene

# name -> policy parameters; every variant stays within the trained 21 positions
VARIANTS: dict[str, tuple[str, dict]] = {
    "full": ("full", {}),
    "window-21 (relative)": ("window", {"positions": "relative"}),
    "sink (relative)": ("sink", {"positions": "relative"}),
    "head_forcing (defaults)": ("head_forcing", {}),
    "head_forcing, larger budgets": (
        "head_forcing",
        {"local_frames": 12, "anchor_recent_frames": 12, "working_frames": 9, "max_episodes": 3},
    ),
    "head_forcing, no episodes": ("head_forcing", {"max_episodes": 0, "working_frames": 12}),
    "head_forcing, no episodes, no sink": (
        "head_forcing",
        {"sink_frames": 0, "max_episodes": 0, "working_frames": 15, "anchor_recent_frames": 15},
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8, help="random scenes")
    parser.add_argument("--rng", type=int, default=780, help="seed of the scene draw")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--frames", type=int, default=210)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    pipeline = load_toy_pipeline()
    rng = np.random.default_rng(args.rng)
    prompts = [random_scene(rng).prompt() for _ in range(args.prompts)]
    began = time.perf_counter()
    rows = []
    for name, (policy_name, params) in VARIANTS.items():
        per_video = []  # [videos, segments, (count, colour, motion)]
        for prompt in prompts:
            scene = Scene.from_prompt(prompt)
            for seed in args.seeds:
                policy = make_policy(policy_name, **params)
                if policy_name == "head_forcing":
                    policy = policy.with_head_map(pipeline.head_map)
                video = sample_video(pipeline, prompt, args.frames, policy, seed)
                per_video.append(
                    [(m.count_error, m.colour_error, m.motion) for m in video_metrics(video, scene)]
                )
        errors = np.array(per_video)
        rows.append((name, errors))
        print(f"  {name}: {time.perf_counter() - began:.0f} s", file=sys.stderr)

    last = f"{args.frames - 20}-{args.frames}"
    print(
        f"| policy | count 1-21 | count 22-{args.frames} | colour 22-{args.frames} "
        f"| count {last} | colour {last} | motion {last} |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, errors in rows:
        first, later, final = errors[:, 0], errors[:, 1:], errors[:, -1]
        print(
            f"| {name} | {first[:, 0].mean():.2f} | {later[..., 0].mean():.2f} "
            f"| {later[..., 1].mean():.2f} | {final[:, 0].mean():.2f} | {final[:, 1].mean():.2f} "
            f"| {final[:, 2].mean():.2f} |"
        )


if __name__ == "__main__":
    main()
