"""Who does what: jobs of unequal size over ranks, largest first onto the lightest rank.

Greedy list scheduling (LPT, Graham 1969) has a bound that is all we promise: when the last job
of the heaviest rank was placed, that rank was the lightest, so at the end the heaviest rank
exceeds the lightest by at most one job. ``batch`` splits its videos so (cost: latent frames);
head-parallel generation splits every layer's heads so (cost: the K/V tokens a head's buffers
hold, its kept frames and the chunk's slots, which is both its K/V bytes and its attention work:
a chunk's queries times the tokens they attend to).

Head Forcing's head types keep unequal budgets (a memory head about twice a local head's tokens
at the defaults), so an equal count of heads per rank would not balance the K/V: the split takes
uneven head counts where that evens out the tokens (``all_to_all_single`` takes split sizes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from headforcing.cache.policy import CachePolicy, Retention


def greedy_split(costs: Sequence[float], parts: int) -> list[list[int]]:
    """Indices of ``costs`` split over ``parts`` ranks: largest cost first, onto the rank with
    the least cost so far (ties: fewer items, then the lower rank; equal costs keep their
    order). Every rank's indices come out ascending. Deterministic: every rank computes the
    same split."""
    if parts < 1:
        raise ValueError(f"split over at least one rank, got {parts}")
    loads = [0.0] * parts
    split: list[list[int]] = [[] for _ in range(parts)]
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(parts), key=lambda r: (loads[r], len(split[r]), r))
        split[rank].append(index)
        loads[rank] += costs[index]
    return [sorted(indices) for indices in split]


def held_tokens(
    rule: Retention, tokens_per_frame: int, chunk_frames: int, horizon_frames: int
) -> int:
    """Tokens the buffers of one head of ``rule`` hold once full: sink, episodic memory, recent
    frames (``horizon_frames`` for the one unbounded retention, ``full``) and the chunk's
    slots; a chunk's queries attend to all of them."""
    recent = horizon_frames if rule.recent_frames is None else rule.recent_frames
    memory = rule.memory.capacity(tokens_per_frame) if rule.memory is not None else 0
    return (rule.sink_frames + recent + chunk_frames) * tokens_per_frame + memory


@dataclass(frozen=True)
class HeadAssignment:
    """Every layer's heads split over the ranks.

    heads: ``[layer][rank]`` the original heads a rank holds, group after group (the order of
    its slice of the permuted q/k/v); held: ``[layer][rank]`` the K/V tokens those heads hold;
    head_tokens: ``[layer][head]`` the tokens each original head holds.
    """

    heads: tuple[tuple[tuple[int, ...], ...], ...]
    held: tuple[tuple[int, ...], ...]
    head_tokens: tuple[tuple[int, ...], ...]

    @property
    def ranks(self) -> int:
        return len(self.heads[0])

    def head_order(self) -> list[list[int]]:
        """Per layer, the model's head order: rank 0's heads, then rank 1's, ... (for
        :meth:`headforcing.model.WanModel.set_head_order`)."""
        return [[head for rank_heads in layer for head in rank_heads] for layer in self.heads]

    def rank_heads(self, rank: int) -> list[list[int]]:
        """Per layer, the heads of ``rank`` in the order it holds them (its cache's order)."""
        return [list(layer[rank]) for layer in self.heads]

    def head_counts(self, layer: int) -> list[int]:
        return [len(rank_heads) for rank_heads in self.heads[layer]]

    def held_per_rank(self) -> list[int]:
        """K/V tokens every rank holds, summed over layers (its share of the K/V)."""
        return [sum(layer[rank] for layer in self.held) for rank in range(self.ranks)]

    def worst_gap(self) -> tuple[int, int]:
        """The largest ``max - min`` of held tokens over the ranks of one layer, and that
        layer's largest head (the bound: the gap never exceeds it)."""
        gaps = [
            (max(held) - min(held), max(tokens))
            for held, tokens in zip(self.held, self.head_tokens, strict=True)
        ]
        return max(gaps)

    def report(self) -> str:
        """One line per rank: heads per layer (first layers), held K/V tokens; the worst gap."""
        lines = []
        for rank, held in enumerate(self.held_per_rank()):
            counts = [len(layer[rank]) for layer in self.heads]
            shown = ",".join(map(str, counts[:8])) + ("..." if len(counts) > 8 else "")
            lines.append(f"rank {rank}: heads per layer {shown}; K/V tokens held {held}")
        gap, largest = self.worst_gap()
        lines.append(f"largest gap in one layer: {gap} tokens (its largest head holds {largest})")
        return "\n".join(lines)


def assign_heads(
    policy: CachePolicy,
    num_layers: int,
    num_heads: int,
    chunk_frames: int,
    tokens_per_frame: int,
    ranks: int,
    horizon_frames: int = 21,
) -> HeadAssignment:
    """Split every layer's heads over ``ranks`` so that the K/V tokens they hold are balanced,
    to within one head's tokens per layer (:func:`greedy_split`).

    ``horizon_frames``: frames a ``full`` head is counted as keeping (all heads of ``full``
    keep the same, so any value splits them evenly).
    """
    if not 1 <= ranks <= num_heads:
        raise ValueError(
            f"{num_heads} heads cannot be split over {ranks} ranks; run at most {num_heads} "
            "ranks per stream (heads are the unit of work)"
        )
    heads, held, head_tokens = [], [], []
    for layer in range(num_layers):
        specs = policy.head_groups(layer, num_heads, chunk_frames)
        tokens = [0] * num_heads
        group_of = [0] * num_heads
        for group, spec in enumerate(specs):
            for head in spec.heads:
                tokens[head] = held_tokens(
                    spec.rule, tokens_per_frame, chunk_frames, horizon_frames
                )
                group_of[head] = group
        split = greedy_split(tokens, ranks)
        # inside a rank, group after group: every group is one contiguous slice
        layer_heads = [tuple(sorted(part, key=lambda h: (group_of[h], h))) for part in split]
        heads.append(tuple(layer_heads))
        held.append(tuple(sum(tokens[h] for h in part) for part in layer_heads))
        head_tokens.append(tuple(tokens))
    return HeadAssignment(tuple(heads), tuple(held), tuple(head_tokens))
