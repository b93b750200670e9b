"""Run under ``torchrun``: one stream per policy on ``tiny``, head-parallel over the ranks; every
rank saves its latents (before decoding) and its cache's bytes for the test to compare.

    torchrun --standalone --nproc_per_node 2 head_parallel.py OUT HEAD_MAP FRAMES
"""

import sys
from pathlib import Path

import torch

from headforcing.cache import make_policy
from headforcing.distributed import HeadParallel, join_world
from headforcing.heads.headmap import HeadMap
from headforcing.pipeline import Pipeline


def main(out: Path, head_map: Path, frames: int) -> None:
    torch.set_num_threads(1)
    world = join_world("gloo")
    policies = {
        "window": make_policy("window"),
        "head_forcing": make_policy("head_forcing").with_head_map(HeadMap.load(head_map)),
    }
    for name, policy in policies.items():
        pipeline = Pipeline.with_standins("tiny", height=64, width=64)
        pipeline.parallel = HeadParallel(pipeline, world)
        cache = pipeline.new_cache(policy)
        chunks = list(pipeline.generate_latents("a red ball on a floor", frames, cache, seed=3))
        latents = torch.cat([chunk.latents for chunk in chunks], dim=2)
        result = {"latents": latents, "kv_bytes": cache.bytes_held()}
        torch.save(result, out / f"{name}.rank{world.rank}.pt")
    world.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
