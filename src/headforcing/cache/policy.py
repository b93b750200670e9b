"""What a cache policy is: which heads form groups, and what each group keeps.

A policy is a small ``@dataclass`` (one per file in ``policies/``). For every layer it returns
head groups, each a set of heads with a :class:`Retention` rule. After every committed chunk the
rule says which stored tokens to keep; before every chunk it lays the kept tokens out on
temporal positions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

if TYPE_CHECKING:
    from headforcing.cache.kv import HeadGroup

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


def relative_layout(slots: torch.Tensor, chunk_frames: int) -> Layout:
    """Distinct ``slots`` (ascending per token) on consecutive positions, the chunk after."""
    if slots.numel() == 0:
        return Layout(context=slots, chunk=torch.arange(chunk_frames))
    changes = torch.ones_like(slots, dtype=torch.bool)
    changes[1:] = slots[1:] != slots[:-1]
    context = torch.cumsum(changes, 0) - 1
    return Layout(context=context, chunk=torch.arange(chunk_frames) + int(context[-1]) + 1)


class Retention(ABC):
    """The rule of one head group: what to keep and where to put it.

    ``wants_importance``: the group then keeps, for every stored token, the attention mass that
    sampled queries of committed chunks gave it (see ``KVCache``), for the rule to select by.
    """

    positions: str = "absolute"
    wants_importance: ClassVar[bool] = False
    # the first frames of the video, kept for ever; a prompt switch keeps them too
    sink_frames: int = 0

    @abstractmethod
    def retain(self, group: HeadGroup, frames_done: int, chunk_frames: int) -> torch.Tensor | None:
        """Indices (ascending) of the group's stored tokens to keep, or ``None`` to keep all.

        Called right after a chunk was appended to ``group`` (``group.token_ids``,
        ``group.frame_ids``, ``group.keys``, ``group.importance``); frames_done: frames generated
        so far (the next chunk starts there); chunk_frames: frames per chunk.
        """

    def layout(self, group: HeadGroup, chunk_first: int, chunk_frames: int) -> Layout:
        """Positions of the kept tokens and of the next chunk.

        ``absolute``: every token at its own frame index (Self-Forcing). ``relative``: the kept
        frames on consecutive positions from 0 in order, the chunk right after them.
        """
        frame_ids = group.frame_ids
        if self.positions == "absolute":
            return Layout(frame_ids, torch.arange(chunk_first, chunk_first + chunk_frames))
        return relative_layout(frame_ids, chunk_frames)

    # prompt switches (headforcing.switch): what a KV re-cache re-runs and what it keeps

    def attention_span(self, chunk_frames: int) -> int | None:
        """Latent frames one chunk attends to, itself and the sink included (LongLive's
        ``local_attn_size``): a KV re-cache re-runs that many. ``None``: unbounded (all)."""
        return None

    def memory_tokens(self, group: HeadGroup) -> torch.Tensor | None:
        """``[N]`` bool: stored tokens that are long-term memory (besides the sink and the
        recent frames), which a head-aware prompt switch keeps. ``None``: there are none."""
        return None

    def forget(self, group: HeadGroup) -> None:  # noqa: B027 (optional hook)
        """The cache dropped tokens of ``group`` outside :meth:`retain` (a KV re-cache):
        bring the rule's own state in line with what ``group.token_ids`` still holds."""

    def on_prompt_switch(self) -> None:  # noqa: B027 (optional hook)
        """The prompt changes before the next chunk."""


@dataclass(frozen=True)
class HeadGroupSpec:
    """Heads of a layer that share one store and one rule; ``label`` names the head type."""

    heads: tuple[int, ...]
    rule: Retention
    label: str = "all"


class CachePolicy(ABC):
    """Splits every layer's heads into groups, each with a :class:`Retention` rule.

    Subclasses are dataclasses with a ``name`` and validated parameters.
    """

    name: ClassVar[str]
    positions: str = "absolute"

    def check(self, chunk_frames: int, trained_frames: int) -> None:  # noqa: B027 (optional hook)
        """Validate the parameters against the chunk size and the trained range of positions;
        raise ValueError if they clash. Nothing to check by default."""

    @abstractmethod
    def head_groups(self, layer: int, num_heads: int, chunk_frames: int) -> list[HeadGroupSpec]:
        """The head groups of ``layer``, each with a fresh rule (rules may hold state)."""

    def describe(self) -> str:
        return self.name


class UniformPolicy(CachePolicy, Retention):
    """A policy whose every head in every layer follows one rule: itself."""

    def head_groups(self, layer: int, num_heads: int, chunk_frames: int) -> list[HeadGroupSpec]:
        return [HeadGroupSpec(tuple(range(num_heads)), self)]
