"""Run a batch: the pending jobs split over the ranks, each video written whole, then its row.

Rank 0 decides what is pending (video and manifest row present: skipped) and sends the list to
every rank, so all ranks split the same list (largest jobs first onto the least loaded rank,
:func:`~headforcing.distributed.balance.greedy_split`). A video is made exactly as ``generate``
makes it: the same seed (from the item), the model's heads in the order a fresh process has
them, and the same encoder; it is written under ``.partial/`` and renamed into place when whole.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from headforcing.batch.layout import Job
from headforcing.batch.manifest import (
    MANIFEST,
    PARTIAL,
    append_row,
    finished,
    manifest_files,
    merge,
    rank_manifest,
)
from headforcing.distributed.balance import greedy_split
from headforcing.distributed.world import World


@dataclass(frozen=True)
class BatchReport:
    """What this rank saw: jobs in the batch, skipped as done, made by this rank."""

    total: int
    skipped: int
    made: int
    manifest: Path | None


def check_outputs(out_dir: Path, jobs: list[Job], overwrite: bool = False) -> None:
    """Refuse, before any model loads, a batch that would write through a symbolic link or
    replace a file it did not finish (:func:`~headforcing.io.files.check_output_path`): the
    manifest files, and every video a manifest row does not name as done (those are skipped;
    with ``overwrite`` every video is made again and replaced)."""
    from headforcing.io.files import check_output_path

    for path in [out_dir / MANIFEST, *manifest_files(out_dir)]:
        check_output_path(path, option="--out-dir", overwrite=True)
    done = set() if overwrite else finished(out_dir, [job.file for job in jobs])
    for job in jobs:
        if job.file not in done:
            check_output_path(out_dir / job.file, option="--out-dir", overwrite=overwrite)


def run_batch(
    pipeline,
    jobs: list[Job],
    policy_of: Callable[[str], object],
    out_dir: Path,
    world: World,
    settings: dict,
    switch: str | None = None,
    scale: int | str = "auto",
    overwrite: bool = False,
) -> BatchReport:
    """Make every pending job of ``jobs`` on the ranks of ``world``; rank 0 shows progress and
    merges the manifest at the end. ``policy_of(name)``: the policy of a job (head map
    attached); ``settings``: recorded in every row; ``scale``: of the written frames (as
    ``generate --scale``); ``overwrite``: make finished videos again too."""
    files = [job.file for job in jobs]
    pending = None
    if world.is_main:  # one rank reads the disk: every rank splits the same list
        done = set() if overwrite else finished(out_dir, files)
        pending = [job.number for job in jobs if job.file not in done]
    pending = world.broadcast(pending)
    skipped = len(jobs) - len(pending)
    split = greedy_split([jobs[number].frames for number in pending], world.size)
    mine = [pending[index] for index in split[world.rank]]
    progress = BatchProgress(out_dir, files, skipped) if world.is_main else None
    fresh_order = [list(order) for order in pipeline.model.head_order]
    try:
        for number in mine:
            job = jobs[number]
            pipeline.model.set_head_order(fresh_order)  # as a fresh `generate` process has it
            policy = policy_of(job.policy)
            row = make_video(pipeline, job, policy, out_dir, world.rank, switch, scale)
            append_row(rank_manifest(out_dir, world.rank), {**row, "settings": settings})
            print(
                f"rank {world.rank}: {job.file} ({row['pixel_frames']} frames, "
                f"{row['wall_s']:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
        world.barrier()
        manifest = None
        if world.is_main:  # every rank is done: what is left in .partial/ is a crash's debris
            manifest = merge(out_dir, files)
            shutil.rmtree(out_dir / PARTIAL, ignore_errors=True)
    finally:
        if progress is not None:
            progress.close()
    return BatchReport(len(jobs), skipped, len(mine), manifest)


def make_video(pipeline, job: Job, policy, out_dir: Path, rank: int, switch, scale="auto") -> dict:
    """Write one job's video (under ``.partial/`` until whole) and return its manifest row: the
    same file ``generate`` writes (frames, scale, run record), decoded and written beside the
    next chunk's generation."""
    from headforcing.interrupts import deferred_interrupt
    from headforcing.io.provenance import run_metadata
    from headforcing.io.scale import display_scale
    from headforcing.io.video import VideoWriter

    target = out_dir / job.file
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = out_dir / PARTIAL / f"rank{rank}" / f"job{job.number}.mp4"
    began = time.perf_counter()
    kv_bytes = 0
    fps = pipeline.preset.video.fps
    scale = display_scale(
        pipeline.height, pipeline.width, scale, real_weights=pipeline.real_weights
    )
    metadata = run_metadata(pipeline, job.item.prompt, job.seed, policy, job.frames)
    with VideoWriter(partial, fps=fps, overwrite=True, scale=scale, metadata=metadata) as writer:
        stream = pipeline.stream(
            job.item.prompt,
            job.frames,
            policy,
            seed=job.seed,
            switch=switch,
            write=lambda chunk: writer.write(chunk.frames[0]),
        )
        try:
            for chunk in stream:
                kv_bytes = max(kv_bytes, chunk.kv_bytes)
        finally:
            with deferred_interrupt():
                stream.close()  # the chunk in the worker is written before the file closes
    os.replace(partial, target)
    return {
        "file": job.file,
        "prompt": job.item.describe_prompt(),
        "seed": job.seed,
        "policy": policy.describe(),
        "policy_name": job.policy,
        "weights": pipeline.weights_id,
        "frames": job.frames,
        "pixel_frames": writer.frames_written,
        "wall_s": round(time.perf_counter() - began, 3),
        "kv_bytes": kv_bytes,
        "item": job.item.index,
        "line": job.item.line,
        "rank": rank,
    }


class BatchProgress:
    """Rank 0's view of the whole batch: it counts finished videos (manifest rows of every rank)
    once a second in a thread, so the count moves while rank 0 is busy with its own video. A
    bar on a terminal; elsewhere one line per change."""

    def __init__(self, out_dir: Path, files: list[str], done: int, every: float = 1.0) -> None:
        from tqdm import tqdm

        self.out_dir, self.files, self.done = out_dir, files, done
        self.bar = None
        if sys.stderr.isatty():
            self.bar = tqdm(total=len(files), initial=done, unit="video", file=sys.stderr)
        else:
            print(f"batch: {done}/{len(files)} videos done", file=sys.stderr, flush=True)
        self.stopped = threading.Event()
        self.every = every
        self.thread = threading.Thread(target=self._poll, name="batch-progress", daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self.stopped.wait(self.every):
            self.update()

    def update(self) -> None:
        count = len(finished(self.out_dir, self.files))
        if count == self.done:
            return
        if self.bar is not None:
            self.bar.update(count - self.done)
        else:
            print(f"batch: {count}/{len(self.files)} videos done", file=sys.stderr, flush=True)
        self.done = count

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.update()
        if self.bar is not None:
            self.bar.close()
