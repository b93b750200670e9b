"""A run's stream of chunks written to an MP4 as it comes: denoise, decode, write, chunk by
chunk (decode and write beside the next chunk), with its progress on stderr and the lines that
say what was written, how fast, and what a stop kept."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StreamWritten:
    """What :func:`write_stream` left: the exit status of the run (0, or 130/143 after a stop
    signal) and the lines that tell the user what is on disk, in order."""

    status: int
    lines: tuple[str, ...]


def write_pipeline_stream(
    pipeline,
    out: Path,
    prompts,
    num_frames: int,
    policy,
    *,
    seed: int,
    switch: str | None,
    scale: int | str,
    overwrite: bool,
    on_head_map=None,
) -> StreamWritten:
    """Denoise, decode, write, chunk by chunk (decode and write beside the next chunk)."""
    from headforcing.io.provenance import run_metadata
    from headforcing.io.scale import display_scale

    def stream(write):
        return pipeline.stream(
            prompts,
            num_frames,
            policy,
            seed=seed,
            on_head_map=on_head_map,
            switch=switch,
            write=write,
        )

    def speed(frames: int, dit_seconds: float, wall_seconds: float) -> str:
        from headforcing.speed import run_speed

        return run_speed(pipeline, frames, dit_seconds, wall_seconds).line()

    return write_stream(
        stream,
        out,
        pipeline.preset.video.fps,
        num_frames,
        overwrite,
        speed=speed,
        scale=display_scale(
            pipeline.height, pipeline.width, scale, real_weights=pipeline.real_weights
        ),
        metadata=run_metadata(pipeline, prompts, seed, policy, num_frames),
    )


def write_stream(
    make_stream,
    out: Path,
    fps: int,
    num_frames: int,
    overwrite: bool,
    scale: int = 1,
    metadata: dict | None = None,
    speed: Callable[[int, float, float], str] | None = None,
) -> StreamWritten:
    """Write the chunks of ``make_stream(write)`` to ``out`` as they come; the exit status and
    the lines to show.

    ``speed(frames, dit_seconds, wall_seconds)``: the last line (headforcing.speed).

    The stream writes each chunk in its worker thread (beside the next chunk's generation),
    which signals never interrupt; the stream finishes the chunk in its worker however it
    ends, before the file is closed. A stop signal waits while the file is closed (a second
    one, too), so the file always ends on a whole chunk; the run then exits with 130 or 143.
    A run that ends as planned leaves a plain MP4, a stopped one the fragmented file of its
    finished chunks, one stopped before its first chunk no file (:mod:`headforcing.io.video`).
    """
    from headforcing.interrupts import deferred_interrupt, exit_code
    from headforcing.io.video import VideoWriter
    from headforcing.progress import ChunkProgress

    progress = ChunkProgress(num_frames)
    began = time.perf_counter()
    writer = VideoWriter(out, fps=fps, overwrite=overwrite, scale=scale, metadata=metadata)
    stop = None
    complete = False
    stream = make_stream(lambda chunk: writer.write(chunk.frames[0]))
    dit_seconds, first_started = 0.0, None
    try:
        last_prompt = None
        written = 0
        for chunk in stream:
            dit_seconds += chunk.dit_seconds
            first_started = first_started or chunk.started_at
            if last_prompt is not None and chunk.prompt != last_prompt:
                progress.note(f"latent frame {chunk.first_frame}: {chunk.prompt!r}")
            last_prompt = chunk.prompt
            written += chunk.frames.shape[1]
            progress.chunk_written(chunk, written)
        complete = True
    except KeyboardInterrupt as error:
        stop = error
    finally:
        try:
            with deferred_interrupt():
                stream.close()  # the chunk in the worker is written first
        except KeyboardInterrupt as error:
            stop = stop or error
        progress.close()
        try:
            with deferred_interrupt():
                if complete and stop is None:
                    writer.finish()  # the whole video, rewritten as a plain MP4
                else:
                    writer.close()  # the finished chunks, as a fragmented MP4
        except KeyboardInterrupt as error:
            stop = stop or error
    seconds = time.perf_counter() - began
    frames = writer.frames_written
    if frames == 0 and stop is not None:  # stopped before the first chunk: no file was made
        line = (
            f"interrupted ({stop}) before the first chunk: nothing was written to {out}; the "
            "same command runs again"
        )
        return StreamWritten(exit_code(stop), (line,))
    lines = [
        f"wrote {out} ({frames} frames, {frames / fps:.1f} s of video) in {seconds:.1f} s: "
        f"{frames / seconds:.1f} frames/s"
    ]
    if stop is not None:
        lines.append(
            f"interrupted ({stop}): kept {frames} finished frames (a fragmented MP4: it plays, "
            "and --overwrite replaces it)"
        )
    if speed is not None and first_started is not None:
        lines.append(speed(frames, dit_seconds, time.perf_counter() - first_started))
    return StreamWritten(0 if stop is None else exit_code(stop), tuple(lines))
