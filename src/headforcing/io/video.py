"""Video files through PyAV (its bundled FFmpeg with libx264).

MP4 files are written fragmented (``frag_keyframe+empty_moov``), one fragment per chunk: each
:meth:`VideoWriter.write` call is one chunk, its first frame is a keyframe, and the encoder has no
look-ahead (``tune=zerolatency``: no B-frames, every frame's packet comes out at once), so the
muxer cuts a fragment at every chunk start and writes it to the file at once
(``flush_packets``). What is on disk when the process stops:

- a stop the process sees (Ctrl-C, a second Ctrl-C, SIGTERM, a consumer that stops reading):
  the writer is closed, and the file holds every chunk written;
- SIGKILL, a power cut, a crash in native code: the file holds every chunk but the newest
  written one (its fragment is cut when the next chunk starts); ``live=True`` (interactive
  mode) cuts a fragment per frame and loses only the newest frame.

Every such file plays and decodes; fragments are never left half-described because each one is
written whole (moof then mdat) by one flush.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from headforcing.io.scale import upscale

METADATA_TAG = "comment"  # an MP4 tag FFmpeg writes into moov/udta and every player lists
METADATA_KEY = "headforcing"  # marks our JSON among other tools' comments


class VideoWriter:
    """Append uint8 frames ``[F, H, W, 3]`` to an H.264 MP4, one chunk per :meth:`write`.

    Parameters
    ----------
    path:
        Output file; its folder is created. A symbolic link is refused, and an existing file
        unless ``overwrite`` (:func:`headforcing.io.files.check_output_path` checks the same
        before a command starts).
    fps:
        Frames per second (16 for Wan).
    crf:
        x264 constant rate factor: 0 lossless, 18 visually lossless, 23 default.
    live:
        One fragment per frame, not per chunk (interactive mode: the file on disk plays up to
        the newest frame while it grows).
    overwrite:
        Replace an existing file (a regular one; links are always refused).
    scale:
        Show every pixel as a ``scale`` x ``scale`` block (nearest neighbour,
        :mod:`headforcing.io.scale`): 32x32 toy frames become visible.
    metadata:
        What made the video (prompt, seed, policy, preset, ...): stored as JSON in the
        container's ``comment`` tag, read back by :func:`read_metadata` (``headforcing eval``).
    """

    def __init__(
        self,
        path: str | Path,
        fps: int,
        crf: int = 18,
        live: bool = False,
        overwrite: bool = False,
        scale: int = 1,
        metadata: dict | None = None,
    ) -> None:
        import av

        self.path = Path(path)
        if self.path.is_symlink():
            raise ValueError(
                f"{self.path} is a symbolic link; the video is never written through one"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # create the file ourselves: O_EXCL refuses an existing one, O_NOFOLLOW a link
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_TRUNC if overwrite else os.O_EXCL)
        try:
            os.close(os.open(self.path, flags, 0o644))
        except FileExistsError:
            raise ValueError(
                f"{self.path} already exists; pass overwrite=True to replace it"
            ) from None
        self.fps = fps
        self.crf = crf
        self.live = live
        self.scale = scale
        self.frames_written = 0
        movflags = "frag_keyframe+empty_moov+default_base_moof"
        if live:
            movflags += "+frag_every_frame"
        options = {"movflags": movflags, "flush_packets": "1"}
        self._container = av.open(str(self.path), mode="w", options=options)
        if metadata is not None:  # the moov box is written with the first fragment: set it now
            self._container.metadata[METADATA_TAG] = json.dumps({"scale": scale, **metadata})
        self._stream = None

    def _open_stream(self, height: int, width: int) -> None:
        if height % 2 or width % 2:
            raise ValueError(f"H.264 needs an even frame size, got {width}x{height}")
        self._stream = self._container.add_stream("libx264", rate=self.fps)
        self._stream.height, self._stream.width = height, width
        self._stream.pix_fmt = "yuv420p"
        # zerolatency: no look-ahead and no B-frames, so a chunk's packets leave the encoder
        # with its last frame; forced-idr: a chunk's first frame is an IDR frame, a fragment cut
        self._stream.options = {"crf": str(self.crf), "tune": "zerolatency", "forced-idr": "1"}

    def write(self, frames: torch.Tensor) -> None:
        """Append one chunk: its first frame starts a new keyframe and fragment."""
        import av

        if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected uint8 frames [F, H, W, 3], got {tuple(frames.shape)}")
        if self._container is None:
            raise ValueError(f"{self.path} is closed")
        frames = upscale(frames, self.scale)
        if self._stream is None:
            self._open_stream(frames.shape[1], frames.shape[2])
        for offset, frame in enumerate(frames.numpy()):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            if offset == 0:
                video_frame.pict_type = av.video.frame.PictureType.I
            self._container.mux(self._stream.encode(video_frame))
            self.frames_written += 1

    def close(self) -> None:
        """Drain the encoder and write the last fragment. Wrap it in
        :func:`~headforcing.interrupts.deferred_interrupt` where a signal may arrive."""
        if self._container is None:
            return
        container, self._container = self._container, None
        try:
            if self._stream is not None:
                container.mux(self._stream.encode(None))
        finally:
            container.close()

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


def read_metadata(path: str | Path) -> dict | None:
    """What :class:`VideoWriter` stored about how the video was made, or None for a video
    that does not carry it (another tool's file, or one written without metadata)."""
    import av

    with av.open(str(path)) as container:
        text = container.metadata.get(METADATA_TAG)
    try:
        metadata = json.loads(text) if text else None
    except json.JSONDecodeError:
        return None
    return metadata if isinstance(metadata, dict) and METADATA_KEY in metadata else None
