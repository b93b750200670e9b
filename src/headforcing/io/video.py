"""Video files through PyAV (its bundled FFmpeg with libx264).

While a run goes on, MP4 files are written fragmented (``frag_keyframe+empty_moov``), one
fragment per chunk: each :meth:`VideoWriter.write` call is one chunk, its first frame is a
keyframe, and the encoder has no look-ahead (``tune=zerolatency``: no B-frames, every frame's
packet comes out at once), so the muxer cuts a fragment at every chunk start and writes it to
the file at once (``flush_packets``). When the run ends as planned, :meth:`VideoWriter.finish`
rewrites the file as a plain MP4 with its index in front (``movflags=faststart``, the packets
copied, nothing re-encoded; written beside and renamed over it), so browsers over HTTP, editors
and upload sites see the whole duration at once and can seek. What is on disk when the process
stops before that:

- nothing, if no chunk was written: the file is written beside its name (a hidden ``.part``
  file) and renamed into place once it holds a whole chunk (at the second chunk, or when it is
  closed), so no stop or error leaves an empty file that blocks a rerun;
- a stop the process sees (Ctrl-C, a second Ctrl-C, SIGTERM, a consumer that stops reading):
  the writer is closed (:meth:`VideoWriter.close`), and the file, still fragmented, holds every
  chunk written;
- SIGKILL, a power cut, a crash in native code: the file holds every chunk but the newest
  written one (its fragment is cut when the next chunk starts); ``live=True`` (interactive
  mode) cuts a fragment per frame and loses only the newest frame. Before the second chunk
  the only trace is the hidden ``.part`` file.

Every such file plays and decodes; fragments are never left half-described because each one is
written whole (moof then mdat) by one flush.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import torch

from headforcing.io.files import beside, check_output_path, publish, written_beside
from headforcing.io.scale import upscale

METADATA_TAG = "comment"  # an MP4 tag FFmpeg writes into moov/udta and every player lists
METADATA_KEY = "headforcing"  # marks our JSON among other tools' comments

# The largest frame the H.264 encoder takes, measured with PyAV 18.1 (FFmpeg 8, libx264):
# libx264 refuses a side over 16384 px ("invalid width x height (16400x16)" in avcodec_open2),
# and FFmpeg allocates no picture with 8 * (width + 128) * (height + 128) >= 2**31 - 1
# (av_image_check_size: 16384 x 16128 encodes, 16384 x 16130 does not).
MAX_FRAME_SIDE = 16384
IMAGE_BYTES_LIMIT = 2**31 - 1


def check_frame_size(height: int, width: int, scale: int = 1, scale_text: str = "") -> None:
    """Refuse frames the H.264 encoder cannot take, before anything runs: ``height`` x
    ``width`` model frames written at ``scale`` x ``scale`` pixels per pixel (``scale_text``:
    how it was asked, e.g. ``auto = 8``)."""
    shown_height, shown_width = height * scale, width * scale
    given = f"--width {width} --height {height}: " if scale_text else ""
    written = f"{shown_width}x{shown_height}"
    if scale != 1:
        written += f" ({width}x{height} at --scale {scale_text or scale})"
    fix = "give a smaller --width/--height" + (", or a smaller --scale" if scale != 1 else "")
    if shown_height % 2 or shown_width % 2:
        raise ValueError(f"{given}H.264 needs an even frame size, got {written}; {fix}")
    if max(shown_height, shown_width) > MAX_FRAME_SIDE:
        raise ValueError(
            f"{given}the video's frames would be {written} px; the H.264 encoder takes at "
            f"most {MAX_FRAME_SIDE} px a side: {fix}"
        )
    if 8 * (shown_width + 128) * (shown_height + 128) >= IMAGE_BYTES_LIMIT:
        raise ValueError(
            f"{given}the video's frames would be {written} px; FFmpeg takes at most about "
            f"{16384 * 16128 / 1e6:.0f} million pixels a frame (16384x16128): {fix}"
        )


class VideoWriter:
    """Append uint8 frames ``[F, H, W, 3]`` to an H.264 MP4, one chunk per :meth:`write`;
    :meth:`finish` when the video is complete, :meth:`close` when it was cut short.

    Parameters
    ----------
    path:
        Output file (:func:`~headforcing.io.files.check_output_path`'s rule): refused when
        it is a symbolic link, and when it exists unless ``overwrite``. Nothing is created
        until the first chunk; the file appears at ``path`` once it holds a whole chunk.
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
        container's ``comment`` tag, read back by :func:`read_metadata` (``headforcing eval``);
        kept when :meth:`finish` rewrites the file.
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
        self.path = check_output_path(path, option="video", overwrite=overwrite)
        self.fps = fps
        self.crf = crf
        self.live = live
        self.overwrite = overwrite
        self.scale = scale
        self.metadata = None if metadata is None else {"scale": scale, **metadata}
        self.frames_written = 0
        self.chunks_written = 0
        self.finished = False  # rewritten as a plain MP4 by finish()
        self._written: Path | None = None  # the file beside ``path`` until it is published
        self._published = False
        self._closed = False
        self._container = None
        self._stream = None

    def _open(self, height: int, width: int) -> None:
        import av

        check_frame_size(height, width)
        self._written = beside(self.path)
        movflags = "frag_keyframe+empty_moov+default_base_moof"
        if self.live:
            movflags += "+frag_every_frame"
        options = {"movflags": movflags, "flush_packets": "1"}
        try:
            self._container = av.open(str(self._written), mode="w", options=options)
            if self.metadata is not None:  # the moov box is written with the first fragment
                self._container.metadata[METADATA_TAG] = json.dumps(self.metadata)
            self._stream = self._container.add_stream("libx264", rate=self.fps)
            self._stream.height, self._stream.width = height, width
            self._stream.pix_fmt = "yuv420p"
            # zerolatency: no look-ahead and no B-frames, so a chunk's packets leave the
            # encoder with its last frame; forced-idr: a chunk's first frame is an IDR frame,
            # a fragment cut
            self._stream.options = {"crf": str(self.crf), "tune": "zerolatency", "forced-idr": "1"}
        except BaseException:
            self._discard()
            raise

    def write(self, frames: torch.Tensor) -> None:
        """Append one chunk: its first frame starts a new keyframe and fragment."""
        import av

        if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected uint8 frames [F, H, W, 3], got {tuple(frames.shape)}")
        if self._closed:
            raise ValueError(f"{self.path} is closed")
        frames = upscale(frames, self.scale)
        if self._container is None:
            self._open(frames.shape[1], frames.shape[2])
        for offset, frame in enumerate(frames.numpy()):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            if offset == 0:
                video_frame.pict_type = av.video.frame.PictureType.I
            self._container.mux(self._stream.encode(video_frame))
            self.frames_written += 1
        self.chunks_written += 1
        if self.chunks_written >= 2 and not self._published:  # chunk 1's fragment is on disk
            self._publish()

    def _publish(self) -> None:
        publish(self._written, self.path, self.overwrite)
        self._published = True

    def _discard(self) -> None:
        if self._written is not None and not self._published:
            self._written.unlink(missing_ok=True)

    def close(self) -> None:
        """Drain the encoder and write the last fragment: the file stays fragmented (a run cut
        short). Nothing is left at ``path`` if no chunk was written. Wrap it in
        :func:`~headforcing.interrupts.deferred_interrupt` where a signal may arrive."""
        if self._closed:
            return
        self._closed = True
        container, self._container = self._container, None
        if container is None:  # no chunk: no file
            return
        if self.frames_written == 0:  # the first chunk failed: no file, and no second error
            with contextlib.suppress(Exception):  # the first chunk's error is the one to report
                container.close()
            self._discard()
            return
        try:
            try:
                container.mux(self._stream.encode(None))
            finally:
                container.close()
        except BaseException:
            self._discard()
            raise
        if not self._published:
            self._publish()

    def finish(self) -> None:
        """Close the complete video and rewrite it as a plain MP4 (``moov`` before ``mdat``,
        no fragments; the packets copied, the metadata kept), beside and renamed over it. If
        the rewrite fails, the fragmented file stays."""
        if self._closed:
            return
        self.close()
        if not self._published:  # no chunk: no file
            return
        with written_beside(self.path, overwrite=True) as plain:
            remux_faststart(self.path, plain)
        self.finished = True

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        """A block that ends normally finishes the video; one that raises closes it."""
        if kind is None:
            self.finish()
        else:
            self.close()


def remux_faststart(source: str | Path, target: str | Path) -> None:
    """Copy the video of ``source`` (e.g. a fragmented MP4) into a plain MP4 at ``target``
    with its index in front; no re-encoding; our metadata tag is carried over."""
    import av

    with av.open(str(source)) as reader:
        video = reader.streams.video[0]
        options = {"movflags": "+faststart"}
        with av.open(str(target), mode="w", format="mp4", options=options) as writer:
            if METADATA_TAG in reader.metadata:
                writer.metadata[METADATA_TAG] = reader.metadata[METADATA_TAG]
            copy = writer.add_stream_from_template(video)
            for packet in reader.demux(video):
                if packet.dts is None:  # the demuxer's end-of-stream marker
                    continue
                packet.stream = copy
                writer.mux(packet)


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
