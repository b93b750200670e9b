"""Paired rollouts on the toy world: one work item per video, one record per finished video.

An :class:`Item` is (policy, prompt, seed, frames); every policy rolls out the same prompts and
seeds, so two policies' videos pair up by (prompt, seed). A finished video becomes a record,
one JSON line in ``videos.rank{r}.jsonl`` of the results folder (each rank appends to its own
file, row by row, fsynced), holding every 21-frame segment's metrics against ground truth and
the identity of what made it: policy name and parameters, head map, weights.

A rerun skips every item a record covers: the same identity and prompt and seed, at least as
many frames. A longer rollout covers a shorter one because generation is causal and draws its
noise chunk by chunk in order: the first 210 frames of a 1050-frame rollout are the 210-frame
rollout (``tests/test_longrun.py`` checks it). So a run can be stopped and continued, and the
variants benchmark reuses the long-horizon rollouts of the policies both compare.

Under ``torchrun``, rank 0 reads what is done and sends the pending items to every rank; each
rank takes its share, split by estimated cost (:func:`estimated_seconds`, largest first onto
the least loaded rank: :func:`~headforcing.distributed.balance.greedy_split`).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from headforcing.distributed.balance import greedy_split
from headforcing.distributed.world import World
from headforcing.heads.headmap import HeadMap
from headforcing.pipeline import Pipeline
from headforcing.toyworld.evaluate import sample_video
from headforcing.toyworld.longrun import POLICY_SPECS
from headforcing.toyworld.metrics import video_metrics
from headforcing.toyworld.world import Scene

RECORDS_GLOB = "videos*.jsonl"
# the toy model on one CPU thread: a bounded policy costs the same per frame all along (13 s
# per 210 frames); ``full`` attends to every past frame, so its cost per frame grows with the
# video (19 s at 210 frames, about 220 s at 1050)
SECONDS_PER_FRAME = 0.062
FULL_SECONDS_PER_FRAME_SQUARED = 1.4e-4


@dataclass(frozen=True)
class Item:
    """One video to make: ``policy`` (a name of ``POLICY_SPECS``) on ``prompt`` with the
    sampler's ``seed``, ``frames`` frames long."""

    policy: str
    prompt: str
    seed: int
    frames: int

    @property
    def video(self) -> tuple[str, int]:
        """What pairs videos of two policies: the same prompt and seed."""
        return (self.prompt, self.seed)


def plan_items(
    policies: Sequence[str],
    prompts: Sequence[str],
    seeds: Sequence[int],
    frames: int,
    policy_frames: dict[str, int] | None = None,
    limits: dict[str, int] | None = None,
) -> list[Item]:
    """Every policy on every (prompt, seed), ``frames`` long; ``policy_frames`` caps a policy's
    frames, ``limits`` its videos: the first ones in the order seed by seed, every prompt of a
    seed before the next seed (so a limit keeps as many scenes as it can)."""
    policy_frames, limits = policy_frames or {}, limits or {}
    stray = sorted({*policy_frames, *limits} - set(policies))
    if stray:
        raise ValueError(f"caps name policies that are not compared: {', '.join(stray)}")
    videos = [(prompt, seed) for seed in seeds for prompt in prompts]
    items = []
    for name in policies:
        length = min(frames, policy_frames.get(name, frames))
        count = limits.get(name, len(videos))
        items += [Item(name, prompt, seed, length) for prompt, seed in videos[:count]]
    return items


def estimated_seconds(item: Item) -> float:
    """Rough seconds of one item on one thread (the toy model): what the ranks balance."""
    seconds = SECONDS_PER_FRAME * item.frames
    if POLICY_SPECS[item.policy].policy == "full":
        seconds += FULL_SECONDS_PER_FRAME_SQUARED * item.frames**2
    return seconds


def head_map_id(head_map: HeadMap) -> str:
    """A short fingerprint of a head map's labels (all a policy reads of it)."""
    labels = json.dumps([list(row) for row in head_map.labels])
    return hashlib.sha256(labels.encode()).hexdigest()[:12]


def identity(name: str, weights: str, head_map: HeadMap | None) -> dict:
    """What a record of ``name`` must match to stand for a video of this run."""
    spec = POLICY_SPECS[name]
    return {
        "policy": name,
        "params": spec.params,
        "head_map": head_map_id(head_map) if spec.needs_head_map and head_map else None,
        "weights": weights,
    }


def matches(record: dict, identity: dict) -> bool:
    return all(record.get(key) == value for key, value in identity.items())


def read_records(out_dir: Path) -> list[dict]:
    """Every record of every rank file in ``out_dir``; a line that is not a JSON object with
    segments (a row cut by a crash) is skipped."""
    records = []
    for path in sorted(out_dir.glob(RECORDS_GLOB)):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("segments"), list):
                records.append(record)
    return records


def longest_records(records: Sequence[dict], identities: dict[str, dict]) -> dict:
    """``policy -> (prompt, seed) -> record``: per video, the longest record of each policy
    that matches its identity (what every table and the resume read)."""
    best: dict[str, dict[tuple[str, int], dict]] = {name: {} for name in identities}
    for record in records:
        name = record.get("policy")
        if name not in identities or not matches(record, identities[name]):
            continue
        video = (record["prompt"], record["seed"])
        held = best[name].get(video)
        if held is None or record["frames"] > held["frames"]:
            best[name][video] = record
    return best


def pending_items(items: Sequence[Item], records: Sequence[dict], identities: dict) -> list[Item]:
    """The items no record covers (same identity, prompt and seed, at least as many frames)."""
    best = longest_records(records, identities)
    pending = []
    for item in items:
        record = best[item.policy].get(item.video)
        if record is None or record["frames"] < item.frames:
            pending.append(item)
    return pending


def append_record(path: Path, record: dict) -> None:
    """Append one record, whole, and make it durable before the next video starts."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def make_record(pipeline: Pipeline, item: Item, head_map: HeadMap | None) -> dict:
    """Roll ``item`` out and measure every segment against the truth of its prompt."""
    began = time.perf_counter()
    policy = POLICY_SPECS[item.policy].build(head_map)
    video = sample_video(pipeline, item.prompt, item.frames, policy, item.seed)
    segments = video_metrics(video, Scene.from_prompt(item.prompt))
    return {
        **identity(item.policy, pipeline.weights_id, head_map),
        "prompt": item.prompt,
        "seed": item.seed,
        "frames": item.frames,
        "describe": policy.describe(),
        "segments": [segment.as_dict() for segment in segments],
        "wall_s": round(time.perf_counter() - began, 3),
    }


def run_items(
    pipeline: Pipeline,
    items: Sequence[Item],
    head_map: HeadMap | None,
    out_dir: Path,
    world: World,
) -> int:
    """Make this rank's share of ``items`` (every rank is given the same list), appending each
    record as it finishes; returns how many this rank made."""
    split = greedy_split([estimated_seconds(item) for item in items], world.size)
    mine = [items[index] for index in split[world.rank]]
    path = out_dir / f"videos.rank{world.rank}.jsonl"
    fresh_order = [list(order) for order in pipeline.model.head_order]
    for done, item in enumerate(mine, 1):
        # every video as a fresh process makes it: Head Forcing regroups the model's heads
        pipeline.model.set_head_order(fresh_order)
        record = make_record(pipeline, item, head_map)
        append_record(path, {**record, "rank": world.rank})
        print(
            f"rank {world.rank} [{done}/{len(mine)}]: {item.policy}, seed {item.seed}, "
            f"{item.frames} frames, {record['wall_s']:.0f} s: {item.prompt!r}",
            file=sys.stderr,
            flush=True,
        )
    return len(mine)
