"""What made a video, stored in the video: the record ``generate``, ``demo`` and
``interactive`` write into the MP4 (:func:`~headforcing.io.video.read_metadata` reads it back).

``headforcing eval`` needs it to find a toy-world video's ground truth (the prompt or schedule,
the preset, the display scale) and the frames of one latent segment (fps, temporal stride); a
person reading ``ffprobe`` output sees the prompt, seed and policy.
"""

from __future__ import annotations

import headforcing
from headforcing.io.video import METADATA_KEY


def run_metadata(pipeline, prompts, seed: int, policy, num_frames: int) -> dict:
    """The record of one run: ``prompts`` is a prompt or a
    :class:`~headforcing.schedule.PromptSchedule`; ``num_frames`` in latent frames."""
    video = pipeline.preset.video
    record = {
        METADATA_KEY: headforcing.__version__,
        "preset": pipeline.preset.name,
        "weights": pipeline.weights_id,
        "fps": video.fps,
        "vae_stride": video.vae_stride[0],
        "trained_frames": video.trained_frames,
        "seed": seed,
        "policy": policy.describe(),
        "positions": policy.positions,
        "frames": num_frames,
    }
    if isinstance(prompts, str):
        record["prompt"] = prompts
    else:
        record["schedule"] = [[segment.start, segment.prompt] for segment in prompts.segments]
    return record
