"""Past one process: many videos over ranks (``batch``) and one stream over ranks by heads,
on ``torch.distributed`` launched by ``torchrun`` (docs/distributed.md)."""

from headforcing.distributed.balance import HeadAssignment, assign_heads, greedy_split
from headforcing.distributed.heads import HeadParallel
from headforcing.distributed.world import World, backend_for, join_world, launched

__all__ = [
    "HeadAssignment",
    "HeadParallel",
    "World",
    "assign_heads",
    "backend_for",
    "greedy_split",
    "join_world",
    "launched",
]
