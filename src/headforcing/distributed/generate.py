"""One video over the ranks of a ``torchrun`` launch by heads (``generate --parallel heads``):
every rank runs the same chunk loop holding its heads' K/V; rank 0 decodes and writes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch


def generate_by_heads(
    load: Callable[[torch.device], object],
    out: Path,
    device: torch.device,
    num_frames: int,
    prompts,
    policy,
    head_map,
    *,
    seed: int,
    switch: str | None,
    scale: int | str,
    overwrite: bool,
    compiled: bool,
    describe: Callable[[object, object, str], None],
    report: Callable[[str], None],
) -> int:
    """``generate --parallel heads``: one stream over the ranks of a torchrun launch, each rank
    holding its heads' K/V; every rank runs the same chunk loop, rank 0 decodes and writes.

    ``load(device)``: the pipeline on this rank's device; ``describe(pipeline, policy,
    head_map_source)``: says what runs (rank 0); ``report(line)``: a line for the user. The
    exit status.
    """
    from headforcing.distributed import HeadParallel, backend_for, join_world, launched
    from headforcing.heads.lookup import attach_head_map, storer
    from headforcing.io.writer import write_pipeline_stream
    from headforcing.prompts import check_loaded_prompts

    if not launched():
        raise ValueError(
            "--parallel heads runs under torchrun: torchrun --nproc_per_node 2 -m headforcing "
            "generate ... --parallel heads"
        )
    if compiled:
        raise ValueError("--parallel heads runs eagerly; drop --compile")
    world = join_world(backend_for(device))
    try:
        rank_device = world.device(device)
        if world.is_main:
            report(f"loading the model on {world.size} ranks")
        pipeline = load(rank_device)
        check_loaded_prompts(pipeline, prompts)
        policy, source = attach_head_map(policy, head_map, pipeline)
        if getattr(policy, "head_map", "-") is None:  # a head-map policy without one
            # every rank profiles the same map (same prompt, seed, weights): nothing to send
            profiled = pipeline.calibrate(prompts, seed)
            if world.is_main:
                storer(pipeline, report)(profiled)
            policy = policy.with_head_map(profiled)
        parallel = HeadParallel(pipeline, world)
        assignment = parallel.assign(policy)  # refuses more ranks than heads, before any pass
        pipeline.parallel = parallel
        if world.is_main:
            describe(pipeline, policy, source)
            report(f"heads over {world.size} ranks:\n{assignment.report()}")
            written = write_pipeline_stream(
                pipeline,
                out,
                prompts,
                num_frames,
                policy,
                seed=seed,
                switch=switch,
                scale=scale,
                overwrite=overwrite,
                on_head_map=None,
            )
            for line in written.lines:
                report(line)
            status, cache_bytes = written.status, parallel.cache_bytes
        else:  # the same passes, no decoding
            cache = pipeline.new_cache(policy)
            for _ in pipeline.generate_latents(prompts, num_frames, cache, seed, switch):
                pass
            status, cache_bytes = 0, cache.bytes_held()
        report(f"rank {world.rank}: K/V held {cache_bytes / 2**20:.2f} MiB")
        return status
    finally:
        world.close()
