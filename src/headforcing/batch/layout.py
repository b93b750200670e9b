"""Where ``batch`` puts its videos: the layout VBench-Long's custom-input mode reads.

VBench (``vbench2_beta_long``, ``mode='long_custom_input'``) scores every video of one folder and
takes each video's prompt from its file name: ``{prompt}-{index}.mp4``, the ``-{index}`` suffix
stripped (VBench's ``get_prompt_from_filename``). So ``batch`` writes one folder per policy, and
in it ``{prompt}-{index}.mp4``, ``index`` counting the earlier items of the file whose videos
got the same name (0 for the first: VBench's samples 0..4 of one prompt)::

    OUT_DIR/window/a red fox trots through fresh snow-0.mp4
    OUT_DIR/head_forcing/a red fox trots through fresh snow-0.mp4

A file name cannot hold every prompt: ``/`` and control characters become spaces, and a prompt
longer than a file name allows (255 bytes) is cut at a character boundary. The manifest keeps
the whole prompt. A schedule's video is named after its first prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

from headforcing.batch.items import BatchItem

NAME_BYTES = 255  # longest file name on common file systems (ext4, xfs, APFS, NTFS)


@dataclass(frozen=True)
class Job:
    """One video: an item under one policy; ``file``: its path under the output folder."""

    number: int
    item: BatchItem
    policy: str
    seed: int
    frames: int
    file: str


def video_name(prompt: str, index: int) -> str:
    """``{prompt}-{index}.mp4``, with the prompt made a valid file name (module docstring)."""
    text = "".join(" " if char == "/" or not char.isprintable() else char for char in prompt)
    text = text.strip() or "prompt"
    suffix = f"-{index}.mp4"
    budget = NAME_BYTES - len(suffix.encode())
    encoded = text.encode("utf-8")
    if len(encoded) > budget:
        text = encoded[:budget].decode("utf-8", errors="ignore").rstrip()
    return text + suffix


def expand_jobs(
    items: list[BatchItem], policies: list[str], base_seed: int, frames_of
) -> list[Job]:
    """Items times policies, in file order; each item's seed from the item (default: ``base_seed
    + item index``), never from a rank. ``frames_of(item)``: its latent frames."""
    jobs: list[Job] = []
    taken: dict[tuple[str, str], int] = {}
    for item in items:
        seed = item.seed if item.seed is not None else base_seed + item.index
        frames = frames_of(item)
        for policy in item.policies or policies:
            base = video_name(item.first_prompt, 0).removesuffix("-0.mp4")
            index = taken.get((policy, base), 0)
            taken[(policy, base)] = index + 1
            file = f"{policy}/{video_name(item.first_prompt, index)}"
            jobs.append(Job(len(jobs), item, policy, seed, frames, file))
    return jobs
