"""Which head map a run's policy takes: a file the user names, the map stored for these
weights, the one shipped with them, or one profiled before the run (then stored for the next
runs)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from headforcing.heads.headmap import HeadMap

if TYPE_CHECKING:
    from headforcing.cache.policy import CachePolicy
    from headforcing.pipeline import Pipeline


def read_head_map(path: Path | None, policy: CachePolicy, preset: str) -> HeadMap | None:
    """``--head-map``, read and checked against the preset's shape before any model loads."""
    from headforcing.cache.policy import HeadMapPolicy
    from headforcing.model.config import get_preset

    if path is None:
        return None
    if not isinstance(policy, HeadMapPolicy):
        raise ValueError(
            f"--head-map is for --policy head_forcing, dummy_forcing or pyramid_forcing, "
            f"not {policy.name}"
        )
    head_map = HeadMap.load(path)
    preset = get_preset(preset)
    head_map.check(preset.name, preset.model.num_layers, preset.model.num_heads)
    return head_map


def attach_head_map(policy: CachePolicy, head_map: HeadMap | None, pipeline: Pipeline):
    """A head_forcing policy gets ``head_map`` (from --head-map), else the map stored for these
    weights, else the one that came with them (the toy model's), else none (then the run
    profiles one in a calibration rollout before the video and stores it)."""
    from headforcing.cache.policy import HeadMapPolicy
    from headforcing.heads.store import load_stored_map, stored_map_path

    config = pipeline.model.config
    if not isinstance(policy, HeadMapPolicy):
        return policy, "-"
    source = "--head-map"
    if head_map is None:
        head_map = load_stored_map(pipeline.preset.name, pipeline.weights_id)
        source = str(stored_map_path(pipeline.preset.name, pipeline.weights_id))
        if head_map is None and pipeline.head_map is not None:
            head_map, source = pipeline.head_map, "shipped with the weights"
        if head_map is None:
            return policy, "profiled in a calibration rollout before the run"
    head_map.check(pipeline.preset.name, config.num_layers, config.num_heads)
    return policy.with_head_map(head_map), source


def storer(pipeline: Pipeline, report: Callable[[str], None]) -> Callable[[HeadMap], None]:
    """Stores a head map profiled before a run, for the next runs on these weights, and
    ``report``s where."""
    from headforcing.heads.store import store_map

    def on_head_map(head_map: HeadMap) -> None:
        path = store_map(head_map, pipeline.weights_id)
        counts = ", ".join(f"{k} {v}" for k, v in head_map.counts().items())
        report(f"head map fixed ({counts}), saved to {path}")

    return on_head_map


def bench_head_map(pipeline: Pipeline, path: Path | None, report: Callable[[str], None]):
    """--head-map, else a map profiled on the benchmark's own model (one 21-frame rollout)."""
    from headforcing.heads.profile import profile_heads

    if path is not None:
        return HeadMap.load(path)
    report("profiling the benchmark model for a head map (one rollout)")
    return profile_heads(pipeline, ["a calibration prompt"])


def recall_policies(
    pipeline: Pipeline, names: list[str], *, positions: str, prompt: str, seed: int
) -> tuple[dict, list[list[str]] | None]:
    """The policies of ``names`` for ``headforcing recall``, by their descriptions, each
    head-map policy with the stored or shipped map, else one profiled on ``prompt``; and the
    head labels of the first map (the report's head types), ``None`` without one."""
    from headforcing.cache.policies import make_policy

    policies, labels = {}, None
    for name in names:
        policy = make_policy(name, positions=positions)
        policy, _ = attach_head_map(policy, None, pipeline)
        if getattr(policy, "head_map", "-") is None:
            policy = policy.with_head_map(pipeline.calibrate(prompt, seed))
        if getattr(policy, "head_map", None) is not None and labels is None:
            labels = [list(row) for row in policy.head_map.labels]
        policies[policy.describe()] = policy
    return policies, labels
