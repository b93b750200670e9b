"""Prompt switches: what happens to the KV cache when the prompt changes between two chunks.

The cross-attention context always changes (the new prompt's text K/V). The self-attention K/V
in the cache were computed under the old prompt; four ways to treat them (``--switch``):

``cut``
    Keep every stored K/V as it is. Free, but the newest frames still carry the old prompt
    and pull the next chunks towards it.
``recache`` (LongLive's KV re-cache, arXiv 2509.22622)
    Re-run the last ``R = min(span, frames so far)`` clean latent frames at ``t = 0`` with the
    new prompt, the sink kept. ``span`` is the largest attention span of any group (a window
    rule's ``window_frames``, LongLive's ``local_attn_size``; memory heads: sink + working
    memory + chunk; ``full``: everything). Every group drops what it holds from the first
    re-run frame on and its long-term memory (episodes), keeps the rest (the sink), and the
    re-run frames are committed again chunk by chunk: the rules select from them as from any
    chunk. Memory heads therefore lose their episodes (they are rebuilt from the re-run only).
``flush`` (Infinity-RoPE's KV flush, the default of ``infinity_rope``)
    Keep the sink and the last :data:`FLUSH_FRAMES` (2) frames, drop every other token (the
    long-term memory too), re-run nothing: the new prompt drives the next chunk through the
    cross-attention alone.
``head-aware`` (ours, for ``head_forcing``; the default of every other policy)
    As ``recache``, but memory heads keep their episodes: the re-run starts after the newest
    token any group keeps as memory, so only what lies after it is rebuilt. Per head type:
    local heads rebuild everything they hold (they carry the newest content); anchor heads
    keep the sink and rebuild their recent frames; memory heads keep sink and episodes,
    rebuild working memory, and open a new episode, so post-switch content never merges into
    a pre-switch episode. Why: the new prompt must drive the newest frames at once, but
    identity and layout of the scene live in the long-range memory, which a re-cache would
    wipe (it can only re-run what fits the window). It also re-runs fewer frames (working
    memory rather than the widest window). For policies without memory heads it is
    ``recache``.

In every mode memory heads open a new episode at the switch (DESIGN.md: a prompt switch starts
an episode).

The mechanism is one for all policies (:meth:`KVCache.rewind` + commit passes): every group
keeps exactly the tokens before the first re-run frame ``R0`` that the mode keeps, and every
group stores every re-run chunk, so no group ever holds a frame twice and every re-run chunk
attends causally, as it did when it was first made, on the original chunk grid. The re-run needs
the clean latents of frames ``R0 ..``: :class:`CleanHistory` keeps the last ``span`` frames
(``full`` keeps all, as it keeps all K/V anyway), never more.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from headforcing.cache.kv import HeadGroup, KVCache
from headforcing.model.transformer import TextContext, WanModel
from headforcing.sampling import LatentChunk

SWITCH_MODES = ("cut", "recache", "head-aware", "flush")
# frames besides the sink that a flush keeps (Infinity-RoPE)
FLUSH_FRAMES = 2


def check_switch_mode(mode: str) -> None:
    if mode not in SWITCH_MODES:
        raise ValueError(f"unknown switch mode {mode!r}; valid modes: {', '.join(SWITCH_MODES)}")


def recache_span(cache: KVCache) -> int | None:
    """The largest attention span (frames, chunk included) of any group; ``None``: unbounded."""
    spans = [group.rule.attention_span(cache.chunk_frames) for group in cache.groups()]
    return None if None in spans else max(spans)


class CleanHistory:
    """The clean latents of the last frames, for a re-cache to re-run.

    ``limit``: frames to keep (``None``: all, for ``full``), given on every append.
    """

    def __init__(self) -> None:
        self.first_frame = 0
        self.latents: torch.Tensor | None = None  # [B, C, F, h, w]

    @property
    def end_frame(self) -> int:
        return self.first_frame + (0 if self.latents is None else self.latents.shape[2])

    def append(self, chunk: LatentChunk, limit: int | None) -> None:
        if self.latents is None or chunk.first_frame != self.end_frame:
            self.first_frame, self.latents = chunk.first_frame, chunk.latents
        else:
            self.latents = torch.cat([self.latents, chunk.latents], dim=2)
        if limit is not None and self.latents.shape[2] > limit:
            drop = self.latents.shape[2] - limit
            self.first_frame += drop
            self.latents = self.latents[:, :, drop:].clone()

    def frames(self, first: int, end: int) -> torch.Tensor:
        """Latents ``[B, C, end - first, h, w]`` of frames ``first .. end - 1``."""
        if self.latents is None or first < self.first_frame or end > self.end_frame:
            raise RuntimeError(
                f"frames {first}..{end - 1} are not in the history "
                f"({self.first_frame}..{self.end_frame - 1})"
            )
        return self.latents[:, :, first - self.first_frame : end - self.first_frame]


@dataclass(frozen=True)
class SwitchPlan:
    """A re-cache at ``frame``: frames ``rebuild_from .. frame - 1`` are committed again."""

    frame: int
    rebuild_from: int
    mode: str

    @property
    def rebuilt_frames(self) -> int:
        return self.frame - self.rebuild_from


def _protected(group: HeadGroup, mode: str) -> torch.Tensor:
    """``[capacity]`` bool: slots the mode keeps whatever the re-run range (sink; head-aware:
    memory)."""
    frames = group.slot_frames()
    keep = (frames >= 0) & (frames < group.rule.sink_frames)
    memory = group.memory_slots()
    if mode == "head-aware" and memory is not None:
        keep |= memory
    return keep


def plan_switch(cache: KVCache, mode: str) -> SwitchPlan:
    """Where the re-run of a switch at ``cache.frames_done`` starts (see the module docstring)."""
    check_switch_mode(mode)
    frame = cache.frames_done
    if mode in ("cut", "flush") or frame == 0:
        return SwitchPlan(frame, frame, mode)
    span = recache_span(cache)
    start = frame - (frame if span is None else min(span, frame))
    for group in cache.groups():
        kept = group.slot_frames()[_protected(group, mode)]
        if kept.numel():
            start = max(start, int(kept.max()) + 1)
    return SwitchPlan(frame, min(start, frame), mode)


def _keep_mask(group: HeadGroup, plan: SwitchPlan) -> torch.Tensor:
    frames = group.slot_frames()
    before = (frames >= 0) & (frames < plan.rebuild_from)
    memory = group.memory_slots()
    if plan.mode == "recache" and memory is not None:
        before &= ~memory  # LongLive resets all but the sink: episodes go
    return before


def _flush_mask(group: HeadGroup, frame: int) -> torch.Tensor:
    """``[capacity]`` bool: the sink and the last :data:`FLUSH_FRAMES` frames before ``frame``."""
    frames = group.slot_frames()
    held = frames >= 0
    return held & ((frames < group.rule.sink_frames) | (frames >= frame - FLUSH_FRAMES))


class PromptSwitcher:
    """Applies prompt switches to one cache between chunks, and keeps what they need.

    Parameters
    ----------
    model:
        The transformer (its commit passes rebuild the cache).
    cache:
        The stream's cache.
    mode:
        One of :data:`SWITCH_MODES`.
    keep_history:
        Keep the clean latents a re-cache needs (off when no switch can come).
    """

    def __init__(
        self, model: WanModel, cache: KVCache, mode: str = "head-aware", keep_history: bool = True
    ) -> None:
        check_switch_mode(mode)
        self.model, self.cache, self.mode = model, cache, mode
        self.history = CleanHistory() if keep_history and mode not in ("cut", "flush") else None
        self.plans: list[SwitchPlan] = []

    def remember(self, chunk: LatentChunk) -> None:
        """A finished chunk: keep its clean latents while a re-cache may need them."""
        if self.history is not None:
            self.history.append(chunk, recache_span(self.cache))

    def apply(self, context: TextContext) -> SwitchPlan:
        """The prompt changes before the next chunk: re-run what the mode rebuilds.

        context: the new prompt's cross-attention K/V (the caller uses it from now on).
        """
        cache = self.cache
        for group in cache.groups():
            group.on_prompt_switch()
        plan = plan_switch(cache, self.mode)
        self.plans.append(plan)
        if self.mode == "flush":
            cache.rewind(plan.frame, lambda group: _flush_mask(group, plan.frame))
        if plan.rebuilt_frames == 0:
            return plan
        if self.history is None:
            raise RuntimeError("a re-cache needs the clean history (keep_history=False)")
        latents = self.history.frames(plan.rebuild_from, plan.frame)
        cache.rewind(plan.rebuild_from, lambda group: _keep_mask(group, plan))
        # commit passes only, on the original chunk grid: [B, C, F, h, w] at t = 0
        while cache.frames_done < plan.frame:
            first = cache.frames_done
            count = min(cache.chunk_frames - first % cache.chunk_frames, plan.frame - first)
            cache.begin_chunk(count)
            clean = latents[:, :, first - plan.rebuild_from :][:, :, :count]
            timesteps = torch.zeros(clean.shape[0], count, device=clean.device)
            self.model(clean, timesteps, context, cache.attention(commit=True))
            cache.end_chunk()
        return plan
