"""What ``headforcing demo`` says about its videos: the training horizon, the mean after it with
an interval, every segment, and a one-line summary whose wording follows the intervals.

The first ``SEGMENT_FRAMES``-frame segment is the model's training horizon; every later segment
lies past it. For each video the report gives every metric of the first segment and the mean over
the later ones with a bootstrap interval over those segments, and the two generated runs are
compared segment by segment (paired: same prompt, seed and frames). Segments of one video are
not independent samples (a sprite lost in one segment stays lost in the next), so these intervals
describe this video's segments, not the method; the evidence about methods is the benchmark over
many scenes and seeds with intervals over videos (docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from headforcing.eval.stats import Estimate, bootstrap_mean, paired_difference
from headforcing.io.files import written_beside
from headforcing.toyworld.longrun import METRICS
from headforcing.toyworld.metrics import SEGMENT_FRAMES, SegmentMetrics

COMPARED_METRICS = ("count_error", "colour_error")  # the errors that say a sprite went wrong
NO_DIFFERENCE = "no measurable difference"
CANDIDATE = "head_forcing"


@dataclass(frozen=True)
class Comparison:
    """``candidate`` against ``baseline`` on one metric over the segments after the horizon:
    each one's mean with its interval, and the paired difference ``candidate - baseline``."""

    metric: str
    candidate: Estimate
    baseline: Estimate
    difference: Estimate

    def reading(self) -> str:
        """``lower`` or ``higher`` when the difference's interval excludes 0, else
        ``no measurable difference``; no reading from a single segment (no interval)."""
        if self.difference.count < 2:
            return "one segment, no interval"
        if self.difference.holds_zero():
            return NO_DIFFERENCE
        return "lower" if self.difference.high < 0 else "higher"

    def verdict(self) -> str:
        """The reading with its numbers: ``lower by 0.470 [0.350, 0.580]`` (the size of the
        gap), or the difference itself beside the other readings."""
        reading = self.reading()
        if reading == "lower":
            gap = self.difference
            return f"lower by {Estimate(-gap.mean, -gap.high, -gap.low, gap.count, gap.level)}"
        if reading == "higher":
            return f"higher by {self.difference}"
        return f"{reading} (difference {format_estimate(self.difference)})"


def format_estimate(estimate: Estimate) -> str:
    """``mean [low, high]``, or the bare mean when it comes from one value (no interval)."""
    if estimate.count < 2:
        return f"{estimate.mean:.3f}"
    return str(estimate)


def metric_values(segments: list[SegmentMetrics], metric: str) -> list[float]:
    return [getattr(segment, metric) for segment in segments]


def after_horizon(segments: list[SegmentMetrics]) -> dict[str, Estimate]:
    """Every metric's mean over the segments after the first, with its bootstrap interval."""
    if len(segments) < 2:
        raise ValueError(f"a video of {len(segments)} segment has none after the horizon")
    return {metric: bootstrap_mean(metric_values(segments[1:], metric)) for metric in METRICS}


def compare(
    candidate: list[SegmentMetrics], baseline: list[SegmentMetrics], metric: str
) -> Comparison:
    """``candidate`` against ``baseline`` on ``metric`` after the horizon, paired by segment."""
    ours = metric_values(candidate[1:], metric)
    theirs = metric_values(baseline[1:], metric)
    return Comparison(
        metric, bootstrap_mean(ours), bootstrap_mean(theirs), paired_difference(ours, theirs)
    )


def comparisons(per_video: dict[str, list[SegmentMetrics]], baseline: str) -> list[Comparison]:
    return [
        compare(per_video[CANDIDATE], per_video[baseline], metric) for metric in COMPARED_METRICS
    ]


def summary_line(per_video: dict[str, list[SegmentMetrics]], baseline: str) -> str:
    """One line from the numbers: each compared error after the horizon, Head Forcing's and the
    baseline's, and whether Head Forcing's is lower, higher or not measurably different."""
    later = len(per_video[CANDIDATE]) - 1
    parts = [
        f"{c.metric.replace('_', ' ')} {format_estimate(c.candidate)} vs "
        f"{format_estimate(c.baseline)}: {c.verdict()}"
        for c in comparisons(per_video, baseline)
    ]
    scope = f"{later} later segment{'s' if later > 1 else ''} of this video"
    return (
        f"after the {SEGMENT_FRAMES}-frame training horizon ({scope}), {CANDIDATE} vs "
        f"{baseline}: " + "; ".join(parts)
    )


def _frames(bounds: list[tuple[int, int]]) -> str:
    """``22-84``: first and last frame (counted from 1) of consecutive segments."""
    return f"{bounds[0][0] + 1}-{bounds[-1][1]}"


def _table_head(first_columns: list[str], columns: list[str]) -> list[str]:
    every = [*first_columns, *columns]
    return ["| " + " | ".join(every) + " |", "|" + "---|" * len(every)]


def report_text(
    prompt: str,
    seed: int,
    per_video: dict[str, list[SegmentMetrics]],
    bounds: list[tuple[int, int]],
    baseline: str,
) -> str:
    """report.md: the summary line, the horizon and the mean after it for every video, the
    paired comparison, what the intervals mean, and every segment of every video."""
    frames = bounds[-1][1]
    later = len(bounds) - 1
    lines = [
        "# headforcing demo",
        "",
        f"**Summary:** {summary_line(per_video, baseline)}",
        "",
        f"Prompt: *{prompt}*, seed {seed}. {frames} frames in {len(bounds)} segments: the first "
        f"(frames {_frames(bounds[:1])}) is the model's training horizon of {SEGMENT_FRAMES} "
        f"frames, the {later} later one{'s' if later > 1 else ''} (frames {_frames(bounds[1:])}) "
        "lie past it. Definitions: headforcing.toyworld.metrics; lower is better except "
        "sharpness_ratio (best at 1) and motion (best at the real clip's value).",
        "",
        "## The training horizon and after",
        "",
        "Each video's first segment, and the mean over its later segments with a bootstrap 95 % "
        "interval over those segments (no interval from a single segment).",
        "",
        *_table_head(["video", "frames"], list(METRICS)),
    ]
    for name, segments in per_video.items():
        first = " | ".join(f"{value:.3f}" for value in segments[0].as_dict().values())
        lines.append(f"| {name} | {_frames(bounds[:1])} | {first} |")
        means = " | ".join(format_estimate(e) for e in after_horizon(segments).values())
        lines.append(f"| {name} | {_frames(bounds[1:])}, mean | {means} |")
    lines += [
        "",
        f"## {CANDIDATE} - {baseline}, paired by segment",
        "",
        "The difference of the two runs in each later segment (same prompt, seed and frames), "
        f'its mean and bootstrap 95 % interval; "{NO_DIFFERENCE}" where the interval holds 0.',
        "",
        *_table_head(["metric"], [CANDIDATE, baseline, "difference", "reading"]),
    ]
    for c in comparisons(per_video, baseline):
        cells = [c.candidate, c.baseline, c.difference]
        numbers = " | ".join(format_estimate(e) for e in cells)
        lines.append(f"| {c.metric} | {numbers} | {c.reading()} |")
    lines += [
        "",
        "**What the intervals mean.** Segments of one video are not independent samples: a "
        "sprite lost in one segment stays lost in the next, and both runs share the prompt and "
        "the noise. The intervals describe this video's segments, not the method, and from a "
        "few segments they are rough (a bootstrap mean never leaves the range of its values). "
        "The evidence "
        "about the method is the benchmark over many scenes and seeds with intervals over videos "
        '(docs/benchmarks.md, "The field\'s methods side by side"; docs/toyworld.md).',
        "",
        "## Every segment",
        "",
        *_table_head(["segment", "frames", "video"], list(METRICS)),
    ]
    for index, segment_bounds in enumerate(bounds):
        for name, segments in per_video.items():
            cells = " | ".join(f"{value:.3f}" for value in segments[index].as_dict().values())
            lines.append(f"| {index + 1} | {_frames([segment_bounds])} | {name} | {cells} |")
    return "\n".join(lines) + "\n"


def plot_over_time(
    per_video: dict[str, list[SegmentMetrics]],
    bounds: list[tuple[int, int]],
    path: Path,
    overwrite: bool = True,
) -> Path:
    """One panel per metric: each video's value per segment (a point in the segment's middle),
    the training horizon shaded, and each video's mean after it as a dashed line with its
    interval as a band across the later segments."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    middles = [(start + end) / 2 for start, end in bounds]
    # an interval needs two later segments
    later = {name: after_horizon(s) for name, s in per_video.items()} if len(bounds) > 2 else {}
    figure, axes = plt.subplots(2, 4, figsize=(20, 10))
    for axis, metric in zip(axes.flat, METRICS, strict=False):
        horizon = f"training horizon (frames 1-{SEGMENT_FRAMES})"
        axis.axvspan(0, SEGMENT_FRAMES, color="gray", alpha=0.15, label=horizon)
        for name, segments in per_video.items():
            (line,) = axis.plot(middles, metric_values(segments, metric), marker="o", label=name)
            if name in later:
                estimate = later[name][metric]
                span, colour = (bounds[1][0], bounds[-1][1]), line.get_color()
                axis.fill_between(span, estimate.low, estimate.high, color=colour, alpha=0.15)
                axis.hlines(estimate.mean, *span, color=colour, linestyle="--")
        axis.set_title(metric, fontsize=15)
        axis.set_xlabel("frame", fontsize=12)
        axis.set_xlim(0, bounds[-1][1])
        axis.tick_params(labelsize=11)
        axis.grid(alpha=0.3)
    axes.flat[-1].axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    axes.flat[-1].legend(handles, labels, loc="center", fontsize=13)
    axes.flat[-1].text(
        0.5,
        0.1,
        "dashed line and band: mean after the horizon\nand its 95 % interval over those segments",
        ha="center",
        fontsize=11,
        transform=axes.flat[-1].transAxes,
    )
    figure.suptitle(
        f"toy world: metrics per {SEGMENT_FRAMES}-frame segment "
        f"(training horizon {SEGMENT_FRAMES} frames)",
        fontsize=17,
    )
    figure.tight_layout()
    with written_beside(path, overwrite) as written:
        figure.savefig(written, dpi=100, format="png")
    plt.close(figure)
    return path
