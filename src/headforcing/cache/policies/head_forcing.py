"""``head_forcing``: a KV cache per attention-head type (Head Forcing, arXiv 2605.14487).

Heads play different roles: **local** heads refine detail from the newest frames, **anchor**
heads hold structure on the first frames (the sink), **memory** heads gather long-range
context. Each type gets its own cache, one attention call per type (group) and layer:

- local: the last ``local_frames`` frames;
- anchor: the ``sink_frames`` first frames + the last ``anchor_recent_frames``;
- memory: the hierarchical memory of :class:`~headforcing.cache.memory.EpisodicMemory`
  (sink, episodic memory, working memory).

Head-wise RoPE re-encoding: with ``positions="relative"`` (the default) every group lays its own
kept tokens out on compact temporal slots and puts the chunk right after, so no head ever sees a
position at or past the trained range (21 latent frames for Wan2.1), however long the video.
The paper's memory sizes and update rule are not public: these are ours, see docs/head-forcing.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from headforcing.cache.memory import EpisodicMemory
from headforcing.cache.policy import HeadMapPolicy, Retention, check_position_mode
from headforcing.heads.headmap import HEAD_TYPES, HeadMap


@dataclass
class HeadForcingPolicy(HeadMapPolicy):
    """Per-head-type caches driven by a head map.

    Parameters
    ----------
    head_map:
        Labels of every head. ``None`` until one is set (:meth:`with_head_map`): a pipeline run
        without a map profiles one in a short calibration rollout before the video starts
        (:meth:`headforcing.pipeline.Pipeline.stream`), so every head type keeps what it should
        from the first chunk on.
    local_frames:
        Frames local heads keep before the chunk.
    sink_frames:
        First frames kept by anchor and memory heads.
    anchor_recent_frames:
        Recent frames anchor heads keep besides the sink.
    working_frames:
        Recent frames memory heads keep whole (working memory).
    max_episodes, episode_frames, novelty_threshold, episode_span_frames, importance_decay:
        Memory heads' episodic memory, see :class:`~headforcing.cache.memory.EpisodicMemory`
        (``max_episodes`` 0: none, sink and working memory only).
    positions:
        ``relative`` (head-wise re-encoding) or ``absolute`` (every token at its own frame).
    """

    name: ClassVar[str] = "head_forcing"
    groups: ClassVar[tuple[str, ...]] = HEAD_TYPES
    head_map: HeadMap | None = field(default=None, repr=False)
    local_frames: int = 6
    sink_frames: int = 3
    anchor_recent_frames: int = 6
    working_frames: int = 6
    max_episodes: int = 6
    episode_frames: float = 1.0
    novelty_threshold: float = 0.1
    episode_span_frames: int = 9
    importance_decay: float = 0.9
    positions: str = "relative"

    def __post_init__(self) -> None:
        check_position_mode(self.positions)
        for name in (
            "local_frames",
            "sink_frames",
            "anchor_recent_frames",
            "working_frames",
            "max_episodes",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.episode_span_frames < 1:
            raise ValueError(f"episode_span_frames must be >= 1, got {self.episode_span_frames}")
        if not 0 < self.episode_frames <= 1:
            raise ValueError(f"episode_frames must lie in (0, 1], got {self.episode_frames}")
        if not 0 <= self.novelty_threshold <= 2:
            raise ValueError(f"novelty_threshold must lie in [0, 2], got {self.novelty_threshold}")
        if not 0 < self.importance_decay <= 1:
            raise ValueError(f"importance_decay must lie in (0, 1], got {self.importance_decay}")

    def extents(self, chunk_frames: int) -> dict[str, int]:
        """Temporal slots each head type spans with relative positions, the chunk included."""
        return {label: self.rule_for(label).extent(chunk_frames) for label in HEAD_TYPES}

    def check(self, chunk_frames: int, trained_frames: int) -> None:
        if self.positions != "relative":
            return
        for label, extent in self.extents(chunk_frames).items():
            if extent > trained_frames:
                raise ValueError(
                    f"{label} heads would span {extent} temporal positions (chunk of "
                    f"{chunk_frames} included) but the model was trained on {trained_frames}; "
                    "lower that type's budgets or use --positions absolute"
                )

    def _memory_rule(self) -> EpisodicMemory:
        return EpisodicMemory(
            max_episodes=self.max_episodes,
            episode_frames=self.episode_frames,
            novelty_threshold=self.novelty_threshold,
            episode_span_frames=self.episode_span_frames,
            importance_decay=self.importance_decay,
        )

    def rule_for(self, label: str) -> Retention:
        """The retention of ``label`` heads."""
        if label == "local":
            return Retention(0, self.local_frames, positions=self.positions)
        if label == "anchor":
            return Retention(self.sink_frames, self.anchor_recent_frames, positions=self.positions)
        memory = self._memory_rule() if self.max_episodes else None
        return Retention(self.sink_frames, self.working_frames, memory, self.positions)

    def group_rule(self, group: str, chunk_frames: int) -> Retention:
        return self.rule_for(group)

    def head_labels(self) -> list[list[str]]:
        return [list(row) for row in self.head_map.labels]
