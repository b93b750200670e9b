"""``headforcing eval``: every video's measures per segment, its drift, and for toy-world
videos the ground-truth metrics; as a table, a JSON file and a plot (``headforcing.eval.plot``)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from headforcing.eval.measures import MEASURES, SegmentMeasures, drift, reference, segment_measures
from headforcing.eval.segments import (
    VideoSource,
    default_segment_frames,
    frames_of,
    segments,
    sources,
)
from headforcing.eval.truth import has_truth, truth_metrics
from headforcing.toyworld.metrics import SegmentMetrics


@dataclass(frozen=True)
class VideoEval:
    """The result for one video: its measures per segment and, for a toy-world video, the
    toy-world metrics per segment (the same segments), else None."""

    source: VideoSource
    segment_frames: int
    segments: list[SegmentMeasures]
    truth: list[SegmentMetrics] | None

    @property
    def label(self) -> str:
        return self.source.label

    def drift(self) -> dict[str, float]:
        values = drift(self.segments)
        if self.truth:
            first, last = self.truth[0].as_dict(), self.truth[-1].as_dict()
            values |= {f"truth_{name}": last[name] - first[name] for name in first}
        return values

    def as_dict(self) -> dict:
        return {
            "video": str(self.source.path),
            "label": self.label,
            "segment_frames": self.segment_frames,
            "metadata": self.source.metadata,
            "segments": [segment.as_dict() for segment in self.segments],
            "truth": [metrics.as_dict() for metrics in self.truth] if self.truth else None,
            "drift": self.drift(),
        }


def evaluate(source: VideoSource, segment_frames: int | None = None) -> VideoEval:
    """Measure ``source`` segment by segment (``segment_frames`` None: the model's default)."""
    segment_frames = segment_frames or default_segment_frames(source.metadata)
    keep_frames = has_truth(source.metadata)
    measured, kept = [], []
    first = None
    for start, frames in segments(frames_of(source), segment_frames):
        if first is None:
            if len(frames) < 3:
                raise ValueError(f"{source.path}: {len(frames)} frames; eval needs at least 3")
            first = reference(frames)
        measured.append(segment_measures(frames, start, first))
        if keep_frames:  # toy videos are 32x32: all their frames fit in memory
            kept.append(frames)
    if first is None:
        raise ValueError(f"{source.path}: no video frames in the file")
    truth = None
    if keep_frames:
        truth = truth_metrics(np.concatenate(kept), source.metadata, segment_frames)
    return VideoEval(source, segment_frames, measured, truth)


def evaluate_file(path: str | Path, segment_frames: int | None = None) -> list[VideoEval]:
    """Measure the MP4 at ``path``: one result, or one per panel of a demo video."""
    return [evaluate(source, segment_frames) for source in sources(Path(path))]


def format_table(results: list[VideoEval]) -> str:
    """First segment, last segment and drift (last - first) of every measure, per video."""
    names = list(MEASURES)
    if any(result.truth for result in results):
        names += [f"truth_{name}" for name in SegmentMetrics.__dataclass_fields__]
    width = max(len(name) for name in names)
    lines = []
    for result in results:
        first, last = _row(result, 0), _row(result, -1)
        drift_values = result.drift()
        lines.append(
            f"{result.label}: {len(result.segments)} segments of {result.segment_frames} frames"
        )
        lines.append(f"  {'measure':<{width}} {'first':>10} {'last':>10} {'drift':>10}")
        for name in names:
            if name not in first:
                continue
            lines.append(
                f"  {name:<{width}} {first[name]:>10.4g} {last[name]:>10.4g} "
                f"{drift_values[name]:>+10.4g}"
            )
    return "\n".join(lines)


def _row(result: VideoEval, index: int) -> dict[str, float]:
    row = {name: getattr(result.segments[index], name) for name in MEASURES}
    if result.truth:
        row |= {f"truth_{k}": v for k, v in result.truth[index].as_dict().items()}
    return row


def write_json(results: list[VideoEval], path: Path, overwrite: bool = True) -> Path:
    """Every video's segments, truth and drift as JSON (NaN written as null), written beside
    and renamed (:mod:`headforcing.io.files`)."""
    from headforcing.io.files import write_text

    rows = [_finite(result.as_dict()) for result in results]
    return write_text(path, json.dumps({"videos": rows}, indent=1) + "\n", overwrite)


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value
