"""What a cache policy is: which heads form groups, and what each group keeps.

A policy is a small ``@dataclass`` (one per file in ``policies/``). For every layer it returns
head groups, each a contiguous range of heads with a :class:`Retention` rule. After every
committed chunk the rule says which stored tokens to keep; before every chunk it lays the kept
tokens out on temporal positions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

POSITION_MODES = ("absolute", "relative")


def check_position_mode(mode: str) -> None:
    if mode not in POSITION_MODES:
        raise ValueError(f"positions must be one of {', '.join(POSITION_MODES)}; got {mode!r}")


@dataclass(frozen=True)
class Layout:
    """Temporal positions for one chunk's attention.

    context: ``[N]`` position of every kept token; chunk: ``[F]`` position of every chunk frame.
    """

    context: torch.Tensor
    chunk: torch.Tensor


class Retention(ABC):
    """The rule of one head group: what to keep and where to put it."""

    positions: str = "absolute"

    @abstractmethod
    def retain(
        self, frame_ids: torch.Tensor, frames_done: int, chunk_frames: int
    ) -> torch.Tensor | None:
        """Indices (ascending) of the tokens to keep, or ``None`` to keep all.

        frame_ids: ``[N]`` absolute latent frame of every stored token, the chunk just committed
        included; frames_done: frames generated so far (the next chunk starts there);
        chunk_frames: frames per chunk.
        """

    def layout(self, frame_ids: torch.Tensor, chunk_first: int, chunk_frames: int) -> Layout:
        """Positions of the kept tokens and of the next chunk.

        ``absolute``: every token at its own frame index (Self-Forcing). ``relative``: the kept
        frames on consecutive positions from 0 in order, the chunk right after them.
        """
        device = frame_ids.device
        chunk_ids = torch.arange(chunk_first, chunk_first + chunk_frames, device=device)
        if self.positions == "absolute":
            return Layout(context=frame_ids, chunk=chunk_ids)
        kept_frames, slots = torch.unique(frame_ids, sorted=True, return_inverse=True)
        chunk = torch.arange(chunk_frames, device=device) + kept_frames.numel()
        return Layout(context=slots, chunk=chunk)


@dataclass(frozen=True)
class HeadGroupSpec:
    """Heads ``start:stop`` of a layer that share one store and one rule."""

    start: int
    stop: int
    rule: Retention


class CachePolicy(Retention):
    """A policy whose every head in every layer follows one rule (itself).

    Subclasses are dataclasses with a ``name`` and validated parameters; policies with several
    head groups override :meth:`head_groups`.
    """

    name: ClassVar[str]

    def check_chunk(self, chunk_frames: int) -> None:
        """Validate the parameters against the chunk size; raise ValueError if they clash."""

    def head_groups(self, layer: int, num_heads: int) -> list[HeadGroupSpec]:
        return [HeadGroupSpec(0, num_heads, self)]

    def describe(self) -> str:
        return self.name
