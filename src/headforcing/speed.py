"""Frames per second the way users compare them: the DiT alone and end to end, with the device,
the steps and the chunk size that produced them (REFERENCE.md section 3.1b: nobody can
reproduce an FPS claim that does not say whether the VAE is in it).

DiT-only time is measured per chunk around the transformer's work: its denoising passes, its
commit pass and a re-cache at a prompt switch, not the text encoder. On CUDA it is the time the
device spent between two events on the generating stream (the host queues work ahead; its own
clock would measure the queueing); on the CPU the host's clock. End to end is the wall time from
the start of the first chunk to the last chunk written: the DiT, the decoder (beside the next
chunk) and the video writer; loading and a head-map calibration before the first chunk are not
in it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


def mark(device: torch.device) -> float | torch.cuda.Event:
    """A point in the device's work: a recorded CUDA event, or the host's clock."""
    if device.type != "cuda":
        return time.perf_counter()
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


@dataclass(frozen=True)
class Span:
    """The device work of one chunk, between two :func:`mark` s; ``began``: the host's clock
    when it started."""

    start: float | torch.cuda.Event
    end: float | torch.cuda.Event
    began: float

    def seconds(self) -> float:
        """Seconds between the marks (on CUDA this waits for the end mark)."""
        if isinstance(self.start, float):
            return self.end - self.start
        self.end.synchronize()
        return self.start.elapsed_time(self.end) / 1000


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"CPU ({threads} thread{'s' if threads > 1 else ''})"


@dataclass(frozen=True)
class RunSpeed:
    """What a run reached: ``frames`` video frames in ``dit_seconds`` of DiT work and
    ``wall_seconds`` end to end."""

    frames: int
    dit_seconds: float
    wall_seconds: float
    device: str
    dtype: str
    steps: int
    chunk_frames: int
    temporal_stride: int

    def line(self) -> str:
        def rate(seconds: float) -> str:
            return f"{self.frames / seconds:.2f}" if seconds > 0 else "-"

        return (
            f"speed: {rate(self.dit_seconds)} frames/s DiT only, {rate(self.wall_seconds)} "
            f"frames/s end to end (decode and writing included), on {self.device} ({self.dtype}), "
            f"{self.steps} denoising steps + 1 commit pass per chunk of {self.chunk_frames} "
            f"latent frames ({self.chunk_frames * self.temporal_stride} video frames)"
        )


def run_speed(pipeline, frames: int, dit_seconds: float, wall_seconds: float) -> RunSpeed:
    """The :class:`RunSpeed` of a run of ``pipeline``."""
    video = pipeline.preset.video
    return RunSpeed(
        frames=frames,
        dit_seconds=dit_seconds,
        wall_seconds=wall_seconds,
        device=device_name(pipeline.model.device),
        dtype=str(pipeline.model.dtype).removeprefix("torch."),
        steps=len(pipeline.schedule.steps),
        chunk_frames=video.chunk_frames,
        temporal_stride=video.vae_stride[0],
    )
