"""The head-to-rank assignment of head-parallel generation: kept K/V balanced across ranks to
within one head's tokens, on head maps whose types are skewed (pure, no processes)."""

import itertools

import pytest
import torch

from headforcing.cache import KVCache, make_policy
from headforcing.distributed import assign_heads, greedy_split
from headforcing.heads import HeadMap
from headforcing.model import WanConfig

TOKENS = 1560  # Wan-1.3B at 480x832
CHUNK = 3


def policy_of(labels):
    return make_policy("head_forcing").with_head_map(HeadMap("test", tuple(labels)))


def skewed_maps():
    """12 heads per layer (Wan): one type nearly everywhere, a lone head of another, mixes."""
    rows = [
        ("memory",) + ("local",) * 11,
        ("local",) + ("memory",) * 11,
        ("memory",) * 3 + ("anchor",) * 9,
        ("anchor",) * 12,
        ("memory", "memory", "local", "anchor") * 3,
    ]
    generator = torch.Generator().manual_seed(0)
    kinds = ("local", "anchor", "memory")
    weights = torch.tensor([0.7, 0.1, 0.2])
    for _ in range(3):  # random maps, skewed toward local heads
        draws = torch.multinomial(weights, 12, replacement=True, generator=generator)
        rows.append(tuple(kinds[i] for i in draws.tolist()))
    return rows


def head_tokens(policy, layer: int, num_heads: int) -> list[int]:
    """What a head's buffers hold, from the policy's own retention (sink + memory + recent +
    the chunk's slots), computed here independently of the assignment."""
    tokens = [0] * num_heads
    for spec in policy.head_groups(layer, num_heads, CHUNK):
        rule = spec.rule
        memory = rule.memory.max_episodes * rule.memory.episode_tokens(TOKENS) if rule.memory else 0
        held = (rule.sink_frames + rule.recent_frames + CHUNK) * TOKENS + memory
        for head in spec.heads:
            tokens[head] = held
    return tokens


@pytest.mark.parametrize("ranks", [2, 3, 4, 5, 8, 12])
def test_held_tokens_balanced_to_within_one_head(ranks):
    labels = skewed_maps()
    policy = policy_of(labels)
    assignment = assign_heads(policy, len(labels), 12, CHUNK, TOKENS, ranks)
    for layer, row in enumerate(labels):
        tokens = head_tokens(policy, layer, 12)
        heads = assignment.heads[layer]
        assert sorted(h for part in heads for h in part) == list(range(12))  # each head once
        loads = [sum(tokens[h] for h in part) for part in heads]
        assert list(assignment.held[layer]) == loads
        # the promise: no rank holds more than one head's tokens beyond another
        assert max(loads) - min(loads) <= max(tokens), (row, loads)
        # inside a rank, every head type is one contiguous run (one slice per group)
        for part in heads:
            types = [row[h] for h in part]
            runs = [kind for kind, _ in itertools.groupby(types)]
            assert len(runs) == len(set(runs))


def test_a_large_memory_head_gets_fewer_heads_beside_it():
    """A memory head holding about 5x a local head's tokens, among eleven local heads, over two
    ranks: six heads each would leave a gap of 17 frames of tokens; the assignment gives the
    memory head's rank fewer heads and ends within one local head."""
    labels = [("memory",) + ("local",) * 11]
    policy = make_policy(
        "head_forcing", local_frames=1, working_frames=6, max_episodes=9
    ).with_head_map(HeadMap("test", tuple(labels)))
    assignment = assign_heads(policy, 1, 12, CHUNK, TOKENS, 2)
    tokens = head_tokens(policy, 0, 12)
    assert tokens[0] == 21 * TOKENS and tokens[1] == 4 * TOKENS
    equal_counts_gap = (21 + 5 * 4 - 6 * 4) * TOKENS
    loads = assignment.held[0]
    assert sorted(assignment.head_counts(0)) == [4, 8]
    assert max(loads) - min(loads) <= tokens[1] < equal_counts_gap


def test_greedy_split_bound_and_determinism():
    generator = torch.Generator().manual_seed(1)
    for parts in (1, 2, 3, 7):
        costs = (torch.rand(23, generator=generator) * 100).round().tolist()
        split = greedy_split(costs, parts)
        assert sorted(i for part in split for i in part) == list(range(23))
        loads = [sum(costs[i] for i in part) for part in split]
        assert max(loads) - min(loads) <= max(costs)
        assert split == greedy_split(costs, parts)


def test_more_ranks_than_heads_is_refused():
    with pytest.raises(ValueError, match="12 heads cannot be split over 16 ranks"):
        assign_heads(make_policy("window"), 30, 12, CHUNK, TOKENS, 16)


def test_rank_caches_split_the_bytes_as_assigned():
    """The caches of the ranks' heads (KVCache with part of the heads) hold, together, what one
    cache of all heads holds, each in proportion to its assigned tokens."""
    config = WanConfig(
        dim=96, ffn_dim=64, freq_dim=32, text_dim=16, text_len=8, num_heads=6, num_layers=2
    )
    labels = [("memory", "local", "local", "local", "local", "anchor")] * 2
    policy = policy_of(labels)
    grid = (2, 2)
    assignment = assign_heads(policy, 2, 6, CHUNK, 4, 2)
    whole = KVCache(policy, config, *grid, CHUNK, 21)
    ranks = [
        KVCache(policy, config, *grid, CHUNK, 21, head_order=assignment.rank_heads(rank))
        for rank in range(2)
    ]

    def kv(cache):
        return sum(g.keys.numel() + g.values.numel() for g in cache.groups())

    assert kv(ranks[0]) + kv(ranks[1]) == kv(whole)
    for rank, cache in enumerate(ranks):
        held = sum(layer[rank] for layer in assignment.held)
        total = sum(sum(layer) for layer in assignment.held)
        assert kv(cache) / kv(whole) == pytest.approx(held / total)
