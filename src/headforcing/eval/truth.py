"""Ground truth for toy-world videos: what the video should show, known from its metadata.

A video made by the trained toy model (``generate``, ``demo`` or ``interactive`` with the
default model) carries its prompt or prompt schedule. The true clip of a prompt is its canonical
start (:func:`~headforcing.toyworld.world.render_clip` with ``seed=None``: the clip the model was
trained to continue; the run's seed drives the sampler's noise, not the world), and the
toy-world metrics (:mod:`headforcing.toyworld.metrics`) compare every frame with the scene it
should show. Nothing here is new: it is :func:`~headforcing.toyworld.metrics.video_metrics` on
the video's frames, at the size the model made them.
"""

from __future__ import annotations

import numpy as np

from headforcing.toyworld.metrics import SegmentMetrics, video_metrics
from headforcing.toyworld.world import Scene


def has_truth(metadata: dict | None) -> bool:
    """Whether the video was made by the trained toy-world model (random weights: no truth)
    from prompts known in advance (an ``interactive`` video's later prompts are not stored)."""
    return bool(
        metadata
        and metadata.get("preset") == "toy"
        and str(metadata.get("weights", "")).startswith("toy-")
        and not metadata.get("live")
    )


def true_scenes(metadata: dict, num_frames: int) -> list[Scene]:
    """The scene of every pixel frame: the prompt's, or the schedule's prompt at that frame
    (latent frame starts times the temporal stride: 1 for the toy model)."""
    stride = int(metadata.get("vae_stride", 1))
    if "schedule" in metadata:
        schedule = [
            (int(start) * stride, Scene.from_prompt(text)) for start, text in metadata["schedule"]
        ]
    else:
        schedule = [(0, Scene.from_prompt(metadata["prompt"]))]
    scenes = []
    for index, (start, scene) in enumerate(schedule):
        end = schedule[index + 1][0] if index + 1 < len(schedule) else num_frames
        scenes += [scene] * max(0, min(end, num_frames) - start)
    return scenes


def truth_metrics(frames: np.ndarray, metadata: dict, segment_frames: int) -> list[SegmentMetrics]:
    """Toy-world metrics of every segment of ``frames [F, 32, 32, 3]`` uint8 against the truth."""
    return video_metrics(frames, true_scenes(metadata, len(frames)), segment_frames)
