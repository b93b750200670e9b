"""Cache policies far beyond the training horizon, measured against the toy world's truth.

What the long-horizon and variants benchmarks compare and what they read off each video: the
named policies (:data:`POLICY_SPECS`), the prompts kept for tuning and those drawn for
reporting (disjoint by construction), and the :class:`Measure` of a video, the mean of every
metric over some of its 21-frame segments (the training length): the segment ending at 21,
210 and 1050 frames (1x, 10x and 50x the horizon), or every segment after the first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import numpy as np

from headforcing.cache import CachePolicy, make_policy
from headforcing.cache.policy import HeadMapPolicy
from headforcing.heads.headmap import HeadMap
from headforcing.toyworld.evaluate import EVAL_PROMPTS
from headforcing.toyworld.metrics import SEGMENT_FRAMES, SegmentMetrics
from headforcing.toyworld.world import random_scene

HORIZONS = (21, 210, 1050)
METRICS = tuple(f.name for f in fields(SegmentMetrics))
# the metrics the tables give with intervals (the others: JSON, and means in the tables)
MAIN_METRICS = ("count_error", "colour_error")

# the scenes anything was chosen or tuned on, as (rng seed of random_scene, scenes drawn)
TUNING_DRAWS = {
    "toy model selection": ((778, 24), (779, 24), (781, 24)),
    "head_forcing variants (its parameters were looked at there)": ((780, 8),),
}
REPORTING_RNG = 791  # the reporting set of the long-horizon and variants benchmarks


def baseline_policies(head_map: HeadMap) -> dict[str, CachePolicy]:
    """The demo's policies: Self-Forcing's window as published (absolute positions), the same
    window and LongLive's sink with relative positions, Head Forcing, and ``full``."""
    return {
        "full": make_policy("full"),
        "window-21 (absolute)": make_policy("window", positions="absolute"),
        "window-21 (relative)": make_policy("window", positions="relative"),
        "sink (relative)": make_policy("sink", positions="relative"),
        "head_forcing": make_policy("head_forcing").with_head_map(head_map),
    }


@dataclass(frozen=True)
class PolicySpec:
    """A compared policy: a registered cache policy with fixed parameters, under a name."""

    name: str
    policy: str
    params: dict = field(default_factory=dict)

    def build(self, head_map: HeadMap | None = None) -> CachePolicy:
        policy = make_policy(self.policy, **self.params)
        if isinstance(policy, HeadMapPolicy):
            if head_map is None:
                raise ValueError(f"{self.name} needs a head map; profile the model first")
            policy = policy.with_head_map(head_map)
        return policy

    @property
    def needs_head_map(self) -> bool:
        return isinstance(make_policy(self.policy, **self.params), HeadMapPolicy)

    @property
    def is_head_forcing(self) -> bool:
        return self.policy == "head_forcing"


# window and sink with relative positions, as Head Forcing and the field sweep run them; every
# variant stays within the trained 21 positions
POLICY_SPECS: dict[str, PolicySpec] = {
    spec.name: spec
    for spec in (
        PolicySpec("full", "full"),
        PolicySpec("window", "window", {"positions": "relative"}),
        PolicySpec("window-absolute", "window", {"positions": "absolute"}),
        PolicySpec("sink", "sink", {"positions": "relative"}),
        PolicySpec("sink-absolute", "sink", {"positions": "absolute"}),
        PolicySpec("head_forcing", "head_forcing"),
        PolicySpec(
            "head_forcing-larger-budgets",
            "head_forcing",
            {
                "local_frames": 12,
                "anchor_recent_frames": 12,
                "working_frames": 9,
                "max_episodes": 3,
            },
        ),
        PolicySpec(
            "head_forcing-no-episodes", "head_forcing", {"max_episodes": 0, "working_frames": 12}
        ),
        PolicySpec(
            "head_forcing-no-episodes-no-sink",
            "head_forcing",
            {"sink_frames": 0, "max_episodes": 0, "working_frames": 15, "anchor_recent_frames": 15},
        ),
    )
}
LONG_HORIZON_POLICIES = ("full", "window", "sink", "head_forcing")
VARIANT_POLICIES = (
    *LONG_HORIZON_POLICIES,
    "head_forcing-larger-budgets",
    "head_forcing-no-episodes",
    "head_forcing-no-episodes-no-sink",
)


def comparisons(names: Sequence[str]) -> list[tuple[str, str]]:
    """The paired differences a table gives, ``(subject, reference)``: every Head Forcing
    policy against ``head_forcing`` (its defaults) first, then against every baseline."""
    subjects = [name for name in names if POLICY_SPECS[name].is_head_forcing]
    defaults = ["head_forcing"] if "head_forcing" in names else []
    references = defaults + [name for name in names if name not in subjects]
    return [(s, r) for s in subjects for r in references if s != r]


def draw_prompts(rng: int, scenes: int) -> list[str]:
    """The prompts of the first ``scenes`` scenes ``random_scene`` draws with seed ``rng``."""
    generator = np.random.default_rng(rng)
    return [random_scene(generator).prompt() for _ in range(scenes)]


def tuning_prompts() -> set[str]:
    """Every prompt something was chosen or tuned on: the evaluation prompts (the head map is
    profiled on them) and the scenes of :data:`TUNING_DRAWS`."""
    prompts = set(EVAL_PROMPTS)
    for draws in TUNING_DRAWS.values():
        for rng, scenes in draws:
            prompts.update(draw_prompts(rng, scenes))
    return prompts


def reporting_prompts(scenes: int, rng: int = REPORTING_RNG) -> list[str]:
    """``scenes`` distinct prompts drawn with ``random_scene`` and seed ``rng``, skipping any
    prompt of the tuning sets (:func:`tuning_prompts`) and repeats."""
    if scenes < 1:
        raise ValueError(f"report on at least one scene, got {scenes}")
    generator = np.random.default_rng(rng)
    excluded = tuning_prompts()
    prompts: list[str] = []
    for _ in range(1000 * scenes):  # the world has thousands of scenes: this never runs out
        prompt = random_scene(generator).prompt()
        if prompt not in excluded:
            prompts.append(prompt)
            excluded.add(prompt)
            if len(prompts) == scenes:
                return prompts
    raise ValueError(f"could not draw {scenes} distinct scenes outside the tuning sets")


@dataclass(frozen=True)
class Measure:
    """The number a table reads off one video, per metric: the mean over its 21-frame
    segments ``start`` to ``stop - 1`` (0-based), so it needs ``stop * 21`` frames."""

    start: int
    stop: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.stop:
            raise ValueError(f"a measure needs 0 <= start < stop, got {self.start}, {self.stop}")

    @property
    def frames(self) -> int:
        return self.stop * SEGMENT_FRAMES

    @property
    def label(self) -> str:
        first, last = self.start * SEGMENT_FRAMES + 1, self.frames
        if self.stop - self.start == 1:
            return f"frames {first}-{last} (the segment ending at frame {last})"
        return f"frames {first}-{last} (mean of {self.stop - self.start} segments)"

    def of(self, segments: Sequence[dict[str, float]]) -> dict[str, float] | None:
        """Every metric's mean over the measured segments, ``None`` if the video is too short."""
        if len(segments) < self.stop:
            return None
        chosen = segments[self.start : self.stop]
        return {name: float(np.mean([segment[name] for segment in chosen])) for name in METRICS}


def segment_ending_at(horizon: int) -> Measure:
    """The 21-frame segment that ends at frame ``horizon`` (a multiple of 21)."""
    check_frames(horizon)
    return Measure(horizon // SEGMENT_FRAMES - 1, horizon // SEGMENT_FRAMES)


def after_first_segment(frames: int) -> Measure:
    """Every segment after the first (the training horizon) up to frame ``frames``."""
    check_frames(frames, at_least=2 * SEGMENT_FRAMES)
    return Measure(1, frames // SEGMENT_FRAMES)


def horizon_measures(frames: int) -> list[Measure]:
    """The segments ending at every horizon up to ``frames`` (and at ``frames``)."""
    check_frames(frames)
    ends = sorted({*(h for h in HORIZONS if h <= frames), frames})
    return [segment_ending_at(end) for end in ends]


def check_frames(frames: int, at_least: int = SEGMENT_FRAMES) -> None:
    if frames < at_least or frames % SEGMENT_FRAMES:
        raise ValueError(
            f"frames must be a multiple of {SEGMENT_FRAMES} (one segment, the training horizon) "
            f"and at least {at_least}, got {frames}"
        )
