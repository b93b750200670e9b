"""The videos ``eval`` measures and how they are cut into segments.

A file is one video, or, for a ``headforcing demo`` file, one video per panel (the metadata
names each panel and where it sits). A video written with ``--scale`` is measured at the size
the model made it: the scale is undone (block mean) before anything is measured.

A segment is the stretch of frames the model was trained on, by default ``trained_frames`` latent
frames' worth of pixel frames: ``(21 - 1) x 4 + 1 = 81`` frames for Wan2.1 (16 fps, 5 s),
``21`` for the toy model (temporal stride 1), and 81 for a video without our metadata. A last
piece shorter than half a segment joins the one before it (the toy-world metrics' rule, so both
see the same segments).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from headforcing.io.scale import downscale

DEFAULT_TRAINED_FRAMES = 21  # Wan2.1 / Self-Forcing: latent frames per training clip
DEFAULT_VAE_STRIDE = 4
MIN_SEGMENT_FRAMES = 6  # a merged last piece keeps >= 3 frames: flicker needs 3


@dataclass(frozen=True)
class Panel:
    """A rectangle of the frame (display pixels) that holds one video."""

    name: str
    top: int
    left: int
    height: int
    width: int


@dataclass(frozen=True)
class VideoSource:
    """One video to measure: ``path``, its label, the panel it fills (None: the whole frame),
    the scale to undo and the file's metadata (None without ours)."""

    path: Path
    label: str
    panel: Panel | None = None
    scale: int = 1
    metadata: dict | None = field(default=None, compare=False)


def sources(path: Path) -> list[VideoSource]:
    """The videos in the file at ``path``: one, or one per panel of a demo file."""
    from headforcing.io.video import read_metadata

    metadata = read_metadata(path)
    scale = int(metadata.get("scale", 1)) if metadata else 1
    if metadata and metadata.get("panels"):
        return [
            VideoSource(path, f"{path.name}: {panel['name']}", Panel(**panel), scale, metadata)
            for panel in metadata["panels"]
        ]
    label = path.name
    if metadata and metadata.get("policy"):
        label = f"{path.name} ({metadata['policy']})"
    return [VideoSource(path, label, None, scale, metadata)]


def default_segment_frames(metadata: dict | None) -> int:
    """Pixel frames in ``trained_frames`` latent frames of the model that made the video."""
    metadata = metadata or {}
    trained = int(metadata.get("trained_frames", DEFAULT_TRAINED_FRAMES))
    stride = int(metadata.get("vae_stride", DEFAULT_VAE_STRIDE))
    return (trained - 1) * stride + 1


def frames_of(source: VideoSource) -> Iterator[np.ndarray]:
    """The frames of ``source`` one by one, ``[H, W, 3]`` uint8 at the size the model made."""
    import av

    with av.open(str(source.path)) as container:
        for frame in container.decode(video=0):
            image = frame.to_ndarray(format="rgb24")
            if source.panel is not None:
                panel = source.panel
                image = image[
                    panel.top : panel.top + panel.height, panel.left : panel.left + panel.width
                ]
            yield downscale(image[None], source.scale)[0]


def segments(frames: Iterator[np.ndarray], segment_frames: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, frames [F, H, W, 3])`` of every segment, read as the frames stream in."""
    if segment_frames < MIN_SEGMENT_FRAMES:
        raise ValueError(
            f"--segment-frames {segment_frames}: give at least {MIN_SEGMENT_FRAMES} frames"
        )
    pending: list[np.ndarray] = []
    start = 0
    for frame in frames:
        pending.append(frame)
        # a segment is final once half a segment follows it: that piece cannot join it
        if len(pending) == segment_frames + segment_frames // 2:
            yield start, np.stack(pending[:segment_frames])
            pending = pending[segment_frames:]
            start += segment_frames
    if len(pending) > 0:
        yield start, np.stack(pending)
