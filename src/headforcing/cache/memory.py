"""The episodic memory of memory heads, resident on the cache's device.

Our design (DESIGN.md, "Head Forcing, as we design it"; the paper's exact rule is not public).
A memory head keeps three levels: the sink and the working memory (the last frames, whole) are
the group's own regions (:mod:`headforcing.cache.kv`); between them, this module's **episodic
memory**: at most ``max_episodes`` episodes of ``episode_tokens`` tokens each, every episode
summarising a stretch of past frames by the tokens that sampled queries of committed chunks
attended to most (importance decayed by ``importance_decay`` per chunk, as in participative
compression).

A frame leaving working memory opens a new episode when its content is new (cosine distance of
its mean key from the current episode's > ``novelty_threshold``), when the current episode
already spans ``episode_span_frames`` frames, or after a prompt switch (:meth:`open_episode`);
otherwise the current episode absorbs it, re-selecting its top tokens over the union. When a new
episode finds the list full, the least-attended episode first merges into its more similar
neighbour in time (the new episode counts as the newest one's later neighbour), and the new
episode takes its place.

Everything runs as tensor operations on the device (``where``, ``topk``, ``index_copy_``): no
host read per frame, group or layer. Episodes live in fixed slots of the group's buffers; their
order in time is a rank computed on the device, which is what relative positions use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

if TYPE_CHECKING:
    from headforcing.cache.kv import HeadGroup


class MemoryStore(Protocol):
    """The long-term memory of one head group: a region of its buffers between the sink and the
    recent frames, fed with the frames that leave the recent frames (device work only).

    ``region``: its slots in the group's buffers; ``known_full``: host flag, set by the engine
    from :meth:`full` (read once per chunk until it is true).
    """

    region: slice
    known_full: bool

    def absorb(self, group: HeadGroup, frame: int, start: int) -> None:
        """Frame ``frame``, whole in slots ``start .. start + T`` at absolute temporal phase,
        leaves the recent frames."""

    def positions(self) -> torch.Tensor:
        """``[region tokens]`` relative temporal position of every slot, counted from the end
        of the sink (device)."""

    def span(self) -> torch.Tensor:
        """Temporal positions the memory occupies now (device scalar)."""

    def full(self) -> torch.Tensor:
        """Whether every slot holds a token (device bool scalar)."""

    def slot_mask(self, capacity: int) -> torch.Tensor:
        """``[capacity]`` bool: the group's slots that hold memory tokens."""

    def after_rewind(self, group: HeadGroup, keep: torch.Tensor) -> None:
        """The group dropped the slots ``keep`` does not mark (a prompt switch)."""

    def on_prompt_switch(self) -> None: ...

    def state_tensors(self) -> list[torch.Tensor]:
        """Tensors held besides the group's buffers (for ``bytes_held``)."""


class LongTermMemory(Protocol):
    """Parameters of a long-term memory (a frozen dataclass): what a :class:`Retention
    <headforcing.cache.policy.Retention>` names; :meth:`build` makes one group's store."""

    importance_decay: float | None  # None: the memory selects by no importance

    def capacity(self, tokens_per_frame: int) -> int:
        """Slots of the memory's region."""

    @property
    def extent(self) -> int:
        """Temporal positions it spans at most (relative positions)."""

    def build(self, group: HeadGroup, base: int, band_base: int | None) -> MemoryStore: ...


# frames that opened an episode, kept for reports (the last ones only: memory stays bounded)
OPENED_LOG = 256


@dataclass(frozen=True)
class EpisodicMemory:
    """Parameters of the episodic memory of one memory-head group.

    Parameters
    ----------
    max_episodes:
        Episodes kept at most (>= 1; a policy without episodes has no memory at all).
    episode_frames:
        Size of one episode in frames' worth of tokens, in (0, 1] (1.0 = one frame's tokens).
    novelty_threshold:
        Cosine distance of mean keys above which an evicted frame opens a new episode.
    episode_span_frames:
        Frames one episode may absorb before a new one opens.
    importance_decay:
        Per-chunk decay of the accumulated attention each stored token received.
    """

    max_episodes: int = 6
    episode_frames: float = 1.0
    novelty_threshold: float = 0.1
    episode_span_frames: int = 9
    importance_decay: float = 0.9

    def episode_tokens(self, tokens_per_frame: int) -> int:
        return max(1, min(tokens_per_frame, round(self.episode_frames * tokens_per_frame)))

    def capacity(self, tokens_per_frame: int) -> int:
        """Tokens of the episodic region."""
        return self.max_episodes * self.episode_tokens(tokens_per_frame)

    @property
    def extent(self) -> int:
        """Temporal positions at most (one per episode)."""
        return self.max_episodes

    def build(self, group: HeadGroup, base: int, band_base: int | None) -> EpisodeStore:
        return EpisodeStore(self, group, base, band_base)


@dataclass(frozen=True)
class Episode:
    """A report of one episode: its tokens (absolute ids, ascending) and the frames it covers."""

    token_ids: torch.Tensor
    first_frame: int
    last_frame: int
    frames: int


class EpisodeStore:
    """The episodic memory of one group: slots ``base .. base + E * Te`` of its buffers.

    Device state: ``valid [E]``, ``first [E]`` and ``last [E]`` (frames covered), ``frames [E]``
    (frames absorbed), ``summary [E, Hg * D]`` (mean key of the absorbed frames, float32, at
    temporal position 0), ``current`` (the slot of the newest episode).
    """

    def __init__(
        self, rule: EpisodicMemory, group: HeadGroup, base: int, band_base: int | None
    ) -> None:
        self.rule = rule
        self.tokens = rule.episode_tokens(group.tokens_per_frame)
        self.count_slots = rule.max_episodes
        self.base, self.band_base = base, band_base
        device = group.keys.device
        _, heads, _, head_dim = group.keys.shape
        slots = self.count_slots
        self.valid = torch.zeros(slots, dtype=torch.bool, device=device)
        self.first = torch.zeros(slots, dtype=torch.long, device=device)
        self.last = torch.zeros(slots, dtype=torch.long, device=device)
        self.frames = torch.zeros(slots, device=device)
        self.summary = torch.zeros(slots, heads * head_dim, device=device)
        self.current = torch.zeros((), dtype=torch.long, device=device)
        self.opened = torch.full((OPENED_LOG,), -1, dtype=torch.long, device=device)
        self.opened_count = torch.zeros((), dtype=torch.long, device=device)
        self._arange = torch.arange(self.tokens, device=device)
        self._slot_ids = torch.arange(slots, device=device)
        self.switch = False  # host: the next evicted frame opens an episode
        self.known_full = False  # host: every slot is known to be valid (no mask needed)

    # -- state the engine reads ------------------------------------------------------------

    @property
    def region(self) -> slice:
        return slice(self.base, self.base + self.count_slots * self.tokens)

    def span(self) -> torch.Tensor:
        """Valid episodes (a device scalar): one temporal position each."""
        return self.valid.sum()

    def full(self) -> torch.Tensor:
        return self.valid.all()

    def positions(self) -> torch.Tensor:
        """Every slot at its episode's rank in time (all tokens of an episode share it)."""
        return self.rank().repeat_interleave(self.tokens)

    def state_tensors(self) -> list[torch.Tensor]:
        return [self.valid, self.first, self.last, self.frames, self.summary, self.opened]

    def rank(self) -> torch.Tensor:
        """``[E]`` order in time of every valid episode (0 = oldest), on the device."""
        earlier = self.valid[None, :] & (self.first[None, :] < self.first[:, None])
        return earlier.sum(dim=1)

    def slot_mask(self, capacity: int) -> torch.Tensor:
        """``[capacity]`` bool: the group's slots that hold episode tokens."""
        mask = torch.zeros(capacity, dtype=torch.bool, device=self.valid.device)
        mask[self.region] = self.valid.repeat_interleave(self.tokens)
        return mask

    def on_prompt_switch(self) -> None:
        """The next evicted frame opens a new episode."""
        self.switch = True

    # -- the update, one evicted frame at a time ---------------------------------------------

    def absorb(self, group: HeadGroup, frame: int, start: int) -> None:
        """Frame ``frame``, whole in slots ``start .. start + T`` at absolute temporal phase,
        leaves working memory: it joins the episodic memory (tensor operations only)."""
        rule, tokens = self.rule, self.tokens
        frame_slots = group.token_arange + start
        frame_keys = group.keys[:, :, start : start + group.tokens_per_frame]
        summary = group.unrotate(frame_keys.float().mean(dim=(0, 2)), frame).flatten()
        frame_band = None
        if group.band is not None:
            frame_band = group.unrotate(frame_keys[..., : group.band_dim], frame)

        valid, first, current = self.valid, self.first, self.current
        distance = 1 - torch.cosine_similarity(summary, self.summary[current], dim=0)
        span = frame - first[current] + 1
        novel = (
            ~valid.any() | (distance > rule.novelty_threshold) | (span > rule.episode_span_frames)
        )
        if self.switch:
            novel = torch.ones_like(novel)
            self.switch = False
        full_novel = novel & valid.all()

        # when the list is full: the least-attended episode and its neighbours in time
        region = group.importance[self.region].view(self.count_slots, tokens)
        weakest = torch.where(valid, region.mean(dim=1), torch.inf).argmin()
        earlier = valid & (first < first[weakest])
        later = valid & (first > first[weakest])
        previous = torch.where(earlier, first, -1).argmax()
        following = torch.where(later, first, torch.iinfo(torch.long).max).argmin()
        weakest_summary = self.summary[weakest]
        similar_previous = torch.cosine_similarity(weakest_summary, self.summary[previous], dim=0)
        similar_following = torch.where(
            later.any(),
            torch.cosine_similarity(weakest_summary, self.summary[following], dim=0),
            torch.cosine_similarity(weakest_summary, summary, dim=0),
        )
        into_previous = earlier.any() & (similar_previous >= similar_following)
        into_new = full_novel & ~into_previous & ~later.any()
        into_old = full_novel & ~into_new
        target = torch.where(into_previous, previous, following)

        # 1. an older target takes the best tokens of both (otherwise it keeps its own)
        yes = torch.ones_like(novel)
        self._fill(
            group,
            target,
            [self._episode(group, target, yes), self._episode(group, weakest, into_old)],
        )
        frames_target, frames_weakest = self.frames[target], self.frames[weakest]
        total = frames_target + frames_weakest
        merged = (self.summary[target] * frames_target + weakest_summary * frames_weakest) / total
        self._set(self.summary, target, torch.where(into_old, merged, self.summary[target]))
        self._set(self.frames, target, torch.where(into_old, total, frames_target))
        earliest = torch.minimum(first[target], first[weakest])
        latest = torch.maximum(self.last[target], self.last[weakest])
        self._set(first, target, torch.where(into_old, earliest, first[target]))
        self._set(self.last, target, torch.where(into_old, latest, self.last[target]))

        # 2. the frame's destination: the current episode (absorb), the weakest's slot (list
        # full) or the first free slot; it keeps the best of the frame's and ``other``'s tokens
        free = torch.where(valid, self.count_slots, self._slot_ids).min()
        full = valid.all()
        destination = torch.where(novel, torch.where(full, weakest, free), current)
        destination = destination.clamp(max=self.count_slots - 1)
        other = torch.where(novel, weakest, current)
        with_other = ~novel | into_new
        frame_source = (frame_slots, frame_band, yes)
        self._fill(group, destination, [self._episode(group, other, with_other), frame_source])
        other_frames = self.frames[other] * with_other
        self._set(
            self.summary,
            destination,
            (self.summary[other] * other_frames + summary) / (other_frames + 1),
        )
        self._set(self.frames, destination, other_frames + 1)
        self._set(first, destination, torch.where(with_other, first[other], frame))
        self._set(self.last, destination, torch.full_like(first[other], frame))
        self._set(valid, destination, yes)
        self.current = destination

        # report: the frame that opened an episode
        at = self.opened_count % OPENED_LOG
        self._set(self.opened, at, torch.where(novel, frame, self.opened[at]))
        self.opened_count = self.opened_count + novel.long()

    @staticmethod
    def _set(tensor: torch.Tensor, index: torch.Tensor, value: torch.Tensor) -> None:
        """``tensor[index] = value`` with a device scalar index (no host read)."""
        value = value.reshape(1, *tensor.shape[1:]).to(tensor.dtype)
        tensor.index_copy_(0, index.view(1), value)

    def _episode(self, group: HeadGroup, slot: torch.Tensor, eligible: torch.Tensor):
        """Episode ``slot`` as candidates: its slots, raw temporal band, eligibility."""
        band = None
        if group.band is not None:
            band = group.band.index_select(2, self.band_base + slot * self.tokens + self._arange)
        return self.base + slot * self.tokens + self._arange, band, eligible

    def _fill(self, group: HeadGroup, destination: torch.Tensor, sources) -> None:
        """Write into episode ``destination`` the ``Te`` most important eligible candidates.

        sources: ``(slots [K], raw band [B, Hg, K, Dt] or None, eligible)`` each, ``eligible`` a
        device bool scalar. Everything is gathered before anything is written, so a destination
        may be among its own candidates.
        """
        slots = torch.cat([source[0] for source in sources])
        eligible = torch.cat([source[2].expand(source[0].numel()) for source in sources])
        scores = group.importance.index_select(0, slots).masked_fill(~eligible, -torch.inf)
        best = scores.topk(self.tokens, sorted=False).indices
        chosen = slots.index_select(0, best)
        target = self.base + destination * self.tokens + self._arange
        for buffer in (group.keys, group.values):
            buffer.index_copy_(2, target, buffer.index_select(2, chosen))
        for buffer in (group.slot_token, group.importance):
            buffer.index_copy_(0, target, buffer.index_select(0, chosen))
        if group.band is not None:
            bands = torch.cat([source[1] for source in sources], dim=2).index_select(2, best)
            band_target = self.band_base + destination * self.tokens + self._arange
            group.band.index_copy_(2, band_target, bands)

    # -- prompt switches and reports (may read the device: never per chunk) ------------------

    def after_rewind(self, group: HeadGroup, keep: torch.Tensor) -> None:
        """Episodes that lost any token go whole (an episode is always full); the newest valid
        one becomes the current one."""
        region = self.region
        kept = keep[region].view(self.count_slots, self.tokens).all(dim=1)
        self.valid &= kept
        group.slot_token[region] = torch.where(
            self.valid.repeat_interleave(self.tokens), group.slot_token[region], -1
        )
        newest = torch.where(self.valid, self.first, -1).argmax()
        self.current = torch.where(self.valid[self.current], self.current, newest)
        self.known_full = False

    def episodes(self, group: HeadGroup) -> list[Episode]:
        """The valid episodes, oldest first (reads the device)."""
        tokens = group.slot_token[self.region].view(self.count_slots, self.tokens)
        order = sorted(
            (int(self.first[slot]), slot) for slot in range(self.count_slots) if self.valid[slot]
        )
        return [
            Episode(
                tokens[slot].long().sort().values.cpu(),
                first,
                int(self.last[slot]),
                int(self.frames[slot]),
            )
            for first, slot in order
        ]

    def opened_at(self) -> list[int]:
        """Frames that opened an episode, oldest first (the last :data:`OPENED_LOG`)."""
        count = int(self.opened_count)
        log = self.opened.tolist()
        if count <= OPENED_LOG:
            return log[:count]
        at = count % OPENED_LOG
        return log[at:] + log[:at]
