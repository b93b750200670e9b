"""Prompt schedules: which prompt drives which latent frames of a long video.

A schedule file is JSON Lines (one JSON object per line; blank lines and lines starting with
``#`` are skipped). Two formats are accepted:

**ours**: one ``(start, prompt)`` per line, the start in seconds of video or in latent frames::

    {"seconds": 0, "prompt": "a red fox trots through fresh snow"}
    {"seconds": 10, "prompt": "the fox stops and looks up at the falling snow"}
    {"frame": 84, "prompt": "the fox curls up under a pine tree"}

**LongLive's**: one line ``{"prompts": [...]}`` whose prompt ``k + 1`` starts at latent frame
``switch_frame_indices[k]``, given in the line itself or by the caller (LongLive keeps them in
its run config; ``generate --switch-frames 40,80``)::

    {"prompts": ["a fox in snow", "the fox looks up", "the fox sleeps"],
     "switch_frame_indices": [40, 80]}

Time to frames: second ``s`` is pixel frame ``ceil(s * fps)``, which lies in latent frame
``ceil(pixel / temporal_stride)`` (the causal VAE layout: latent frame 0 is pixel frame 0,
latent frame ``f >= 1`` covers pixels ``4f - 3 .. 4f``).

A switch can only happen between two chunks (a chunk's frames are denoised together, and every
pass of a chunk must see one context). A start that is not on a chunk boundary is **rounded up**
to the next boundary, never down (a prompt never shows before the time it was asked for), and the
schedule records a note saying so; the CLI prints it. The first prompt must start at 0, starts
must increase strictly (also after rounding: two prompts on one chunk would hide the first), and
every start must lie inside the video. Every prompt passes
:func:`~headforcing.io.text.check_prompt` (valid Unicode, no control characters, not empty, not
too long). Every error names the file and the line.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from headforcing.io.files import read_text
from headforcing.io.text import TextEncoder, check_prompt

OURS_KEYS = {"prompt", "seconds", "frame"}
LONGLIVE_KEYS = {"prompts", "switch_frame_indices"}


class PromptSource(Protocol):
    """Tells the chunk loop which prompt drives the chunk that starts at ``frame``.

    Called once per chunk, in order of frames; a schedule answers from its segments, a live
    prompt (interactive mode) with the newest prompt a user typed.
    """

    def prompt_at(self, frame: int) -> str: ...


@dataclass(frozen=True)
class PromptSegment:
    """A prompt from latent frame ``start`` (a chunk boundary) on.

    ``line``: where it was given (for errors); ``asked``: the start as written (``"2.5 s"``).
    """

    start: int
    prompt: str
    line: int = 0
    asked: str = ""


@dataclass(frozen=True)
class PromptSchedule:
    """Prompts by start frame, starts on chunk boundaries, strictly increasing, the first at 0.

    ``notes``: what loading changed (a start rounded up to a chunk boundary), for the user.
    """

    segments: tuple[PromptSegment, ...]
    source: str = "<schedule>"
    notes: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if not self.segments:
            raise ValueError(f"{self.source}: the schedule has no prompt")
        for segment in self.segments:  # text an encoder cannot take, named by file and line
            check_prompt(segment.prompt, self._where(segment))
        first = self.segments[0]
        if first.start != 0:
            raise ValueError(
                f"{self._where(first)}: the first prompt starts at {first.asked or first.start}, "
                "not at 0; start the first prompt at 0 (nothing would drive the frames before it)"
            )
        for previous, segment in zip(self.segments, self.segments[1:], strict=False):
            if segment.start <= previous.start:
                raise ValueError(
                    f"{self._where(segment)}: starts at latent frame {segment.start} "
                    f"({segment.asked}), not after line {previous.line} (latent frame "
                    f"{previous.start}, {previous.asked}); list prompts in order of start, "
                    "at least one chunk apart"
                )

    def _where(self, segment: PromptSegment) -> str:
        return f"{self.source} line {segment.line}" if segment.line else self.source

    @classmethod
    def single(cls, prompt: str) -> PromptSchedule:
        """One prompt for the whole video."""
        return cls((PromptSegment(0, prompt, 0, "0"),), source="the prompt")

    def prompt_at(self, frame: int) -> str:
        current = self.segments[0].prompt
        for segment in self.segments:
            if segment.start > frame:
                break
            current = segment.prompt
        return current

    def check_prompts(self, encoder: TextEncoder) -> None:
        """Refuse a prompt ``encoder`` cannot read whole (more tokens than it takes), naming
        the file and the line."""
        for segment in self.segments:
            check_prompt(segment.prompt, self._where(segment), encoder)

    def switch_frames(self) -> list[int]:
        """Latent frames where the prompt changes."""
        return [segment.start for segment in self.segments[1:]]

    def check_length(self, num_frames: int) -> None:
        """Refuse a start at or past the end of a ``num_frames``-frame video."""
        for segment in self.segments[1:]:
            if segment.start >= num_frames:
                raise ValueError(
                    f"{self._where(segment)}: starts at latent frame {segment.start} "
                    f"({segment.asked}) but the video ends at latent frame {num_frames - 1}; "
                    "drop the line or make the video longer (--seconds / --frames)"
                )


@dataclass(frozen=True)
class FrameClock:
    """Converts the starts of a schedule to chunk-aligned latent frames."""

    fps: int = 16
    temporal_stride: int = 4
    chunk_frames: int = 3

    def seconds_to_frame(self, seconds: float) -> int:
        pixel = math.ceil(seconds * self.fps - 1e-9)  # 1e-9: 0.25 s * 16 fps is exactly 4
        return -(-pixel // self.temporal_stride)

    def align(self, frame: int) -> int:
        return -(-frame // self.chunk_frames) * self.chunk_frames


def load_schedule(
    path: str | Path, clock: FrameClock, switch_frames: list[int] | None = None
) -> PromptSchedule:
    """Read a schedule file (ours or LongLive's, see the module docstring).

    ``switch_frames``: LongLive's switch frame indices when the file does not carry them.
    Raises ValueError naming the file and the line of the first problem.
    """
    path = Path(path)
    text = read_text(path, "the prompt schedule")
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path} line {number}: not valid JSON ({error.msg} at column {error.colno}); "
                'write one object per line, e.g. {"seconds": 0, "prompt": "a red fox"}'
            ) from None
        except RecursionError:
            raise ValueError(
                f"{path} line {number}: JSON nested too deeply; a line is one flat object, "
                'e.g. {"seconds": 0, "prompt": "a red fox"}'
            ) from None
        if not isinstance(entry, dict):
            raise ValueError(
                f"{path} line {number}: expected a JSON object, got {type(entry).__name__}"
            )
        entries.append((number, entry))
    if not entries:
        raise ValueError(f"{path}: the schedule has no prompt (every line is blank or a comment)")
    return schedule_from_entries(path, entries, clock, switch_frames)


def schedule_from_entries(
    path: str | Path, entries: list, clock: FrameClock, switch_frames: list[int] | None = None
) -> PromptSchedule:
    """A schedule from parsed entries ``[(line number, JSON object)]`` of ``path``: ours (one
    start and prompt per entry) or LongLive's (one ``{"prompts": [...]}`` entry). ``batch``
    reads a schedule given inside one item of its prompt file so."""
    if any("prompts" in entry for _, entry in entries):
        segments, notes = _longlive_segments(path, entries, clock, switch_frames)
    else:
        if switch_frames:
            raise ValueError(
                f'{path}: switch frames are for LongLive files ({{"prompts": [...]}}); '
                "this file gives a start on every line"
            )
        segments, notes = _our_segments(path, entries, clock)
    return PromptSchedule(tuple(segments), source=str(path), notes=tuple(notes))


def _our_segments(path: Path, entries, clock: FrameClock):
    segments, notes = [], []
    for number, entry in entries:
        where = f"{path} line {number}"
        unknown = sorted(set(entry) - OURS_KEYS)
        if unknown:
            raise ValueError(
                f"{where}: unknown key {', '.join(map(repr, unknown))}; a line has "
                '"prompt" and one of "seconds" or "frame"'
            )
        prompt = entry.get("prompt")
        if not isinstance(prompt, str):
            raise ValueError(f'{where}: "prompt" must be a string, got {prompt!r}')
        if ("seconds" in entry) == ("frame" in entry):
            raise ValueError(f'{where}: give exactly one of "seconds" or "frame" (latent frame)')
        if "seconds" in entry:
            seconds = _number(entry["seconds"], where, "seconds")
            frame, asked = clock.seconds_to_frame(seconds), f"{seconds:g} s"
            asked += f" = latent frame {frame}"
        else:
            frame = _number(entry["frame"], where, "frame", integer=True)
            asked = f"asked: latent frame {frame}"
        segments.append(_aligned(where, number, prompt, frame, asked, clock, notes))
    return segments, notes


def _longlive_segments(path: Path, entries, clock: FrameClock, switch_frames):
    if len(entries) > 1:
        number = entries[1][0]
        raise ValueError(
            f"{path} line {number}: a LongLive file here holds one video (one "
            '{"prompts": [...]} line); put each video in its own file'
        )
    number, entry = entries[0]
    where = f"{path} line {number}"
    unknown = sorted(set(entry) - LONGLIVE_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key {', '.join(map(repr, unknown))} in a LongLive line")
    prompts = entry["prompts"]
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f'{where}: "prompts" must be a list of strings')
    if not prompts:
        raise ValueError(f'{where}: "prompts" is empty')
    given = entry.get("switch_frame_indices")
    if given is not None and switch_frames:
        raise ValueError(f"{where}: switch frames are given twice (in the file and as an option)")
    if given is None:
        given = switch_frames or []
    if not isinstance(given, (list, str)):
        raise ValueError(f'{where}: "switch_frame_indices" must be a list of latent frames')
    if isinstance(given, str):  # LongLive's config writes them as "40, 80"
        try:
            given = [int(part) for part in given.split(",") if part.strip()]
        except ValueError:
            raise ValueError(f"{where}: switch_frame_indices {given!r} are not integers") from None
    if len(given) != len(prompts) - 1:
        raise ValueError(
            f"{where}: {len(prompts)} prompts need {len(prompts) - 1} switch frame indices, "
            f'got {len(given)} ({given}); give them in the line ("switch_frame_indices") or '
            "with --switch-frames"
        )
    notes = []
    segments = [PromptSegment(0, prompts[0], number, "prompt 1")]
    for index, (prompt, frame) in enumerate(zip(prompts[1:], given, strict=True), start=2):
        frame = _number(frame, where, "switch_frame_indices", integer=True)
        asked = f"prompt {index}, asked: latent frame {frame}"
        segments.append(_aligned(where, number, prompt, frame, asked, clock, notes))
    return segments, notes


# latest start a schedule may give, in seconds: far past any video, far from float overflow
MAX_SECONDS = 1e9


def _number(value, where: str, key: str, integer: bool = False):
    wrong = isinstance(value, bool) or not isinstance(value, int if integer else (int, float))
    if not wrong and not integer:  # a huge JSON integer is no float: refuse it, not overflow
        wrong = not (isinstance(value, float) or abs(value) <= MAX_SECONDS)
    if wrong or value < 0 or (not integer and not (math.isfinite(value) and value <= MAX_SECONDS)):
        kind = "an integer >= 0" if integer else f"a number >= 0 (at most {MAX_SECONDS:g})"
        shown = repr(value) if len(repr(value)) < 60 else repr(value)[:57] + "..."
        raise ValueError(f'{where}: "{key}" must be {kind}, got {shown}')
    return value


def _aligned(where, number, prompt, frame, asked, clock: FrameClock, notes) -> PromptSegment:
    start = clock.align(frame)
    if start != frame:
        notes.append(
            f"{where}: the start ({asked}) lies inside a chunk; the prompt switches at the "
            f"next chunk boundary, latent frame {start}"
        )
    return PromptSegment(start, prompt, number, asked)
