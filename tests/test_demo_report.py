"""The demo's report and summary line from synthetic per-segment numbers: the wording follows
the paired interval (checked against rules that hold for any bootstrap), the first segment (the
training horizon) is kept apart, and every segment of every video is in the report."""

import re

import numpy as np
import pytest

from headforcing.toyworld.demo_report import (
    NO_DIFFERENCE,
    plot_over_time,
    report_text,
    summary_line,
)
from headforcing.toyworld.longrun import METRICS
from headforcing.toyworld.metrics import SegmentMetrics, segment_bounds

BASELINE = "window-21 (absolute)"
BASELINE_COUNT = np.array([0.9, 0.6, 0.8, 0.7, 1.0, 0.5])  # the later segments
BASELINE_COLOUR = np.array([0.30, 0.25, 0.40, 0.35, 0.20, 0.30])
# differences head_forcing - baseline per later segment, by outcome; the rule each one obeys:
# a bootstrap mean of values all below 0 is below 0 (and above 0 likewise), and values
# symmetric about 0 give a bootstrap distribution symmetric about 0, whose central interval
# holds 0
DIFFERENCES = {
    "lower": np.array([-0.4, -0.1, -0.5, -0.3, -0.6, -0.2]),
    "higher": np.array([0.05, 0.2, 0.1, 0.15, 0.3, 0.1]),
    "none": np.array([0.2, -0.2, 0.1, -0.1, 0.3, -0.3]),
}
WORDS = {"lower": "lower by", "higher": "higher by", "none": NO_DIFFERENCE}


def segments(count: list[float], colour: list[float]) -> list[SegmentMetrics]:
    """Segments with the given count and colour errors; every other metric a distinct value."""
    return [
        SegmentMetrics(
            **{metric: 0.01 * (index + 1) for metric in METRICS}
            | {"count_error": c, "colour_error": k}
        )
        for index, (c, k) in enumerate(zip(count, colour, strict=True))
    ]


def demo_numbers(count_outcome: str, colour_outcome: str) -> dict[str, list[SegmentMetrics]]:
    """Real clip, baseline and head_forcing; in the first segment head_forcing is far worse on
    both errors (1 sprite wrong, colour off by 0.9): it must not count after the horizon."""
    count = BASELINE_COUNT + DIFFERENCES[count_outcome]
    colour = BASELINE_COLOUR + DIFFERENCES[colour_outcome] / 4
    zeros = [0.0] * (len(BASELINE_COUNT) + 1)
    return {
        "real clip": segments(zeros, zeros),
        BASELINE: segments([0.0, *BASELINE_COUNT], [0.05, *BASELINE_COLOUR]),
        "head_forcing": segments([1.0, *count], [0.95, *colour]),
    }


NUMBER = r"(-?\d+\.\d{3})"
INTERVAL = rf"{NUMBER} \[{NUMBER}, {NUMBER}\]"


def parse(line: str, metric: str) -> dict:
    """The numbers and the verdict the summary line gives for ``metric``."""
    pattern = (
        rf"{metric} {INTERVAL} vs {INTERVAL}: "
        rf"(lower by|higher by|{NO_DIFFERENCE} \(difference) {INTERVAL}"
    )
    match = re.search(pattern, line)
    assert match, f"no {metric} comparison in: {line}"
    numbers = [float(value) for value in match.groups()[:6] + match.groups()[7:]]
    return {"word": match.group(7).removesuffix(" (difference"), "numbers": numbers}


@pytest.mark.parametrize(
    ("count_outcome", "colour_outcome"),
    [("lower", "higher"), ("higher", "none"), ("none", "lower")],
)
def test_summary_wording_follows_the_paired_interval(count_outcome, colour_outcome):
    per_video = demo_numbers(count_outcome, colour_outcome)
    line = summary_line(per_video, BASELINE)
    assert "\n" not in line
    assert line.startswith("after the 21-frame training horizon (6 later segments")
    for metric, outcome in (("count_error", count_outcome), ("colour_error", colour_outcome)):
        said = parse(line, metric.replace("_", " "))
        assert said["word"] == WORDS[outcome]
        ours = np.array([getattr(s, metric) for s in per_video["head_forcing"][1:]])
        theirs = np.array([getattr(s, metric) for s in per_video[BASELINE][1:]])
        mean, low, high, base_mean, base_low, base_high, gap, gap_low, gap_high = said["numbers"]
        # the means are those of the later segments (the first one is left out) ...
        assert mean == pytest.approx(ours.mean(), abs=6e-4)
        assert base_mean == pytest.approx(theirs.mean(), abs=6e-4)
        # ... within their intervals, which lie within the range of the values
        assert ours.min() - 6e-4 <= low <= mean <= high <= ours.max() + 6e-4
        assert theirs.min() - 6e-4 <= base_low <= base_mean <= base_high <= theirs.max() + 6e-4
        # "lower by" gives the size of the gap, the other wordings the difference itself
        difference = ours - theirs
        size = -difference if outcome == "lower" else difference
        assert gap == pytest.approx(size.mean(), abs=6e-4)
        assert size.min() - 6e-4 <= gap_low <= gap <= gap_high <= size.max() + 6e-4
        if outcome == "none":
            assert gap_low <= 0 <= gap_high
        else:
            assert gap_low > 0


def test_one_segment_after_the_horizon_gives_no_interval_and_no_verdict():
    per_video = {
        "real clip": segments([0.0, 0.0], [0.0, 0.0]),
        BASELINE: segments([0.0, 1.0], [0.0, 0.5]),
        "head_forcing": segments([0.0, 0.0], [0.0, 0.1]),
    }
    line = summary_line(per_video, BASELINE)
    assert "1 later segment of this video" in line
    assert line.count("one segment, no interval") == 2
    for verdict in ("lower", "higher", NO_DIFFERENCE):
        assert verdict not in line


def test_report_holds_the_horizon_every_segment_and_the_intervals(tmp_path):
    per_video = demo_numbers("lower", "none")
    frames = 21 * len(per_video[BASELINE])
    bounds = segment_bounds(frames)
    report = report_text("a red circle bounces", 3, per_video, bounds, BASELINE)
    lines = report.splitlines()
    assert lines[2] == f"**Summary:** {summary_line(per_video, BASELINE)}"
    assert f"{frames} frames in 7 segments" in report
    assert "not independent samples" in report and "not the method" in report
    assert "drift" not in report  # the first-versus-last drift is gone from the demo
    for name, video in per_video.items():
        first = " | ".join(f"{value:.3f}" for value in video[0].as_dict().values())
        assert f"| {name} | 1-21 | {first} |" in lines
        later = next(line for line in lines if line.startswith(f"| {name} | 22-{frames}, mean |"))
        assert later.count("[") == len(METRICS)  # every metric with its interval
        for index, segment in enumerate(video):
            cells = " | ".join(f"{value:.3f}" for value in segment.as_dict().values())
            frames_of = f"{21 * index + 1}-{21 * (index + 1)}"
            assert f"| {index + 1} | {frames_of} | {name} | {cells} |" in lines
    paired = {line.split(" | ")[0]: line for line in lines if line.startswith("| co")}
    assert paired["| count_error"].endswith("| lower |")
    assert paired["| colour_error"].endswith(f"| {NO_DIFFERENCE} |")
    assert paired["| count_error"].count("[") == 3  # both means and the difference

    picture = plot_over_time(per_video, bounds, tmp_path / "plot.png")
    header = picture.read_bytes()[:24]
    assert header[:4] == b"\x89PNG"
    width, height = int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")
    assert width >= 1600 and height >= 800  # seven panels a reader can see
