"""The prompt file of ``batch``: one video item per line.

A line is either a plain prompt, or (when it starts with ``{``) a JSON object::

    a red fox trots through fresh snow
    {"prompt": "a lighthouse at dusk", "seed": 7, "seconds": 30}
    {"prompt": "a koi pond", "policy": ["window", "head_forcing"], "frames": 42}
    {"prompts": ["a fox in snow", "the fox sleeps"], "switch_frame_indices": [21]}
    {"prompts": [{"seconds": 0, "prompt": "a city street"}, {"seconds": 10, "prompt": "rain"}]}

Keys: ``prompt`` (one prompt) or ``prompts`` (a schedule: LongLive's list of strings with
``switch_frame_indices``, or our list of ``{"seconds" | "frame", "prompt"}``, see
:mod:`headforcing.schedule`); ``seed``; ``policy`` (a name or a list: the item runs under these
instead of ``--policies``); ``seconds`` or ``frames`` (latent). Blank lines and lines starting
with ``#`` are skipped. Every prompt passes :func:`~headforcing.io.text.check_prompt`. Every error
names the file and the line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from headforcing.io.files import read_text
from headforcing.io.text import check_prompt
from headforcing.schedule import FrameClock, PromptSchedule, schedule_from_entries

ITEM_KEYS = {"prompt", "prompts", "switch_frame_indices", "seed", "policy", "seconds", "frames"}
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class BatchItem:
    """One line of the prompt file.

    index: its place among the items (0, 1, ...: the default seed is ``--seed + index``);
    line: its line in the file; prompt: one prompt or a schedule; the rest ``None`` when the
    line leaves them to the command's options.
    """

    index: int
    line: int
    prompt: str | PromptSchedule
    seed: int | None = None
    policies: tuple[str, ...] | None = None
    seconds: float | None = None
    frames: int | None = None

    @property
    def first_prompt(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        return self.prompt.segments[0].prompt

    def describe_prompt(self) -> str | list[dict]:
        """The prompt for the manifest: its text, or the schedule's starts and prompts."""
        if isinstance(self.prompt, str):
            return self.prompt
        return [{"frame": s.start, "prompt": s.prompt} for s in self.prompt.segments]


def read_items(path: Path, clock: FrameClock) -> list[BatchItem]:
    """The items of a prompt file (see the module docstring); ValueError names file and line."""
    text = read_text(path, "PROMPTS")
    items = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        index = len(items)
        if line.startswith("{"):
            items.append(_json_item(path, number, index, line, clock))
        else:
            items.append(BatchItem(index, number, check_prompt(line, f"{path} line {number}")))
    if not items:
        raise ValueError(f"PROMPTS {path} holds no prompt (every line is blank or a comment)")
    return items


def _json_item(path: Path, number: int, index: int, line: str, clock: FrameClock) -> BatchItem:
    where = f"{path} line {number}"
    try:
        entry = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        raise ValueError(
            f'{where}: a line starting with {{ must be one JSON object, e.g. {{"prompt": "a red '
            'fox", "seed": 3}'
        ) from None
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a JSON object")
    unknown = sorted(set(entry) - ITEM_KEYS)
    if unknown:
        raise ValueError(
            f"{where}: unknown key {', '.join(map(repr, unknown))}; an item takes "
            f"{', '.join(sorted(ITEM_KEYS))}"
        )
    if ("prompt" in entry) == ("prompts" in entry):
        raise ValueError(f'{where}: give exactly one of "prompt" or "prompts" (a schedule)')
    if "prompt" in entry:
        prompt = entry["prompt"]
        if not isinstance(prompt, str):
            raise ValueError(f'{where}: "prompt" must be a string, got {type(prompt).__name__}')
        check_prompt(prompt, where)
        if "switch_frame_indices" in entry:
            raise ValueError(f'{where}: "switch_frame_indices" goes with "prompts"')
    else:
        prompt = _schedule(path, number, entry, clock)
    seed = entry.get("seed")
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED
    ):
        raise ValueError(f'{where}: "seed" must be an integer in 0..2**63-1, got {seed!r}')
    policies = entry.get("policy")
    if isinstance(policies, str):
        policies = [policies]
    if policies is not None and (
        not isinstance(policies, list)
        or not policies
        or not all(isinstance(name, str) for name in policies)
    ):
        raise ValueError(f'{where}: "policy" must be a policy name or a list of names')
    if "seconds" in entry and "frames" in entry:
        raise ValueError(f'{where}: give "seconds" or "frames", not both')
    seconds, frames = entry.get("seconds"), entry.get("frames")
    if seconds is not None and (
        isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0
    ):
        raise ValueError(f'{where}: "seconds" must be a number > 0, got {seconds!r}')
    if frames is not None and (isinstance(frames, bool) or not isinstance(frames, int)):
        raise ValueError(f'{where}: "frames" must be an integer (latent frames), got {frames!r}')
    return BatchItem(
        index,
        number,
        prompt,
        seed,
        tuple(policies) if policies is not None else None,
        float(seconds) if seconds is not None else None,
        frames,
    )


def _schedule(path: Path, number: int, entry: dict, clock: FrameClock) -> PromptSchedule:
    prompts = entry["prompts"]
    if isinstance(prompts, list) and prompts and all(isinstance(p, dict) for p in prompts):
        if "switch_frame_indices" in entry:
            raise ValueError(
                f'{path} line {number}: "switch_frame_indices" goes with a list of strings; '
                "this list gives a start in every entry"
            )
        return schedule_from_entries(path, [(number, segment) for segment in prompts], clock)
    longlive = {key: entry[key] for key in ("prompts", "switch_frame_indices") if key in entry}
    return schedule_from_entries(path, [(number, longlive)], clock)
