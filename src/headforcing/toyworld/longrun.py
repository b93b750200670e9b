"""Cache policies far beyond the training horizon, measured against the toy world's truth.

One rollout per (policy, prompt, seed) to the longest horizon; the metrics of the segment that
ends at each horizon (21 frames each, the training length) tell what the policy does to quality
at 1x, 10x and 50x the horizon; drift is the last segment against the first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from headforcing.cache import CachePolicy, make_policy
from headforcing.heads.headmap import HeadMap
from headforcing.pipeline import Pipeline
from headforcing.toyworld.evaluate import mean_metrics, sample_video
from headforcing.toyworld.metrics import SEGMENT_FRAMES, SegmentMetrics, segment_metrics
from headforcing.toyworld.world import Scene

HORIZONS = (21, 210, 1050)
METRICS = tuple(f.name for f in fields(SegmentMetrics))


def baseline_policies(head_map: HeadMap) -> dict[str, CachePolicy]:
    """The policies compared: Self-Forcing's window as published (absolute positions), the same
    window and LongLive's sink with relative positions, Head Forcing, and ``full``."""
    return {
        "full": make_policy("full"),
        "window-21 (absolute)": make_policy("window", positions="absolute"),
        "window-21 (relative)": make_policy("window", positions="relative"),
        "sink (relative)": make_policy("sink", positions="relative"),
        "head_forcing": make_policy("head_forcing").with_head_map(head_map),
    }


def segment_ending_at(video: np.ndarray, scene: Scene, horizon: int) -> SegmentMetrics:
    """Metrics of the ``SEGMENT_FRAMES`` frames that end at ``horizon``."""
    return segment_metrics(video[horizon - SEGMENT_FRAMES : horizon], scene)


@dataclass(frozen=True)
class HorizonResult:
    policy: str
    horizon: int
    metrics: SegmentMetrics


def run_long_horizon(
    pipeline: Pipeline,
    policies: dict[str, CachePolicy],
    prompts: Sequence[str],
    seeds: Sequence[int] = (0,),
    horizons: Sequence[int] = HORIZONS,
    progress=None,
) -> list[HorizonResult]:
    """Metrics at every horizon for every policy, averaged over prompts and seeds."""
    results = []
    for name, policy in policies.items():
        per_horizon: dict[int, list[SegmentMetrics]] = {h: [] for h in horizons}
        for prompt in prompts:
            scene = Scene.from_prompt(prompt)
            for seed in seeds:
                video = sample_video(pipeline, prompt, max(horizons), policy, seed)
                for horizon in horizons:
                    per_horizon[horizon].append(segment_ending_at(video, scene, horizon))
                if progress is not None:
                    progress(name, prompt, seed)
        results += [HorizonResult(name, h, mean_metrics(per_horizon[h])) for h in horizons]
    return results


def format_results(results: Sequence[HorizonResult], real: SegmentMetrics) -> str:
    """One markdown table: a row per (policy, horizon), a column per metric; real clips first."""
    header = "| policy | frames | " + " | ".join(METRICS) + " |"
    lines = [header, "|" + "---|" * (len(METRICS) + 2)]
    lines.append(
        "| real clips | 21 | " + " | ".join(f"{getattr(real, m):.3f}" for m in METRICS) + " |"
    )
    for result in results:
        values = " | ".join(f"{getattr(result.metrics, m):.3f}" for m in METRICS)
        lines.append(f"| {result.policy} | {result.horizon} | {values} |")
    return "\n".join(lines)
