"""The hierarchical memory of memory heads: sink, episodic memory, working memory.

Our design (DESIGN.md, "Head Forcing, as we design it"; the paper's exact rule is not public):

1. **sink**: the first ``sink_frames`` frames, whole, for ever;
2. **episodic memory**: at most ``max_episodes`` episodes, each summarising a stretch of past
   frames by the ``episode_tokens`` tokens that sampled queries of committed chunks attended to
   most (importance decayed by ``importance_decay`` per chunk, as in participative compression).
   A frame leaving working memory opens a new episode when its content is new (cosine distance
   of its mean key from the episode's > ``novelty_threshold``), when the current episode already
   spans ``episode_span_frames`` frames, or after a prompt switch (:meth:`open_episode`);
   otherwise the current episode absorbs it, re-selecting its top tokens over the union. When
   the list overflows, the least-attended episode merges into its more similar neighbour;
3. **working memory**: the last ``working_frames`` frames before the chunk, whole.

Relative positions put the sink on its own slots, each episode on one slot, and working frames
on consecutive slots, the chunk after: ``sink + max_episodes + working + chunk`` positions at most.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from headforcing.cache.policy import Layout, Retention, relative_layout


@dataclass
class Episode:
    """Kept tokens (absolute ids, ascending) of frames ``first_frame..last_frame``."""

    token_ids: torch.Tensor
    first_frame: int
    last_frame: int
    summary: torch.Tensor  # [Hg * D] mean key of the absorbed frames, float32
    frames: int = 1


@dataclass
class EpisodicMemory(Retention):
    """The retention rule of one memory-head group (state: its episodes).

    Parameters
    ----------
    sink_frames, working_frames:
        Whole frames kept at the start and at the end of the history.
    max_episodes:
        Episodes kept at most (0: no episodic memory, only the sink and the working memory).
    episode_frames:
        Size of one episode in frames' worth of tokens (1.0 = as many tokens as one frame).
    novelty_threshold:
        Cosine distance of mean keys above which an evicted frame opens a new episode.
    episode_span_frames:
        Frames one episode may absorb before a new one opens.
    importance_decay:
        Per-chunk decay of the accumulated attention each stored token received.
    positions:
        ``relative`` (compact slots) or ``absolute`` (every token at its own frame).
    """

    sink_frames: int = 3
    working_frames: int = 6
    max_episodes: int = 6
    episode_frames: float = 1.0
    novelty_threshold: float = 0.1
    episode_span_frames: int = 9
    importance_decay: float = 0.9
    positions: str = "relative"
    episodes: list[Episode] = field(default_factory=list, repr=False)
    opened_at: list[int] = field(default_factory=list, repr=False)  # frames that opened one
    _switch: bool = field(default=False, repr=False)

    wants_importance = True

    def open_episode(self) -> None:
        """The next evicted frame opens a new episode (a prompt switch)."""
        self._switch = True

    def on_prompt_switch(self) -> None:
        self.open_episode()

    def attention_span(self, chunk_frames: int) -> int:
        # the frames kept whole; episodes summarise older ones that a re-cache cannot re-run
        return self.sink_frames + self.working_frames + chunk_frames

    def memory_tokens(self, group) -> torch.Tensor:
        return torch.isin(group.token_ids, self._episode_token_ids())

    def forget(self, group) -> None:
        """Episodes keep only the tokens the group still stores; empty ones go."""
        for episode in self.episodes:
            episode.token_ids = episode.token_ids[torch.isin(episode.token_ids, group.token_ids)]
        self.episodes = [episode for episode in self.episodes if episode.token_ids.numel()]

    def episode_tokens(self, tokens_per_frame: int) -> int:
        return max(1, round(self.episode_frames * tokens_per_frame))

    def _episode_token_ids(self) -> torch.Tensor:
        if not self.episodes:
            return torch.empty(0, dtype=torch.long)
        return torch.cat([episode.token_ids for episode in self.episodes])

    def retain(self, group, frames_done: int, chunk_frames: int) -> torch.Tensor:
        frame_ids, token_ids = group.frame_ids, group.token_ids
        working_start = frames_done - self.working_frames
        is_sink = frame_ids < self.sink_frames
        in_episode = torch.isin(token_ids, self._episode_token_ids())
        evicted = ~is_sink & ~in_episode & (frame_ids < working_start)
        for frame in frame_ids[evicted].unique().tolist():
            self._absorb(group, (evicted & (frame_ids == frame)).nonzero().squeeze(1), frame)
        in_episode = torch.isin(token_ids, self._episode_token_ids())
        return (is_sink | in_episode | (frame_ids >= working_start)).nonzero().squeeze(1)

    def _top(self, group, token_ids: torch.Tensor, budget: int) -> torch.Tensor:
        """The ``budget`` most important of ``token_ids`` (all stored in ``group``), ascending."""
        if token_ids.numel() <= budget:
            return token_ids.sort().values
        where = torch.searchsorted(group.token_ids, token_ids)
        scores = group.importance[where.to(group.importance.device)].cpu()
        best = torch.topk(scores, budget, sorted=False).indices
        return token_ids[best].sort().values

    def _absorb(self, group, index: torch.Tensor, frame: int) -> None:
        """An evicted frame's tokens (``index`` into the group) join the episodic memory (with
        ``max_episodes == 0`` there is none: the frame is dropped)."""
        if self.max_episodes == 0:
            return
        budget = self.episode_tokens(group.tokens_per_frame)
        keys = group.keys[:, :, index.to(group.keys.device)].float()
        summary = keys.mean(dim=(0, 2)).flatten()  # [Hg * D]
        token_ids = group.token_ids[index]
        current = self.episodes[-1] if self.episodes else None
        novel = current is None or self._switch
        if not novel:
            distance = 1 - torch.cosine_similarity(summary, current.summary, dim=0).item()
            span = frame - current.first_frame + 1
            novel = distance > self.novelty_threshold or span > self.episode_span_frames
        if novel:
            self.episodes.append(
                Episode(self._top(group, token_ids, budget), frame, frame, summary)
            )
            self.opened_at.append(frame)
            self._switch = False
        else:
            union = torch.cat([current.token_ids, token_ids])
            current.token_ids = self._top(group, union, budget)
            current.summary = (current.summary * current.frames + summary) / (current.frames + 1)
            current.frames += 1
            current.last_frame = frame
        if len(self.episodes) > self.max_episodes:
            self._merge_least_attended(group, budget)

    def _merge_least_attended(self, group, budget: int) -> None:
        def attention(episode: Episode) -> float:
            where = torch.searchsorted(group.token_ids, episode.token_ids)
            return group.importance[where.to(group.importance.device)].mean().item()

        # the newest episode is still growing: never merge it away
        candidates = range(len(self.episodes) - 1)
        weakest = min(candidates, key=lambda i: attention(self.episodes[i]))
        episode = self.episodes[weakest]
        neighbours = [i for i in (weakest - 1, weakest + 1) if 0 <= i < len(self.episodes)]
        target = max(
            neighbours,
            key=lambda i: torch.cosine_similarity(
                episode.summary, self.episodes[i].summary, dim=0
            ).item(),
        )
        other = self.episodes[target]
        frames = episode.frames + other.frames
        other.summary = (episode.summary * episode.frames + other.summary * other.frames) / frames
        other.token_ids = self._top(group, torch.cat([episode.token_ids, other.token_ids]), budget)
        other.first_frame = min(other.first_frame, episode.first_frame)
        other.last_frame = max(other.last_frame, episode.last_frame)
        other.frames = frames
        del self.episodes[weakest]

    def layout(self, group, chunk_first: int, chunk_frames: int) -> Layout:
        if self.positions == "absolute":
            return super().layout(group, chunk_first, chunk_frames)
        # one slot per episode: its tokens share the slot key of its first frame
        slots = group.frame_ids.clone()
        for episode in self.episodes:
            slots[torch.isin(group.token_ids, episode.token_ids)] = episode.first_frame
        return relative_layout(slots, chunk_frames)

    def extent(self, chunk_frames: int) -> int:
        """Temporal slots this rule can use, the chunk included (relative positions)."""
        return self.sink_frames + self.max_episodes + self.working_frames + chunk_frames
