"""What a cache policy is: which heads form groups, and what each group keeps.

A policy is a small ``@dataclass`` (one per file in ``policies/``). For every layer it returns
head groups, each a set of heads with a :class:`Retention`: the sink (first frames kept for
ever), the recent frames kept before the chunk, an optional long-term memory between them (the
episodic memory of Head Forcing's memory heads), and where the kept tokens sit in time. The
engine (:mod:`headforcing.cache.kv`) turns a retention into fixed-capacity buffers on the device.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ClassVar

import torch

if TYPE_CHECKING:
    from headforcing.cache.longterm import LongTermMemory

POSITION_MODES = ("absolute", "relative")


def check_position_mode(mode: str) -> None:
    if mode not in POSITION_MODES:
        raise ValueError(f"positions must be one of {', '.join(POSITION_MODES)}; got {mode!r}")


@dataclass(frozen=True)
class Layout:
    """Temporal positions of one chunk's attention, as a report.

    context: ``[N]`` position of every kept token (ascending token id); chunk: ``[F]`` position of
    every chunk frame.
    """

    context: torch.Tensor
    chunk: torch.Tensor


@dataclass(frozen=True)
class Retention:
    """What one head group keeps.

    Parameters
    ----------
    sink_frames:
        The first frames of the video, kept for ever.
    recent_frames:
        Frames kept right before the next chunk, besides the sink; ``None``: every frame
        (``full``, the only unbounded retention).
    memory:
        Long-term memory fed with the frames that leave the recent frames (``None``: they are
        dropped).
    positions:
        ``absolute``: every token at its own frame index (Self-Forcing). ``relative``: the kept
        frames on consecutive temporal positions from 0 (sink, one slot per memory episode,
        recent frames), the chunk right after them.
    """

    sink_frames: int = 0
    recent_frames: int | None = 0
    memory: LongTermMemory | None = None
    positions: str = "absolute"

    def attention_span(self, chunk_frames: int) -> int | None:
        """Latent frames kept whole that one chunk attends to, itself and the sink included
        (LongLive's ``local_attn_size``): a KV re-cache re-runs that many. ``None``: all."""
        if self.recent_frames is None:
            return None
        return self.sink_frames + self.recent_frames + chunk_frames

    def extent(self, chunk_frames: int) -> int | None:
        """Temporal positions one chunk spans with relative positions, chunk included."""
        span = self.attention_span(chunk_frames)
        if span is None:
            return None
        return span + (self.memory.extent if self.memory is not None else 0)


@dataclass(frozen=True)
class HeadGroupSpec:
    """Heads of a layer that share one store and one retention; ``label`` names the head type."""

    heads: tuple[int, ...]
    rule: Retention
    label: str = "all"


class CachePolicy(ABC):
    """Splits every layer's heads into groups, each with a :class:`Retention`.

    Subclasses are dataclasses with a ``name`` and validated parameters.
    """

    name: ClassVar[str]
    positions: str = "absolute"
    # what a prompt switch does by default (headforcing.switch)
    default_switch: ClassVar[str] = "head-aware"

    def check(self, chunk_frames: int, trained_frames: int) -> None:  # noqa: B027 (optional hook)
        """Validate the parameters against the chunk size and the trained range of positions;
        raise ValueError if they clash. Nothing to check by default."""

    @abstractmethod
    def head_groups(self, layer: int, num_heads: int, chunk_frames: int) -> list[HeadGroupSpec]:
        """The head groups of ``layer``."""

    def head_order(self, num_layers: int, num_heads: int, chunk_frames: int) -> list[list[int]]:
        """Per layer, the heads group after group: the model's heads are permuted to this order
        once, so that every group's q/k/v/o are contiguous slices."""
        return [
            [
                head
                for spec in self.head_groups(layer, num_heads, chunk_frames)
                for head in spec.heads
            ]
            for layer in range(num_layers)
        ]

    def describe(self) -> str:
        return self.name


class HeadMapPolicy(CachePolicy):
    """A policy whose groups come from a head map (a dataclass with a ``head_map`` field): a
    run without one profiles it first (:meth:`headforcing.pipeline.Pipeline.stream`).

    The plumbing lives here once: a subclass names its ``groups`` (in buffer order), says which
    group every head of every layer joins (:meth:`head_labels`) and what each group keeps
    (:meth:`group_rule`); the head groups and the one-line description follow.
    """

    head_map = None
    default_switch: ClassVar[str] = "head-aware"
    groups: ClassVar[tuple[str, ...]] = ()

    def with_head_map(self, head_map):
        return replace(self, head_map=head_map)

    def missing_map(self) -> ValueError:
        return ValueError(
            f"{self.name} needs a head map: pass --head-map, run `headforcing profile`, or let "
            "`generate` profile one before the run"
        )

    @abstractmethod
    def head_labels(self) -> list[list[str]]:
        """``[layer][head]``: the group every head joins (one of :attr:`groups`)."""

    @abstractmethod
    def group_rule(self, group: str, chunk_frames: int) -> Retention:
        """What the heads of ``group`` keep."""

    def head_groups(self, layer: int, num_heads: int, chunk_frames: int) -> list[HeadGroupSpec]:
        if self.head_map is None:
            raise self.missing_map()
        labels = self.head_labels()[layer]
        specs = []
        for group in self.groups:
            heads = tuple(head for head, label in enumerate(labels) if label == group)
            if heads:
                specs.append(HeadGroupSpec(heads, self.group_rule(group, chunk_frames), group))
        return specs

    def describe(self) -> str:
        """``name(L54/A90/M216)``: the heads of every group, by its initial."""
        if self.head_map is None:
            return f"{self.name}(map pending)"
        flat = [label for row in self.head_labels() for label in row]
        counts = "/".join(f"{group[0].upper()}{flat.count(group)}" for group in self.groups)
        return f"{self.name}({counts})"


class UniformPolicy(CachePolicy):
    """A policy whose every head in every layer keeps the same: :meth:`retention`."""

    @abstractmethod
    def retention(self, chunk_frames: int) -> Retention:
        """The retention of every head."""

    def head_groups(self, layer: int, num_heads: int, chunk_frames: int) -> list[HeadGroupSpec]:
        return [HeadGroupSpec(tuple(range(num_heads)), self.retention(chunk_frames))]
