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

Everything runs as tensor operations on the device (``where``, ``topk``, ``gather``,
``scatter_``), for every memory-head group of every layer at once (:class:`EpisodeBank`, a
leading group dimension): no host read, and the same ops per chunk for 2 layers as for 30.
Episodes live in fixed slots of the store's buffers; their order in time is a rank computed on
the device, which is what relative positions use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from headforcing.cache.longterm import gather_tokens, group_sum, per_head, scatter_tokens

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

    def build(self, store: Any, base: int, band_base: int | None) -> EpisodeBank:
        return EpisodeBank(self, store, base, band_base)


@dataclass(frozen=True)
class Episode:
    """A report of one episode: its tokens (absolute ids, ascending) and the frames it covers."""

    token_ids: torch.Tensor
    first_frame: int
    last_frame: int
    frames: int


class EpisodeBank:
    """The episodic memory of every group of one store: slots ``base .. base + E * Te``.

    Device state, per group ``g`` of ``G``: ``valid [G, E]``, ``first [G, E]`` and
    ``last [G, E]`` (frames covered), ``frames [G, E]`` (frames absorbed), ``current [G]`` (the
    slot of the newest episode); per head of ``H``: ``summary [H, E, D]`` (mean key of the
    absorbed frames, float32, at temporal position 0; a group's summary is its heads' rows
    together, compared by cosine over all of them).
    """

    def __init__(self, rule: EpisodicMemory, store: Any, base: int, band_base: int | None) -> None:
        self.rule = rule
        self.store = store
        self.tokens = rule.episode_tokens(store.tokens_per_frame)
        self.count_slots = slots = rule.max_episodes
        self.base, self.band_base = base, band_base
        device = store.keys.device
        groups, heads, head_dim = store.num_groups, store.num_heads, store.keys.shape[-1]
        self.valid = torch.zeros(groups, slots, dtype=torch.bool, device=device)
        self.first = torch.zeros(groups, slots, dtype=torch.long, device=device)
        self.last = torch.zeros(groups, slots, dtype=torch.long, device=device)
        self.frames = torch.zeros(groups, slots, device=device)
        self.summary = torch.zeros(heads, slots, head_dim, device=device)
        self.current = torch.zeros(groups, dtype=torch.long, device=device)
        self.opened = torch.full((groups, OPENED_LOG), -1, dtype=torch.long, device=device)
        self.opened_count = torch.zeros(groups, dtype=torch.long, device=device)
        self._arange = torch.arange(self.tokens, device=device)
        self._slot_ids = torch.arange(slots, device=device)
        self._group_ids = torch.arange(groups, device=device)
        self.switch = False  # host: the next evicted frame opens an episode
        self.known_full = False  # host: every slot is known to be valid (no mask needed)

    # -- state the engine reads ------------------------------------------------------------

    @property
    def region(self) -> slice:
        return slice(self.base, self.base + self.count_slots * self.tokens)

    def span(self) -> torch.Tensor:
        """``[G]`` valid episodes: one temporal position each."""
        return self.valid.sum(dim=1)

    def full(self) -> torch.Tensor:
        return self.valid.all()

    def positions(self) -> torch.Tensor:
        """``[G, E * Te]``: every slot at its episode's rank in time."""
        return self.rank().repeat_interleave(self.tokens, dim=1)

    def state_tensors(self) -> list[torch.Tensor]:
        return [
            *(self.valid, self.first, self.last, self.frames, self.summary, self.current),
            *(self.opened, self.opened_count),
        ]

    def rank(self) -> torch.Tensor:
        """``[G, E]`` order in time of every valid episode (0 = oldest), on the device."""
        earlier = self.valid[:, None, :] & (self.first[:, None, :] < self.first[:, :, None])
        return earlier.sum(dim=2)

    def slot_mask(self, group: int, capacity: int) -> torch.Tensor:
        """``[capacity]`` bool: the slots of ``group`` that hold episode tokens."""
        mask = torch.zeros(capacity, dtype=torch.bool, device=self.valid.device)
        mask[self.region] = self.valid[group].repeat_interleave(self.tokens)
        return mask

    def on_prompt_switch(self) -> None:
        """The next evicted frame opens a new episode."""
        self.switch = True

    # -- the update, one evicted frame at a time, every group at once ------------------------

    def _at(self, tensor: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """``tensor [G, E]`` at every group's ``slot [G]`` -> ``[G]``."""
        return tensor.gather(1, slot[:, None])[:, 0]

    def _summaries_at(self, slots: torch.Tensor) -> torch.Tensor:
        """``[H, K, D]``: every head's summaries of its group's episodes ``slots [G, K]``."""
        index = per_head(self.store, slots)[:, :, None].expand(-1, -1, self.summary.shape[-1])
        return self.summary.gather(1, index)

    def _summary_at(self, slot: torch.Tensor) -> torch.Tensor:
        """``[H, D]``: every head's summary of its group's episode ``slot [G]``."""
        return self._summaries_at(slot[:, None])[:, 0]

    def _cosines(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per group, the cosine similarities of ``a`` and ``b [H, K, D]`` over all its heads
        (its heads' rows together): ``[G, K]``."""
        products = torch.stack([a * b, a * a, b * b]).sum(dim=-1)  # [3, H, K]
        sums = group_sum(self.store, products.transpose(0, 1))  # [G, 3, K]
        return sums[:, 0] / (sums[:, 1] * sums[:, 2]).sqrt().clamp_min(1e-8)

    def absorb(self, frame: torch.Tensor, slots: torch.Tensor) -> None:
        """Frame ``frame`` (0-dim long), whole in slots ``slots [T]`` at absolute temporal
        phase, leaves working memory of every group (tensor operations only)."""
        rule, store = self.rule, self.store
        frame_keys = store.keys.index_select(2, slots)  # [B, H, T, D]
        frame_band = None
        if store.band is not None:  # the raw band is kept; the summary is its mean (linear)
            frame_band = store.unrotate(frame_keys[..., : store.band_dim], frame)
            raw = torch.cat([frame_band, frame_keys[..., store.band_dim :]], dim=-1)
            summary = raw.float().mean(dim=(0, 2))
        else:
            summary = store.unrotate(frame_keys.float().mean(dim=(0, 2))[:, None], frame)[:, 0]

        valid, first, current = self.valid, self.first, self.current
        # the least-attended episode (it goes when the list is full) and its neighbours in time
        importance = store.importance[:, self.region].view(-1, self.count_slots, self.tokens)
        weakest = torch.where(valid, importance.mean(dim=2), torch.inf).argmin(dim=1)
        first_weakest = self._at(first, weakest)[:, None]
        earlier = valid & (first < first_weakest)
        later = valid & (first > first_weakest)
        previous = torch.where(earlier, first, -1).argmax(dim=1)
        following = torch.where(later, first, torch.iinfo(torch.long).max).argmin(dim=1)
        any_valid_later = later.any(dim=1)

        # every similarity at once: the frame to the current episode, the weakest episode to
        # its earlier and later neighbour and to the frame (the newest's later neighbour)
        summaries = self._summaries_at(torch.stack([current, weakest, previous, following], 1))
        weakest_summary = summaries[:, 1]
        similar = self._cosines(
            torch.stack([summary, weakest_summary, weakest_summary, weakest_summary], dim=1),
            torch.cat([summaries[:, :1], summaries[:, 2:], summary[:, None]], dim=1),
        )  # [G, 4]
        distance = 1 - similar[:, 0]
        span = frame - self._at(first, current) + 1
        novel = (
            ~valid.any(dim=1)
            | (distance > rule.novelty_threshold)
            | (span > rule.episode_span_frames)
        )
        if self.switch:
            novel = torch.ones_like(novel)
            self.switch = False
        full = valid.all(dim=1)
        full_novel = novel & full
        similar_previous = similar[:, 1]
        similar_following = torch.where(any_valid_later, similar[:, 2], similar[:, 3])
        into_previous = earlier.any(dim=1) & (similar_previous >= similar_following)
        into_new = full_novel & ~into_previous & ~any_valid_later
        into_old = full_novel & ~into_new
        target = torch.where(into_previous, previous, following)

        # 1. an older target takes the best tokens of both (otherwise it keeps its own)
        yes = torch.ones_like(novel)
        self._fill(target, [self._episode(target, yes), self._episode(weakest, into_old)])
        frames_target, frames_weakest = (
            self._at(self.frames, target),
            self._at(self.frames, weakest),
        )
        total = frames_target + frames_weakest
        target_summary = self._summary_at(target)
        merged = (
            target_summary * per_head(store, frames_target)[:, None]
            + weakest_summary * per_head(store, frames_weakest)[:, None]
        ) / per_head(store, total)[:, None].clamp_min(1)
        into_old_heads = per_head(store, into_old)[:, None]
        self._set_summary(target, torch.where(into_old_heads, merged, target_summary))
        self._set(self.frames, target, torch.where(into_old, total, frames_target))
        earliest = torch.minimum(self._at(first, target), self._at(first, weakest))
        latest = torch.maximum(self._at(self.last, target), self._at(self.last, weakest))
        self._set(first, target, torch.where(into_old, earliest, self._at(first, target)))
        self._set(self.last, target, torch.where(into_old, latest, self._at(self.last, target)))

        # 2. the frame's destination: the current episode (absorb), the weakest's slot (list
        # full) or the first free slot; it keeps the best of the frame's and ``other``'s tokens
        free = torch.where(valid, self.count_slots, self._slot_ids).min(dim=1).values
        destination = torch.where(novel, torch.where(full, weakest, free), current)
        destination = destination.clamp(max=self.count_slots - 1)
        other = torch.where(novel, weakest, current)
        with_other = ~novel | into_new
        frame_source = (slots.expand(store.num_groups, -1), frame_band, yes)
        self._fill(destination, [self._episode(other, with_other), frame_source])
        other_frames = self._at(self.frames, other) * with_other
        other_heads = per_head(store, other_frames)[:, None]
        self._set_summary(
            destination, (self._summary_at(other) * other_heads + summary) / (other_heads + 1)
        )
        self._set(self.frames, destination, other_frames + 1)
        self._set(first, destination, torch.where(with_other, self._at(first, other), frame))
        self._set(self.last, destination, frame.expand_as(destination))
        self._set(valid, destination, yes)
        self.current.copy_(destination)  # in place: a compiled end replays on the same buffers

        # report: the frame that opened an episode
        at = (self.opened_count % OPENED_LOG)[:, None]
        opened = torch.where(novel[:, None], frame, self.opened.gather(1, at))
        self.opened.scatter_(1, at, opened)
        self.opened_count.add_(novel.long())

    @staticmethod
    def _set(tensor: torch.Tensor, slot: torch.Tensor, value: torch.Tensor) -> None:
        """``tensor [G, E]``: every group's ``slot [G]`` <- ``value [G]`` (no host read)."""
        tensor.scatter_(1, slot[:, None], value[:, None].to(tensor.dtype))

    def _set_summary(self, slot: torch.Tensor, value: torch.Tensor) -> None:
        """Every head's summary of its group's episode ``slot [G]`` <- ``value [H, D]``."""
        index = per_head(self.store, slot)[:, None, None].expand(-1, 1, self.summary.shape[-1])
        self.summary.scatter_(1, index, value[:, None])

    def _episode(self, slot: torch.Tensor, eligible: torch.Tensor):
        """Every group's episode ``slot [G]`` as candidates: its slots ``[G, Te]``, raw
        temporal band ``[B, H, Te, Dt]``, eligibility ``[G]``."""
        offsets = slot[:, None] * self.tokens + self._arange  # [G, Te]
        band = None
        if self.store.band is not None:
            band = gather_tokens(self.store.band, per_head(self.store, self.band_base + offsets))
        return self.base + offsets, band, eligible

    def _fill(self, destination: torch.Tensor, sources) -> None:
        """Write into every group's episode ``destination [G]`` the ``Te`` most important
        eligible candidates.

        sources: ``(slots [G, K], raw band [B, H, K, Dt] or None, eligible [G])`` each.
        Everything is gathered before anything is written, so a destination may be among its
        own candidates.
        """
        store = self.store
        slots = torch.cat([source[0] for source in sources], dim=1)  # [G, K]
        eligible = torch.cat(
            [source[2][:, None].expand(-1, source[0].shape[1]) for source in sources], dim=1
        )
        scores = store.importance.gather(1, slots).masked_fill(~eligible, -torch.inf)
        best = scores.topk(self.tokens, dim=1, sorted=False).indices  # [G, Te]
        chosen = slots.gather(1, best)
        target = self.base + destination[:, None] * self.tokens + self._arange  # [G, Te]
        chosen_heads, target_heads = per_head(store, chosen), per_head(store, target)
        for buffer in (store.keys, store.values):
            scatter_tokens(buffer, target_heads, gather_tokens(buffer, chosen_heads))
        for buffer in (store.slot_token, store.importance):
            buffer.scatter_(1, target, buffer.gather(1, chosen))
        if store.band is not None:
            bands = torch.cat([source[1] for source in sources], dim=2)
            best_heads = per_head(store, best)
            band_target = target_heads - self.base + self.band_base
            scatter_tokens(store.band, band_target, gather_tokens(bands, best_heads))

    # -- prompt switches and reports (may read the device: never per chunk) ------------------

    def after_rewind(self, keep: torch.Tensor) -> None:
        """Episodes that lost any token go whole (an episode is always full); the newest valid
        one becomes the current one."""
        region = self.region
        kept = keep[:, region].view(-1, self.count_slots, self.tokens).all(dim=2)
        self.valid &= kept
        held = self.valid.repeat_interleave(self.tokens, dim=1)
        self.store.slot_token[:, region] = torch.where(held, self.store.slot_token[:, region], -1)
        newest = torch.where(self.valid, self.first, -1).argmax(dim=1)
        self.current.copy_(torch.where(self._at(self.valid, self.current), self.current, newest))
        self.known_full = False

    def episodes(self, group: int) -> list[Episode]:
        """The valid episodes of ``group``, oldest first (reads the device)."""
        tokens = self.store.slot_token[group, self.region].view(self.count_slots, self.tokens)
        valid, first = self.valid[group].tolist(), self.first[group].tolist()
        last, frames = self.last[group].tolist(), self.frames[group].tolist()
        order = sorted((first[slot], slot) for slot in range(self.count_slots) if valid[slot])
        return [
            Episode(tokens[slot].long().sort().values.cpu(), start, last[slot], int(frames[slot]))
            for start, slot in order
        ]

    def opened_at(self, group: int) -> list[int]:
        """Frames that opened an episode in ``group``, oldest first (the last
        :data:`OPENED_LOG`)."""
        count = int(self.opened_count[group])
        log = self.opened[group].tolist()
        if count <= OPENED_LOG:
            return log[:count]
        at = count % OPENED_LOG
        return log[at:] + log[:at]
