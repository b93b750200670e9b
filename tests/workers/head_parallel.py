"""Run under ``torchrun``: one stream per case on ``tiny``, head-parallel over the ranks; every
rank saves its latents (before decoding) and its cache's bytes for the test to compare. The
cases: ``window``, ``head_forcing``, ``switch`` (head_forcing with a prompt switch at latent
frame 6: the head-aware re-cache runs through the exchange too) and ``recache`` (LongLive's
one-pass re-cache of a sink past its window, at frame 9).

    torchrun --standalone --nproc_per_node 2 head_parallel.py OUT HEAD_MAP FRAMES
"""

import sys
from pathlib import Path

import torch

from headforcing.cache import make_policy
from headforcing.distributed import HeadParallel, join_world
from headforcing.heads.headmap import HeadMap
from headforcing.pipeline import Pipeline
from headforcing.schedule import PromptSchedule, PromptSegment

PROMPT = "a red ball on a floor"
SCHEDULE = PromptSchedule((PromptSegment(0, PROMPT), PromptSegment(6, "a blue cube in the rain")))
LATER = PromptSchedule((PromptSegment(0, PROMPT), PromptSegment(9, "a blue cube in the rain")))


def cases(head_map: HeadMap) -> dict:
    """name -> (policy, prompt, switch mode)."""
    head_forcing = make_policy("head_forcing").with_head_map(head_map)
    sink = make_policy("sink", window_frames=6, sink_frames=3, positions="absolute")
    return {
        "window": (make_policy("window"), PROMPT, None),
        "head_forcing": (head_forcing, PROMPT, None),
        "switch": (head_forcing, SCHEDULE, None),
        "recache": (sink, LATER, "recache"),
    }


def main(out: Path, head_map: Path, frames: int) -> None:
    torch.set_num_threads(1)
    world = join_world("gloo")
    for name, (policy, prompt, switch) in cases(HeadMap.load(head_map)).items():
        pipeline = Pipeline.with_standins("tiny", height=64, width=64)
        pipeline.parallel = HeadParallel(pipeline, world)
        cache = pipeline.new_cache(policy)
        chunks = list(pipeline.generate_latents(prompt, frames, cache, seed=3, switch=switch))
        latents = torch.cat([chunk.latents for chunk in chunks], dim=2)
        result = {"latents": latents, "kv_bytes": cache.bytes_held()}
        torch.save(result, out / f"{name}.rank{world.rank}.pt")
    world.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
