"""Long-video measures that need no model and no ground truth: any MP4, segment by segment.

A video is cut into segments (``headforcing.eval.segments``); each segment gets the measures
below, computed on luminance ``Y = 0.299 R + 0.587 G + 0.114 B`` scaled to [0, 1] unless said
otherwise. Drift measures compare a segment with the first one; :func:`drift` is the last
segment's value minus the first's, so a measure that grows over the video drifts above zero.

================  =================================================================  =========
measure           definition                                                         frozen
================  =================================================================  =========
flicker           mean |Y(t-1) - 2 Y(t) + Y(t+1)| / 2 over pixels and frames: the    0
                  temporal second difference, a high-pass that a still frame, steady
                  motion of flat areas and a linear fade pass as ~0 and a brightness
                  that jumps back and forth reads at its amplitude (edges of moving
                  objects add a little: it is no optical-flow measure)
sharpness         variance of the 4-neighbour Laplacian of Y, mean over frames       video's
motion            mean |Y(t+1) - Y(t)| over pixels and frame pairs                   0
dynamic_degree    share of frame pairs in which more than ``DYNAMIC_SHARE`` of the  0
                  pixels change by more than ``CHANGE_LEVEL`` (a still pair: codec
                  noise stays far below both)
colour_drift      total variation distance (half the L1 distance, in [0, 1]) between 0
                  the segment's joint RGB histogram (``HISTOGRAM_BINS`` per channel)
                  and the first segment's
background_drift  mean |B - B_first| over pixels and RGB channels, in [0, 1], where  0
                  B is the segment's per-pixel temporal median (what stays put: the
                  background, moving objects removed)
================  =================================================================  =========

A video written with ``--scale`` is measured after the scale is undone
(``headforcing.eval.segments``), at the size the model made it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601
HISTOGRAM_BINS = 8  # per channel: 512 joint bins
CHANGE_LEVEL = 0.08  # a pixel "changes" by more than 20 of 255 levels (H.264 at crf 18: ~2)
DYNAMIC_SHARE = 0.002  # a pair is dynamic when > 0.2 % of its pixels change (a 32x32 toy
# sprite moving one pixel changes ~1 %)
MEASURES = (
    "flicker",
    "sharpness",
    "motion",
    "dynamic_degree",
    "colour_drift",
    "background_drift",
)


@dataclass(frozen=True)
class SegmentMeasures:
    """The measures of one segment (see the module docstring); ``start`` and ``frames`` in
    frames of the video."""

    start: int
    frames: int
    flicker: float
    sharpness: float
    motion: float
    dynamic_degree: float
    colour_drift: float
    background_drift: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class Reference:
    """What the drift measures compare against: the first segment's colour histogram ``[512]``
    and background ``[H, W, 3]`` (floats in [0, 1])."""

    histogram: np.ndarray
    background: np.ndarray


def luminance(frames: np.ndarray) -> np.ndarray:
    """``[F, H, W, 3]`` uint8 -> ``[F, H, W]`` float32 in [0, 1]."""
    return frames.astype(np.float32) @ (LUMA_WEIGHTS / 255)


def flicker(luma: np.ndarray) -> float:
    """Mean half absolute second temporal difference of ``luma [F, H, W]`` (F >= 3)."""
    second = luma[:-2] - 2 * luma[1:-1] + luma[2:]
    return float(np.abs(second).mean() / 2)


def sharpness(luma: np.ndarray) -> float:
    """Mean over frames of the variance of the 4-neighbour Laplacian (inner pixels)."""
    laplacian = (
        luma[:, :-2, 1:-1] + luma[:, 2:, 1:-1] + luma[:, 1:-1, :-2] + luma[:, 1:-1, 2:]
    ) - 4 * luma[:, 1:-1, 1:-1]
    return float(laplacian.reshape(len(luma), -1).var(axis=1).mean())


def motion_and_dynamic(luma: np.ndarray) -> tuple[float, float]:
    """Mean absolute frame difference, and the share of frame pairs that are dynamic."""
    change = np.abs(np.diff(luma, axis=0))  # [F - 1, H, W]
    moving = (change > CHANGE_LEVEL).reshape(len(change), -1).mean(axis=1)
    return float(change.mean()), float((moving > DYNAMIC_SHARE).mean())


def colour_histogram(frames: np.ndarray) -> np.ndarray:
    """Joint RGB histogram ``[HISTOGRAM_BINS ** 3]`` of ``frames [F, H, W, 3]`` uint8, sum 1."""
    bins = (frames // (256 // HISTOGRAM_BINS)).astype(np.int64)
    index = (bins[..., 0] * HISTOGRAM_BINS + bins[..., 1]) * HISTOGRAM_BINS + bins[..., 2]
    counts = np.bincount(index.ravel(), minlength=HISTOGRAM_BINS**3)
    return counts / counts.sum()


def background(frames: np.ndarray) -> np.ndarray:
    """Per-pixel temporal median ``[H, W, 3]`` in [0, 1]: what stays put in the segment."""
    return np.median(frames, axis=0).astype(np.float32) / 255


def reference(frames: np.ndarray) -> Reference:
    """The first segment's histogram and background, for the drift measures."""
    return Reference(colour_histogram(frames), background(frames))


def segment_measures(frames: np.ndarray, start: int, first: Reference) -> SegmentMeasures:
    """Every measure of one segment ``frames [F, H, W, 3]`` uint8 (F >= 3) starting at frame
    ``start``, the drifts against ``first``."""
    if len(frames) < 3:
        raise ValueError(f"a segment needs at least 3 frames, got {len(frames)}")
    luma = luminance(frames)
    motion, dynamic = motion_and_dynamic(luma)
    if first.background.shape != frames.shape[1:]:
        raise ValueError(f"frames {frames.shape[1:]} differ from the first segment's size")
    return SegmentMeasures(
        start=start,
        frames=len(frames),
        flicker=flicker(luma),
        sharpness=sharpness(luma),
        motion=motion,
        dynamic_degree=dynamic,
        colour_drift=float(np.abs(colour_histogram(frames) - first.histogram).sum() / 2),
        background_drift=float(np.abs(background(frames) - first.background).mean()),
    )


def drift(segments: list[SegmentMeasures]) -> dict[str, float]:
    """Each measure of the last segment minus that of the first (signed)."""
    first, last = segments[0].as_dict(), segments[-1].as_dict()
    return {name: last[name] - first[name] for name in MEASURES}
