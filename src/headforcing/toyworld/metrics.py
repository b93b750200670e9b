"""Quality of a toy-world video against the truth, per segment, and its drift.

Every metric is a function of the frames (``[F, H, W, 3]`` uint8, or float in [-1, 1]) and the
scene each frame should show (:class:`~headforcing.toyworld.world.Scene`, known from the prompt).
A pixel is *foreground* where it differs from the scene's true background by more than
``FOREGROUND_THRESHOLD`` in some channel; sprites are the 8-connected foreground components of at
least ``MIN_SPRITE_AREA`` pixels. Real clips score exactly 0 on the errors, 0 on teleports, about 1
on the sharpness ratio, and their sprites' true speed on motion.

=================  ==========================================================  ===============
metric             definition                                                  real clips
=================  ==========================================================  ===============
background_error   mean |frame - true background| (in [0, 1]) over the        0
                   pixels left after dropping the most-different 1.5x the
                   scene's sprite area (so noise scores high, sprites don't)
flicker            the same trimmed mean of |frame_t - frame_t-1| (static      0
                   pixels change only where a sprite passes)
count_error        mean |sprites found - sprites in the prompt| per frame      0
colour_error       mean distance (in [0, 1]) of each prompt sprite's colour    0
                   to its greedily matched sprite's mean colour; 1 if unmatched
sharpness_ratio    Laplacian energy / that of a real clip of the same scene    ~1
motion             mean centroid displacement (pixels/frame) of sprites        ~1.4
                   matched between consecutive frames (frozen video: 0)
teleport_rate      share of those displacements above ``TELEPORT_PIXELS``       0
                   (far above the world's top speed)
=================  ==========================================================  ===============

Drift is ``|metric(last segment) - metric(first segment)|``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from headforcing.toyworld.world import MAX_SPEED, Scene, render_clip

FOREGROUND_THRESHOLD = 60  # uint8 levels: sprites differ from every background by > 100
MIN_SPRITE_AREA = 6  # pixels: smaller components are specks, not sprites
TELEPORT_PIXELS = 3 * MAX_SPEED * math.sqrt(2)  # 3x the world's top speed (diagonal)
TRIM_FACTOR = 1.5  # pixels dropped from background statistics, in units of the sprite area
SEGMENT_FRAMES = 21
_MAX_COLOUR_DISTANCE = 255 * math.sqrt(3)


@dataclass(frozen=True)
class Blob:
    """One found sprite: centroid (row, col), area in pixels, mean colour (uint8 scale)."""

    centroid: np.ndarray
    area: int
    colour: np.ndarray


@dataclass(frozen=True)
class SegmentMetrics:
    """Metrics of one segment; see the module docstring for each definition."""

    background_error: float
    flicker: float
    count_error: float
    colour_error: float
    sharpness_ratio: float
    motion: float
    teleport_rate: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def as_uint8_video(frames: np.ndarray | torch.Tensor) -> np.ndarray:
    """``[F, H, W, 3]`` uint8, or float in [-1, 1] -> ``[F, H, W, 3]`` uint8 numpy."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames [F, H, W, 3], got shape {frames.shape}")
    if frames.dtype == np.uint8:
        return frames
    if not np.issubdtype(frames.dtype, np.floating):
        raise ValueError(f"frames must be uint8 or float in [-1, 1], got {frames.dtype}")
    return np.round((np.clip(frames, -1, 1) + 1) * 127.5).astype(np.uint8)


def _per_frame_scenes(scenes: Scene | Sequence[Scene], num_frames: int) -> list[Scene]:
    if isinstance(scenes, Scene):
        return [scenes] * num_frames
    scenes = list(scenes)
    if len(scenes) != num_frames:
        raise ValueError(f"got {len(scenes)} scenes for {num_frames} frames")
    return scenes


def _backgrounds(scenes: list[Scene]) -> np.ndarray:
    """``[F, H, W, 3]`` int16 true background of every frame."""
    cache: dict[tuple[str, str, int], np.ndarray] = {}
    for scene in scenes:
        key = (scene.background, scene.pattern, scene.size)
        if key not in cache:
            cache[key] = scene.background_image().astype(np.int16)
    return np.stack([cache[(s.background, s.pattern, s.size)] for s in scenes])


def _sprite_area(scene: Scene) -> int:
    return sum(sprite.area for sprite in scene.sprites)


def _trimmed_mean(values: np.ndarray, ranking: np.ndarray, drop: int) -> float:
    """Mean of ``values [P]`` after dropping the ``drop`` entries ranked highest by ``ranking``."""
    keep = np.argsort(ranking, kind="stable")[: max(len(values) - drop, 1)]
    return float(values[keep].mean())


def label_components(mask: np.ndarray) -> np.ndarray:
    """8-connected components of ``mask [F, H, W]``: labels ``[F, H, W]`` (0 = background).

    Label propagation (every pixel takes the largest label among its foreground neighbours until
    nothing changes), vectorised over frames; numpy only.
    """
    height, width = mask.shape[1:]
    labels = np.where(mask, np.arange(1, mask.size + 1).reshape(mask.shape), 0)
    while True:
        padded = np.pad(labels, ((0, 0), (1, 1), (1, 1)))
        neighbours = [
            padded[:, 1 + dr : 1 + dr + height, 1 + dc : 1 + dc + width]
            for dr in (-1, 0, 1)
            for dc in (-1, 0, 1)
        ]
        updated = np.where(mask, np.max(neighbours, axis=0), 0)
        if np.array_equal(updated, labels):
            return labels
        labels = updated


def find_sprites(frames: np.ndarray, scenes: Scene | Sequence[Scene]) -> list[list[Blob]]:
    """The sprites found in every frame (components of foreground of >= MIN_SPRITE_AREA)."""
    frames = as_uint8_video(frames)
    backgrounds = _backgrounds(_per_frame_scenes(scenes, len(frames)))
    difference = np.abs(frames.astype(np.int16) - backgrounds).max(axis=-1)
    labels = label_components(difference > FOREGROUND_THRESHOLD)
    rows, cols = np.mgrid[0 : frames.shape[1], 0 : frames.shape[2]]
    found = []
    for frame, frame_labels in zip(frames, labels, strict=True):
        blobs = []
        for label in np.unique(frame_labels[frame_labels > 0]):
            pixels = frame_labels == label
            area = int(pixels.sum())
            if area >= MIN_SPRITE_AREA:
                centroid = np.array([rows[pixels].mean(), cols[pixels].mean()])
                blobs.append(Blob(centroid, area, frame[pixels].mean(axis=0)))
        found.append(blobs)
    return found


def _greedy_pairs(cost: np.ndarray) -> list[tuple[int, int]]:
    """Pairs (row, col) of a greedy minimum-cost matching of ``cost [R, C]``."""
    pairs, used_rows, used_cols = [], set(), set()
    for flat in np.argsort(cost, axis=None, kind="stable"):
        row, col = divmod(int(flat), cost.shape[1])
        if row not in used_rows and col not in used_cols:
            pairs.append((row, col))
            used_rows.add(row)
            used_cols.add(col)
    return pairs


def colour_error(blobs: list[Blob], scene: Scene) -> float:
    """Mean distance (in [0, 1]) of each prompt sprite's colour to its matched blob's colour."""
    return sum(colour_error_parts(blobs, scene))


def colour_error_parts(blobs: list[Blob], scene: Scene) -> tuple[float, float]:
    """:func:`colour_error` as ``(unmatched, matched)``: the share of prompt sprites that no blob
    matches (each counts 1) and the summed distance of the matched ones, over the sprite count."""
    expected = np.array([sprite.rgb for sprite in scene.sprites], dtype=float)
    if not blobs:
        return 1.0, 0.0
    found = np.stack([blob.colour for blob in blobs])
    cost = np.linalg.norm(expected[:, None] - found[None], axis=-1) / _MAX_COLOUR_DISTANCE
    distances = [cost[row, col] for row, col in _greedy_pairs(cost)]
    unmatched = len(expected) - len(distances)
    return unmatched / len(expected), float(np.sum(distances)) / len(expected)


def displacements(sprites: list[list[Blob]], colour_tolerance: float = 0.25) -> np.ndarray:
    """Centroid displacement of every blob matched between consecutive frames (nearest blob of
    similar colour, greedy), ``[M]`` pixels."""
    moves = []
    for before, after in itertools.pairwise(sprites):
        if not before or not after:
            continue
        centroids_b = np.stack([b.centroid for b in before])
        centroids_a = np.stack([b.centroid for b in after])
        distance = np.linalg.norm(centroids_b[:, None] - centroids_a[None], axis=-1)
        colours_b = np.stack([b.colour for b in before])
        colours_a = np.stack([b.colour for b in after])
        colour = np.linalg.norm(colours_b[:, None] - colours_a[None], axis=-1)
        distance = np.where(colour / _MAX_COLOUR_DISTANCE > colour_tolerance, np.inf, distance)
        moves += [distance[r, c] for r, c in _greedy_pairs(distance) if np.isfinite(distance[r, c])]
    return np.array(moves)


def laplacian_energy(frames: np.ndarray) -> float:
    """Mean squared 4-neighbour Laplacian of the frames (values in [0, 1])."""
    video = as_uint8_video(frames).astype(np.float64) / 255
    padded = np.pad(video, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    laplacian = (
        padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:]
    ) - 4 * video
    return float((laplacian**2).mean())


def _reference_energy(scenes: list[Scene]) -> float:
    """Laplacian energy of real clips of the same scenes (seed 0), weighted by frame count."""
    energy = 0.0
    for scene in dict.fromkeys(scenes):
        count = sum(s == scene for s in scenes)
        energy += count * laplacian_energy(render_clip(scene, max(count, 2), seed=0))
    return energy / len(scenes)


def segment_metrics(
    frames: np.ndarray | torch.Tensor, scenes: Scene | Sequence[Scene]
) -> SegmentMetrics:
    """All metrics of one segment: ``frames [F, H, W, 3]`` and the scene of every frame
    (one :class:`Scene` for the whole segment, or one per frame)."""
    frames = as_uint8_video(frames)
    if len(frames) < 2:
        raise ValueError(f"a segment needs at least 2 frames, got {len(frames)}")
    scenes = _per_frame_scenes(scenes, len(frames))
    if frames.shape[1:3] != (scenes[0].size, scenes[0].size):
        raise ValueError(f"frames are {frames.shape[1:3]}, the scene is {scenes[0].size} square")
    video = frames.astype(np.int16)
    error = np.abs(video - _backgrounds(scenes)).max(axis=-1) / 255  # [F, H, W]

    background = [
        _trimmed_mean(e.ravel(), e.ravel(), math.ceil(TRIM_FACTOR * _sprite_area(s)))
        for e, s in zip(error, scenes, strict=True)
    ]
    change = np.abs(np.diff(video, axis=0)).max(axis=-1) / 255  # [F - 1, H, W]
    flicker = [
        _trimmed_mean(
            change[t].ravel(),
            np.maximum(error[t], error[t + 1]).ravel(),
            math.ceil(TRIM_FACTOR * (_sprite_area(scenes[t]) + _sprite_area(scenes[t + 1]))),
        )
        for t in range(len(change))
    ]

    sprites = find_sprites(frames, scenes)
    counts = [abs(len(b) - len(s.sprites)) for b, s in zip(sprites, scenes, strict=True)]
    colours = [colour_error(b, s) for b, s in zip(sprites, scenes, strict=True)]
    moves = displacements(sprites)
    return SegmentMetrics(
        background_error=float(np.mean(background)),
        flicker=float(np.mean(flicker)),
        count_error=float(np.mean(counts)),
        colour_error=float(np.mean(colours)),
        sharpness_ratio=laplacian_energy(frames) / _reference_energy(scenes),
        motion=float(moves.mean()) if len(moves) else 0.0,
        teleport_rate=float((moves > TELEPORT_PIXELS).mean()) if len(moves) else 0.0,
    )


def segment_bounds(num_frames: int, segment_frames: int = SEGMENT_FRAMES) -> list[tuple[int, int]]:
    """``(start, end)`` frame indices of every segment of a ``num_frames`` video: runs of
    ``segment_frames``, a last piece shorter than half a segment merged into the previous one."""
    if segment_frames < 2:
        raise ValueError(f"segment_frames must be >= 2, got {segment_frames}")
    bounds = [*range(0, num_frames, segment_frames), num_frames]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < segment_frames // 2:
        del bounds[-2]
    return list(itertools.pairwise(bounds))


def video_metrics(
    frames: np.ndarray | torch.Tensor,
    scenes: Scene | Sequence[Scene],
    segment_frames: int = SEGMENT_FRAMES,
) -> list[SegmentMetrics]:
    """Metrics of every segment of a video (:func:`segment_bounds`)."""
    frames = as_uint8_video(frames)
    scenes = _per_frame_scenes(scenes, len(frames))
    return [
        segment_metrics(frames[start:end], scenes[start:end])
        for start, end in segment_bounds(len(frames), segment_frames)
    ]


def drift(segments: Sequence[SegmentMetrics]) -> dict[str, float]:
    """``|metric(last segment) - metric(first segment)|`` for every metric."""
    if not segments:
        raise ValueError("no segments")
    first, last = segments[0].as_dict(), segments[-1].as_dict()
    return {name: abs(last[name] - first[name]) for name in first}
