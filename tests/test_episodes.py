"""The episodic memory, batched over every memory-head group of every layer, against a
straightforward reference written here: one group at a time, one evicted frame at a time, in
plain Python, from the rule in ``headforcing.cache.memory`` (open / absorb / merge)."""

import dataclasses

import pytest
import torch

from headforcing.cache import KVCache
from headforcing.cache.policies import HeadForcingPolicy
from headforcing.heads import HeadMap

from .reference import reference_rope_angles, reference_rotate
from .test_cache import GRID

TOKENS = GRID[0] * GRID[1]
LABELS = (  # memory groups of 4, 1 and 2 heads: one store, groups of different sizes
    ("memory",) * 4,
    ("memory", "local", "anchor", "local"),
    ("anchor", "memory", "memory", "local"),
)


@dataclasses.dataclass
class Episode:
    tokens: list[int]
    first: int
    last: int
    frames: int
    summary: torch.Tensor  # [Hg * D], float64


class ReferenceMemory:
    """One group's episodic memory by the rule: sink and working memory are the cache's; this
    is the list of episodes in between."""

    def __init__(self, policy: HeadForcingPolicy):
        self.policy = policy
        self.size = max(1, min(TOKENS, round(policy.episode_frames * TOKENS)))
        self.episodes: list[Episode] = []
        self.current: Episode | None = None
        self.opened: list[int] = []
        self.merges = 0

    def best(self, candidates: list[int], importance: dict[int, float]) -> list[int]:
        return sorted(candidates, key=lambda token: -importance[token])[: self.size]

    @staticmethod
    def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(a @ b / max((a.norm() * b.norm()).item(), 1e-8))

    def absorb(self, frame: int, summary: torch.Tensor, importance: dict[int, float]):
        policy, frame_tokens = self.policy, list(range(frame * TOKENS, (frame + 1) * TOKENS))
        current = self.current
        novel = (
            current is None
            or 1 - self.cosine(summary, current.summary) > policy.novelty_threshold
            or frame - current.first + 1 > policy.episode_span_frames
        )
        if not novel:  # the current episode absorbs the frame
            current.tokens = self.best(current.tokens + frame_tokens, importance)
            current.summary = (current.summary * current.frames + summary) / (current.frames + 1)
            current.frames += 1
            current.last = frame
            return
        self.opened.append(frame)
        new = Episode(self.best(frame_tokens, importance), frame, frame, 1, summary)
        if len(self.episodes) == policy.max_episodes:  # full: the least attended one goes
            episodes = sorted(self.episodes, key=lambda episode: episode.first)
            weakest = min(
                episodes, key=lambda e: sum(importance[t] for t in e.tokens) / len(e.tokens)
            )
            at = episodes.index(weakest)
            previous = episodes[at - 1] if at > 0 else None
            following = episodes[at + 1] if at + 1 < len(episodes) else None
            like_previous = self.cosine(weakest.summary, previous.summary) if previous else None
            like_next = self.cosine(weakest.summary, (following or new).summary)
            target = None
            if previous is not None and like_previous >= like_next:
                target = previous
            elif following is not None:
                target = following
            self.episodes.remove(weakest)
            self.merges += 1
            if target is None:  # the newest and most like the frame: the new episode takes it
                new.tokens = self.best(weakest.tokens + frame_tokens, importance)
                new.summary = (weakest.summary * weakest.frames + summary) / (weakest.frames + 1)
                new.frames, new.first = weakest.frames + 1, weakest.first
            else:  # merged into its more similar neighbour in time
                target.tokens = self.best(target.tokens + weakest.tokens, importance)
                total = target.frames + weakest.frames
                target.summary = (
                    target.summary * target.frames + weakest.summary * weakest.frames
                ) / total
                target.frames = total
                target.first = min(target.first, weakest.first)
                target.last = max(target.last, weakest.last)
        self.episodes.append(new)
        self.current = new


def planted_keys(frame, scenes, generator):
    """``[1, TOKENS, H, D]`` keys of ``frame``: its scene (a new one every 2 frames, 4 in
    turn) plus a little noise."""
    scene = scenes[(frame // 2) % len(scenes)]
    noise = 0.05 * torch.randn(1, TOKENS, *scene.shape, generator=generator)
    return scene + noise


def summary_of(keys, heads):
    """Mean key of a frame at temporal position 0 (spatially rotated), over ``heads``."""
    head_dim = keys.shape[-1]
    spatial = torch.arange(TOKENS)
    angles = reference_rope_angles(
        head_dim, torch.zeros(TOKENS), spatial // GRID[1], spatial % GRID[1]
    )
    rotated = reference_rotate(keys[0][:, list(heads)].transpose(0, 1), angles)  # [Hg, T, D]
    return rotated.mean(dim=1).flatten()


@pytest.mark.parametrize("positions", ["relative", "absolute"])
def test_batched_episodes_make_the_reference_decisions(small_config, positions):
    config = dataclasses.replace(small_config, num_layers=3)
    policy = HeadForcingPolicy(
        head_map=HeadMap("test", LABELS),
        sink_frames=2,
        working_frames=3,
        max_episodes=3,
        episode_frames=0.5,
        novelty_threshold=0.3,
        episode_span_frames=4,
        positions=positions,
    )
    cache = KVCache(policy, config, *GRID)
    memory_groups = [group for group in cache.groups() if group.label == "memory"]
    assert [len(group.heads) for group in memory_groups] == [4, 1, 2]
    assert len({id(group.store) for group in memory_groups}) == 1  # batched: one store
    references = {id(group): ReferenceMemory(policy) for group in memory_groups}
    generator = torch.Generator().manual_seed(0)
    scenes = [torch.randn(config.num_heads, config.head_dim, generator=generator) for _ in "abcd"]
    keys_of = {}
    for _ in range(16):
        chunk = cache.begin_chunk(3)
        frames = range(chunk.first_frame, chunk.end_frame)
        k = torch.cat([planted_keys(frame, scenes, generator) for frame in frames], dim=1)
        for frame in frames:
            keys_of[frame] = k[:, (frame - chunk.first_frame) * TOKENS :][:, :TOKENS]
        for layer in range(config.num_layers):
            q = torch.randn(1, chunk.num_tokens, config.num_heads, config.head_dim)
            cache.attend(layer, q, k.clone(), torch.randn_like(q), commit=True)
        # what the engine's memory selects by: every held token's accumulated attention
        importance = {
            id(group): dict(zip(group.slot_token.tolist(), group.importance.tolist(), strict=True))
            for group in memory_groups
        }
        leaving = [
            frame
            for frame in range(policy.sink_frames, chunk.end_frame - policy.working_frames)
            if frame >= chunk.first_frame - policy.working_frames
        ]
        cache.end_chunk()
        for group in memory_groups:
            for frame in leaving:
                summary = summary_of(keys_of[frame], group.heads)
                references[id(group)].absorb(frame, summary, importance[id(group)])

    merges = 0
    for group in memory_groups:
        reference = references[id(group)]
        expected = sorted(reference.episodes, key=lambda episode: episode.first)
        actual = group.episodes
        assert [(e.first_frame, e.last_frame, e.frames) for e in actual] == [
            (e.first, e.last, e.frames) for e in expected
        ], len(group.heads)
        for ours, theirs in zip(actual, expected, strict=True):
            assert ours.token_ids.tolist() == sorted(theirs.tokens)
        assert group.opened_at == reference.opened
        merges += (
            sum(e.frames for e in expected)
            - len(expected)
            - sum(1 for e in expected if e.first == e.last)
        )
    assert len(reference.opened) > policy.max_episodes, "the list never overflowed"
    assert any(e.last - e.first >= 2 for r in references.values() for e in r.episodes)
