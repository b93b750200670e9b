"""The ranks of a run: ``torchrun`` starts one process per rank and tells each, through its
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``), where
it stands; :func:`join_world` turns that into a :class:`World`. Without ``torchrun`` a run is a
world of one process and needs no process group.

Backends: NCCL moves tensors between GPUs (head-parallel generation on CUDA); gloo moves them
between CPU processes (the tests, head-parallel on CPU) and carries the few control messages of
``batch`` (the job list, the final barrier) on any device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

# torchrun's variables; RANK and WORLD_SIZE say that this process is one rank of a launch
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE")


@dataclass(frozen=True)
class World:
    """This process's place among the ranks: ``rank`` of ``size``, ``local_rank`` on its node
    (its GPU). ``joined``: a process group is open (torchrun); else a world of one."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    joined: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the shared outputs (the video of a stream, the merged manifest)."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """This rank's device: ``cuda`` means the GPU of ``local_rank``; the CPU stays."""
        if device.type == "cuda" and self.joined:
            return torch.device("cuda", self.local_rank)
        return device

    def barrier(self) -> None:
        if self.joined:
            dist.barrier()

    def broadcast(self, value):
        """Rank 0's ``value`` (any picklable object) on every rank."""
        if not self.joined:
            return value
        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.joined and dist.is_initialized():
            dist.destroy_process_group()


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or another launcher that sets its
    environment variables)."""
    return all(name in os.environ for name in LAUNCH_VARIABLES)


def join_world(backend: str, timeout: timedelta = timedelta(minutes=30)) -> World:
    """Join the launch this process belongs to (``backend``: ``gloo`` or ``nccl``), or return
    a world of one when it was not launched by ``torchrun``.

    ``timeout``: how long a collective waits for the slowest rank (``batch`` waits at its end
    for every rank to finish its videos: give it hours).
    """
    if not launched():
        return World()
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise ValueError("the nccl backend needs CUDA GPUs; on CPUs ranks talk over gloo")
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timeout)
    return World(rank, size, local_rank, joined=True)


def backend_for(device: torch.device) -> str:
    """NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if device.type == "cuda" else "gloo"
