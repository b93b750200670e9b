"""One live video: the generator in a worker thread, a prompt a user may change, the growing file.

The worker pulls chunks from :meth:`Pipeline.stream` with a :class:`LivePrompt` as its prompt
source: the chunk loop reads the prompt before every chunk, so a new prompt takes effect at the
next chunk boundary (the chunk being made when it arrives finishes under the old one), and the
switch mode (``headforcing.switch``) rebuilds the cache there. Each finished chunk is written to
a live fragmented MP4 (playable while it grows; a plain MP4 once the run reaches its length) and
published to the page.

Pacing: a small model makes chunks much faster than they play; a prompt typed at second 10
should then change the video near second 10, not after the whole run was made in advance. With
``pace`` on (the default) the worker waits so that it is never more than one chunk ahead of
real-time playback. A model slower than real time never waits.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from headforcing.cache import CachePolicy
from headforcing.heads.headmap import HeadMap
from headforcing.io.text import check_prompt
from headforcing.io.video import VideoWriter
from headforcing.pipeline import Pipeline


class RunEnded(RuntimeError):
    """A prompt arrived after the run ended."""


class LivePrompt:
    """The prompt of a live video; :meth:`set` from any thread, read between chunks."""

    def __init__(self, prompt: str) -> None:
        self._lock = threading.Lock()
        self._prompt = self._checked(prompt)

    @staticmethod
    def _checked(prompt: str) -> str:
        return check_prompt(prompt).strip()  # refused here, the running prompt stays

    def set(self, prompt: str) -> str:
        """Queue ``prompt`` for the next chunk; returns it as it will be used."""
        prompt = self._checked(prompt)
        with self._lock:
            self._prompt = prompt
        return prompt

    def prompt_at(self, frame: int) -> str:
        with self._lock:
            return self._prompt


@dataclass(frozen=True)
class AppliedSwitch:
    """Where a new prompt took effect: its first latent frame and first pixel frame."""

    latent_frame: int
    pixel_frame: int
    prompt: str


class LiveSession:
    """Generate one video in a worker thread, for a live page.

    Parameters
    ----------
    pipeline, policy:
        What generates (see :class:`~headforcing.pipeline.Pipeline`).
    prompt:
        The first prompt.
    num_frames:
        Latent frames of the run (its bound).
    out:
        The growing MP4.
    seed, switch:
        As for ``generate``.
    pace:
        Stay at most one chunk ahead of real-time playback (see the module docstring).
    overwrite:
        Replace an existing ``out`` (see :class:`~headforcing.io.video.VideoWriter`).
    keep_frames:
        Newest pixel frames held for the page.
    on_head_map:
        Called with the head map a run without one profiles before it starts.
    check_prompt:
        Raises ``ValueError`` for a prompt the model cannot use (the first one and every one the
        page sends; the page shows the message).
    scale, metadata:
        Of the video file (:class:`~headforcing.io.video.VideoWriter`); the metadata is
        written when the file opens, so it holds the first prompt only and is marked ``live``.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        policy: CachePolicy,
        prompt: str,
        num_frames: int,
        out: str | Path,
        *,
        seed: int = 0,
        switch: str | None = None,
        pace: bool = True,
        overwrite: bool = False,
        keep_frames: int = 64,
        on_head_map: Callable[[HeadMap], None] | None = None,
        check_prompt: Callable[[str], None] | None = None,
        scale: int = 1,
        metadata: dict | None = None,
    ) -> None:
        self.pipeline, self.policy = pipeline, policy
        self.check_prompt = check_prompt  # raises ValueError for a prompt the model cannot use
        if check_prompt is not None:
            check_prompt(prompt)
        self.prompt = LivePrompt(prompt)
        self.num_frames, self.out, self.seed, self.switch = num_frames, Path(out), seed, switch
        self.pace, self.overwrite = pace, overwrite
        self.scale = scale
        self.metadata = None if metadata is None else {**metadata, "live": True}
        self.on_head_map = on_head_map  # a head map profiled before the run
        self.switch_mode = switch or policy.default_switch
        video = pipeline.preset.video
        self.fps = video.fps
        self.chunk_seconds = video.chunk_frames * video.vae_stride[0] / video.fps
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._frames: deque[tuple[int, np.ndarray]] = deque(maxlen=keep_frames)
        self._thread = threading.Thread(target=self._run, name="headforcing-generator")
        self._finished = threading.Event()  # set once the video is closed
        self.frames_written = 0
        self.latent_frames = 0
        self.chunks = 0
        self.current_prompt = ""
        self.queued_prompt: str | None = None
        self.switches: list[AppliedSwitch] = []
        self.error: str | None = None
        self.done = False
        # what runs (headforcing.speed): frames/s end to end since the first chunk began and of
        # the DiT alone, the K/V the cache holds
        self._first_started: float | None = None
        self._dit_seconds = 0.0
        self.frames_per_second = 0.0
        self.dit_frames_per_second = 0.0
        self.kv_bytes = 0

    # ------------------------------------------------------------------ control

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish the chunk in progress, close the video, end the worker."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        """Wait until the worker has closed the video (or ``timeout`` seconds).

        An event, not ``Thread.join``: a KeyboardInterrupt inside ``Thread.join`` can mark a
        running thread as stopped (CPython's bpo-45274 handling), and the process would then
        exit while the worker still writes the video's tail.
        """
        if self._thread.ident is not None:
            self._finished.wait(timeout)

    @property
    def running(self) -> bool:
        return self._thread.ident is not None and not self._finished.is_set()

    def submit(self, prompt: str) -> str:
        """A new prompt from the page; it drives the next chunk that starts.

        Raises :class:`RunEnded` once the run has ended (no chunk will start again).
        """
        with self._lock:
            if self.done:
                raise RunEnded("the run has ended; no chunk will use a new prompt")
        if self.check_prompt is not None:
            self.check_prompt(prompt)
        prompt = self.prompt.set(prompt)
        with self._lock:
            self.queued_prompt = prompt if prompt != self.current_prompt else None
        return prompt

    # ------------------------------------------------------------------ what the page reads

    def describe_policy(self) -> str:
        """The cache policy as the page shows it: its parameters, positions and switch mode."""
        return (
            f"{self.policy.describe()}, {self.policy.positions} positions, switch "
            f"{self.switch_mode}"
        )

    def state(self) -> dict:
        with self._lock:
            return {
                "policy": self.describe_policy(),
                "frames_per_second": round(self.frames_per_second, 2),
                "dit_frames_per_second": round(self.dit_frames_per_second, 2),
                "kv_bytes": self.kv_bytes,
                "fps": self.fps,
                "frames_written": self.frames_written,
                "latent_frames": self.latent_frames,
                "total_latent_frames": self.num_frames,
                "chunks": self.chunks,
                "prompt": self.current_prompt,
                "queued": self.queued_prompt,
                "switches": [asdict(switch) for switch in self.switches],
                "done": self.done,
                "error": self.error,
                "out": str(self.out),
            }

    def frame(self, index: int | None = None) -> tuple[int, np.ndarray] | None:
        """Pixel frame ``index`` if still held (the newest if ``None`` or gone): uint8 HxWx3."""
        with self._lock:
            if not self._frames:
                return None
            if index is not None:
                for held_index, frame in self._frames:
                    if held_index == index:
                        return held_index, frame
            return self._frames[-1]

    # ------------------------------------------------------------------ the worker

    def _run(self) -> None:
        try:
            self._generate()
        finally:
            self._finished.set()

    def _generate(self) -> None:
        try:
            writer = VideoWriter(
                self.out,
                fps=self.fps,
                live=True,
                overwrite=self.overwrite,
                scale=self.scale,
                metadata=self.metadata,
            )
        except (OSError, ValueError) as error:
            with self._lock:
                self.error, self.done = f"{type(error).__name__}: {error}", True
            return
        stream = self.pipeline.stream(
            self.prompt,
            self.num_frames,
            self.policy,
            seed=self.seed,
            switch=self.switch,
            on_head_map=self._head_map_profiled,
        )
        began = time.monotonic()
        try:
            for chunk in stream:
                first_pixel = writer.frames_written
                frames = chunk.frames[0]
                writer.write(frames)
                self._publish(chunk, frames.numpy(), first_pixel)
                if self._stop.is_set():
                    break
                if self.pace:
                    ahead = writer.frames_written / self.fps - (time.monotonic() - began)
                    self._stop.wait(max(0.0, ahead - self.chunk_seconds))
                if self._stop.is_set():
                    break
        except Exception as error:  # the page shows it; the CLI prints it
            with self._lock:
                self.error = f"{type(error).__name__}: {error}"
        finally:
            stream.close()
            try:  # the whole video becomes a plain MP4; one cut short stays fragmented
                complete = self.latent_frames >= self.num_frames and self.error is None
                if complete:
                    writer.finish()
                else:
                    writer.close()
            except Exception as error:
                with self._lock:
                    self.error = self.error or f"{type(error).__name__}: {error}"
            with self._lock:
                self.done = True

    def _head_map_profiled(self, head_map: HeadMap) -> None:
        with self._lock:  # the page names the map's head types from now on
            self.policy = self.policy.with_head_map(head_map)
        if self.on_head_map is not None:
            self.on_head_map(head_map)

    def _publish(self, chunk, frames: np.ndarray, first_pixel: int) -> None:
        with self._lock:
            if self.current_prompt and chunk.prompt != self.current_prompt:
                self.switches.append(AppliedSwitch(chunk.first_frame, first_pixel, chunk.prompt))
            if chunk.prompt == self.queued_prompt:
                self.queued_prompt = None
            self.current_prompt = chunk.prompt
            for offset, frame in enumerate(frames):
                self._frames.append((first_pixel + offset, frame))
            self.frames_written = first_pixel + len(frames)
            self.latent_frames = chunk.first_frame + chunk.latents.shape[2]
            self.chunks += 1
            if self._first_started is None:
                self._first_started = chunk.started_at
            self._dit_seconds += chunk.dit_seconds
            elapsed = time.perf_counter() - self._first_started
            self.frames_per_second = self.frames_written / elapsed if elapsed > 0 else 0.0
            if self._dit_seconds > 0:
                self.dit_frames_per_second = self.frames_written / self._dit_seconds
            self.kv_bytes = chunk.kv_bytes
