"""Tables of paired rollouts: each policy's mean with its bootstrap interval, and the paired
difference of two policies over the videos both have, "no measurable difference" where the
interval holds 0.

Input: ``values``, ``policy -> (prompt, seed) -> metric -> value``, one number per metric and
video (a :class:`~headforcing.toyworld.longrun.Measure` of its segments). A policy's row uses
all its videos; a difference uses only the videos both policies have (a policy capped to fewer
videos or frames pairs on what it has) and says how many.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from headforcing.eval.stats import Estimate, bootstrap_mean, paired_difference

Values = dict[str, dict[tuple[str, int], dict[str, float]]]
# a bootstrap of one video (or pair) is that value alone: no interval, no verdict
MIN_VIDEOS = 2
NO_DIFFERENCE = "no measurable difference"


@dataclass(frozen=True)
class PolicyRow:
    """A policy's videos at one measure: the mean of every metric with its interval (``None``
    under :data:`MIN_VIDEOS` videos)."""

    policy: str
    videos: int
    estimates: dict[str, Estimate | None]


@dataclass(frozen=True)
class Difference:
    """``subject - reference`` over the videos both have (``pairs``); negative: the subject's
    error is lower."""

    subject: str
    reference: str
    pairs: int
    estimates: dict[str, Estimate | None]

    def no_measurable_difference(self, metric: str) -> bool | None:
        estimate = self.estimates[metric]
        return None if estimate is None else estimate.holds_zero()


def estimate(values: Sequence[float]) -> Estimate | None:
    return bootstrap_mean(values) if len(values) >= MIN_VIDEOS else None


def policy_rows(values: Values, metrics: Sequence[str]) -> list[PolicyRow]:
    rows = []
    for policy, videos in values.items():
        keys = sorted(videos)
        estimates = {m: estimate([videos[k][m] for k in keys]) for m in metrics}
        rows.append(PolicyRow(policy, len(keys), estimates))
    return rows


def differences(
    values: Values, pairs: Sequence[tuple[str, str]], metrics: Sequence[str]
) -> list[Difference]:
    """The paired difference of every ``(subject, reference)`` over their shared videos."""
    out = []
    for subject, reference in pairs:
        shared = sorted(set(values[subject]) & set(values[reference]))
        estimates: dict[str, Estimate | None] = {}
        for metric in metrics:
            a = [values[subject][key][metric] for key in shared]
            b = [values[reference][key][metric] for key in shared]
            estimates[metric] = paired_difference(a, b) if len(shared) >= MIN_VIDEOS else None
        out.append(Difference(subject, reference, len(shared), estimates))
    return out


@dataclass(frozen=True)
class Table:
    """One measure's table: a row per policy (``real``: real clips of the same prompts, the
    floor every metric is read against) and the paired differences."""

    label: str
    frames: int
    rows: list[PolicyRow]
    real: PolicyRow | None
    differences: list[Difference]

    def markdown(self, interval_metrics: Sequence[str], mean_metrics: Sequence[str]) -> str:
        """A policy table (``interval_metrics`` with intervals, ``mean_metrics`` as means) and
        a table of the differences in ``interval_metrics``."""
        lines = [f"#### {self.label}", ""]
        lines.append("| policy | videos | " + " | ".join([*interval_metrics, *mean_metrics]) + " |")
        lines.append("|---|---|" + "---|" * (len(interval_metrics) + len(mean_metrics)))
        for row in [self.real, *self.rows] if self.real else self.rows:
            cells = [_cell(row.estimates[m], row.videos) for m in interval_metrics]
            cells += [_mean(row.estimates[m]) for m in mean_metrics]
            lines.append(f"| {row.policy} | {row.videos} | " + " | ".join(cells) + " |")
        if self.differences:
            lines += ["", "| difference | pairs | " + " | ".join(interval_metrics) + " |"]
            lines.append("|---|---|" + "---|" * len(interval_metrics))
            for diff in self.differences:
                cells = []
                for metric in interval_metrics:
                    cell = _cell(diff.estimates[metric], diff.pairs)
                    if diff.no_measurable_difference(metric):
                        cell += f" ({NO_DIFFERENCE})"
                    cells.append(cell)
                name = f"{diff.subject} − {diff.reference}"
                lines.append(f"| {name} | {diff.pairs} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_json(self) -> dict:
        def row(row: PolicyRow) -> dict:
            return {"policy": row.policy, "videos": row.videos, **_estimates(row.estimates)}

        return {
            "label": self.label,
            "frames": self.frames,
            "real_clips": row(self.real) if self.real else None,
            "policies": [row(r) for r in self.rows],
            "differences": [
                {
                    "subject": d.subject,
                    "reference": d.reference,
                    "pairs": d.pairs,
                    **_estimates(d.estimates),
                    "no_measurable_difference": {
                        m: d.no_measurable_difference(m) for m in d.estimates
                    },
                }
                for d in self.differences
            ],
        }


def _estimates(estimates: dict[str, Estimate | None]) -> dict:
    return {m: asdict(e) if e is not None else None for m, e in estimates.items()}


def _cell(estimate: Estimate | None, count: int) -> str:
    if count == 0:
        return "-"
    if estimate is None:
        return f"too few ({count})"
    return str(estimate)


def _mean(estimate: Estimate | None) -> str:
    return "-" if estimate is None else f"{estimate.mean:.3f}"
