"""Video files through PyAV (its bundled FFmpeg with libx264).

MP4 files are written fragmented (``frag_keyframe+empty_moov``): a run stopped early (Ctrl-C,
a consumer that stops reading) closes the writer and leaves a playable video of every finished
chunk. Frames still inside the encoder are lost only on a hard crash; ``live=True`` (interactive
mode) flushes every frame as it comes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class VideoWriter:
    """Append uint8 frames ``[F, H, W, 3]`` to an H.264 MP4 as they arrive.

    Parameters
    ----------
    path:
        Output file; its folder is created.
    fps:
        Frames per second (16 for Wan).
    crf:
        x264 constant rate factor: 0 lossless, 18 visually lossless, 23 default.
    live:
        Keep the file on disk playable up to the newest frames while it grows (interactive
        mode): one fragment per frame, flushed at once, no encoder look-ahead. Otherwise x264
        buffers frames and the file is complete once closed.
    """

    def __init__(self, path: str | Path, fps: int, crf: int = 18, live: bool = False) -> None:
        import av

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps = fps
        self.crf = crf
        self.live = live
        self.frames_written = 0
        movflags = "frag_keyframe+empty_moov+default_base_moof"
        options = {"movflags": movflags}
        if live:
            options = {"movflags": movflags + "+frag_every_frame", "flush_packets": "1"}
        self._container = av.open(str(self.path), mode="w", options=options)
        self._stream = None

    def _open_stream(self, height: int, width: int) -> None:
        if height % 2 or width % 2:
            raise ValueError(f"H.264 needs an even frame size, got {width}x{height}")
        self._stream = self._container.add_stream("libx264", rate=self.fps)
        self._stream.height, self._stream.width = height, width
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": str(self.crf)}
        if self.live:
            self._stream.options = {"crf": str(self.crf), "tune": "zerolatency"}

    def write(self, frames: torch.Tensor) -> None:
        import av

        if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected uint8 frames [F, H, W, 3], got {tuple(frames.shape)}")
        if self._stream is None:
            self._open_stream(frames.shape[1], frames.shape[2])
        for frame in frames.numpy():
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            self._container.mux(self._stream.encode(video_frame))
            self.frames_written += 1

    def close(self) -> None:
        if self._container is None:
            return
        if self._stream is not None:
            self._container.mux(self._stream.encode(None))
        self._container.close()
        self._container = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_video(path: str | Path) -> torch.Tensor:
    """All frames of a video file as uint8 ``[F, H, W, 3]``."""
    import av

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not frames:
        return torch.empty(0, 0, 0, 3, dtype=torch.uint8)
    return torch.from_numpy(np.stack(frames))
