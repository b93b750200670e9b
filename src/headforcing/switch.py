"""Prompt switches: what happens to the KV cache when the prompt changes between two chunks.

The cross-attention context always changes (the new prompt's text K/V). The self-attention K/V
in the cache were computed under the old prompt; the ways to treat them (``--switch``), with
``N`` the frames made so far and ``span`` the largest attention span of any group (frames, chunk
and sink included: a window rule's ``window_frames``, LongLive's ``local_attn_size``; memory
heads: sink + working memory + chunk; ``full``: everything):

``cut``
    Keep every stored K/V as it is. Free, but the newest frames still carry the old prompt
    and pull the next chunks towards it.
``recache`` (LongLive's KV re-cache with ``global_sink: true``, arXiv 2509.22622; LongLive 1.x
``pipeline/interactive_causal_inference.py``, REFERENCE.md section 3)
    Re-run the last ``R = min(span, N)`` clean latent frames at ``t = 0`` with the new prompt
    **in one pass**, with no mask among them: every re-run frame attends to every other, both
    ways. The sink slots are protected: a re-run that starts after frame 0 does not store its
    first frames, so a group of span ``W`` and sink ``S`` then holds its old sink plus the new
    K/V of frames ``N - (W - S) .. N - 1`` (LongLive's 12 and 3: frames N-9 .. N-1), which is
    also what the re-run's queries attend to. The cache pointers stay where they were: every
    frame keeps its slot. Memory heads' episodes are dropped (LongLive keeps nothing else).
``recache-new-sink`` (LongLive's re-cache with ``global_sink: false``)
    The same pass, but the K/V are reset first and the sink is overwritten by the first ``S``
    re-run frames (``N - R .. N - R + S - 1``, at their own positions): from then on the sink
    holds frames made under the new prompt.
``recache-causal`` (ours)
    The same frames re-run chunk by chunk on the original chunk grid, causally, from
    ``R0 = max(N - R, end of the sink)``: every re-run chunk attends to the kept sink and the
    re-run chunks before it, as when it was first made, and every rule selects from the re-run
    chunks as from new ones. Why keep it beside LongLive's: Self-Forcing, Causal Forcing and
    CausVid were trained on block-causal attention only (a chunk never sees a later one), and
    LongLive alone was tuned with its one-pass re-cache; this variant never shows a model an
    attention pattern it was not trained on.
``flush`` (Infinity-RoPE's KV flush, the default of ``infinity_rope``)
    Keep the sink and the last :data:`FLUSH_FRAMES` (2) frames, drop every other token (the
    long-term memory too), re-run nothing: the new prompt drives the next chunk through the
    cross-attention alone.
``head-aware`` (ours, for ``head_forcing``; the default of every other policy)
    As ``recache-causal``, but memory heads keep their episodes: the re-run starts after the
    newest token any group keeps as memory, so only what lies after it is rebuilt. Per head
    type: local heads rebuild everything they hold (they carry the newest content); anchor
    heads keep the sink and rebuild their recent frames; memory heads keep sink and episodes,
    rebuild working memory, and open a new episode, so post-switch content never merges into
    a pre-switch episode. Why: the new prompt must drive the newest frames at once, but
    identity and layout of the scene live in the long-range memory, which a re-cache would
    wipe (it can only re-run what fits the window). It also re-runs fewer frames (working
    memory rather than the widest window). For policies without memory heads it is
    ``recache-causal``.

In every mode memory heads open a new episode at the switch (DESIGN.md: a prompt switch starts
an episode).

Two mechanisms, both on the cache's public lifecycle. The causal modes rewind the cache
(:meth:`KVCache.rewind`: every group keeps exactly the tokens before ``R0`` that the mode keeps)
and commit the re-run frames again, chunk by chunk. The one-pass modes run the model once over
the ``R`` frames with their own attention backend (:class:`OnePassRecache`: per group, the
queries attend to its sink and to the new K/V of the frames it stores), then write those K/V
into the cache through the same rewind and chunk lifecycle, from the K/V that pass computed (the
cache's attention of those writes is discarded). A re-run needs the clean latents of the last
``span`` frames: :class:`CleanHistory` keeps them (``full`` keeps all, as it keeps all K/V
anyway), never more.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from headforcing.cache.kv import HeadGroup, KVCache
from headforcing.model.rope import cos_sin, rotate
from headforcing.model.transformer import TextContext, WanModel
from headforcing.sampling import LatentChunk

SWITCH_MODES = ("cut", "recache", "recache-new-sink", "recache-causal", "head-aware", "flush")
# LongLive's re-cache: the re-run frames in one pass, no mask among them
ONE_PASS_MODES = ("recache", "recache-new-sink")
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
    """A switch at ``frame``: frames ``rebuild_from .. frame - 1`` re-run with the new prompt.

    ``stored_from``: the first frame whose new K/V the cache stores (the one-pass modes store
    no frame before the end of a protected sink; the causal modes store every re-run frame).
    """

    frame: int
    rebuild_from: int
    mode: str
    stored_from: int

    @property
    def rebuilt_frames(self) -> int:
        return self.frame - self.rebuild_from


def _sink_slots(group: HeadGroup) -> torch.Tensor:
    """``[capacity]`` bool: the group's sink slots that hold a token (by slot, not by frame: a
    ``recache-new-sink`` switch puts later frames there)."""
    slots = torch.zeros(group.capacity, dtype=torch.bool, device=group.slot_token.device)
    slots[: group.sink_frames * group.tokens_per_frame] = True
    return slots & (group.slot_token >= 0)


def _protected(group: HeadGroup, mode: str) -> torch.Tensor:
    """``[capacity]`` bool: slots the mode keeps whatever the re-run range (sink; head-aware:
    memory)."""
    keep = _sink_slots(group)
    memory = group.memory_slots()
    if mode == "head-aware" and memory is not None:
        keep |= memory
    return keep


def _one_pass_floor(cache: KVCache, first: int) -> int:
    """No group stores a frame before this one in a one-pass re-cache from ``first``: the end
    of every protected sink (nothing is protected when the re-run starts at frame 0)."""
    if first == 0:
        return 0
    return max(first, *(group.sink_frames for group in cache.groups()))


def first_stored(group: HeadGroup, frame: int, floor: int) -> int:
    """One-pass re-cache at ``frame``: the first frame after the sink whose new K/V ``group``
    stores and attends to, ``frame - (W - S)`` for a group of span ``W`` and sink ``S``
    (LongLive's local window), never before ``floor`` (:func:`_one_pass_floor`)."""
    start = max(floor, group.sink_frames)
    span = group.rule.attention_span(group.chunk_frames)
    if span is not None:
        start = max(start, frame - (span - group.sink_frames))
    return min(start, frame)


def plan_switch(cache: KVCache, mode: str) -> SwitchPlan:
    """Where the re-run of a switch at ``cache.frames_done`` starts (see the module docstring)."""
    check_switch_mode(mode)
    frame = cache.frames_done
    if mode in ("cut", "flush") or frame == 0:
        return SwitchPlan(frame, frame, mode, frame)
    span = recache_span(cache)
    start = frame - (frame if span is None else min(span, frame))
    if mode in ONE_PASS_MODES:
        if start == 0:  # the re-run covers the sink: every frame is stored again
            return SwitchPlan(frame, 0, mode, 0)
        floor = _one_pass_floor(cache, start)
        stored = min(first_stored(group, frame, floor) for group in cache.groups())
        return SwitchPlan(frame, start, mode, stored)
    for group in cache.groups():
        kept = group.slot_frames()[_protected(group, mode)]
        if kept.numel():
            start = max(start, int(kept.max()) + 1)
    start = min(start, frame)
    return SwitchPlan(frame, start, mode, start)


def _keep_mask(group: HeadGroup, plan: SwitchPlan) -> torch.Tensor:
    frames = group.slot_frames()
    before = (frames >= 0) & (frames < plan.rebuild_from)
    memory = group.memory_slots()
    if plan.mode == "recache-causal" and memory is not None:
        before &= ~memory  # as LongLive, all but the sink is rebuilt: episodes go
    return before


def _flush_mask(group: HeadGroup, frame: int) -> torch.Tensor:
    """``[capacity]`` bool: the sink and the last :data:`FLUSH_FRAMES` frames before ``frame``."""
    frames = group.slot_frames()
    return _sink_slots(group) | ((frames >= 0) & (frames >= frame - FLUSH_FRAMES))


class OnePassRecache:
    """The self-attention backend of LongLive's one-pass re-run (``recache``,
    ``recache-new-sink``): frames ``plan.rebuild_from .. plan.frame - 1`` at ``t = 0``, rotated
    at their own frames, every query of a group attending with no mask to its sink and to the
    new K/V of the frames the group stores (:func:`first_stored`). It keeps, per layer, the
    unrotated q/k/v of the frames from ``plan.stored_from`` on (for the cache to store) and,
    with ``new_sink``, every group's new sink.

    With relative positions the sink sits right before the first stored frame, as every
    chunk's layout puts it; with absolute positions the old sink keeps its own frames.
    """

    commit = True  # a clean pass at t = 0

    def __init__(
        self, cache: KVCache, plan: SwitchPlan, new_sink: bool, keep_queries: bool
    ) -> None:
        self.cache, self.plan = cache, plan
        self.first_frame = plan.rebuild_from
        self.new_sink, self.keep_queries = new_sink, keep_queries
        self.floor = _one_pass_floor(cache, plan.rebuild_from)
        frames = torch.arange(plan.rebuild_from, plan.frame, device=cache.device)
        self.cos, self.sin = cos_sin(cache.rope.token_angles(frames, cache.spatial_angles))
        # per layer: q (or None), k, v [B, L, H, D] unrotated, frames plan.stored_from ..
        self.captured: list[tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]] = []
        # per group (id): the new sink's keys at their own frames, values, raw temporal band
        self.sinks: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def attend(self, layer: int, q, k, v) -> torch.Tensor:
        """q, k, v: ``[B, R*T, H, D]`` unrotated, frame-major -> ``[B, R*T, H, D]``."""
        plan, tokens = self.plan, self.cache.tokens_per_frame
        skip = (plan.stored_from - plan.rebuild_from) * tokens
        queries = q[:, skip:] if self.keep_queries else None
        self.captured.append((queries, k[:, skip:], v[:, skip:]))
        raw, v = k.transpose(1, 2), v.transpose(1, 2)  # [B, H, L, D]
        q, k = rotate(q.transpose(1, 2), self.cos, self.sin), rotate(raw, self.cos, self.sin)
        out = torch.empty_like(q)
        for group in self.cache.layers[layer]:
            heads = group.head_index
            keys, values = self._context(group, raw[:, heads], k[:, heads], v[:, heads])
            out[:, heads] = F.scaled_dot_product_attention(q[:, heads], keys, values)
        return out.transpose(1, 2)

    def _context(self, group: HeadGroup, raw, keys, values):
        """The keys and values ``[B, Hg, N, D]`` the group's re-run queries attend to."""
        plan, tokens = self.plan, self.cache.tokens_per_frame
        start = first_stored(group, plan.frame, self.floor)
        offset = (start - plan.rebuild_from) * tokens
        window_keys, window_values = keys[:, :, offset:], values[:, :, offset:]
        sink = group.sink_frames * tokens
        if not sink:
            return window_keys, window_values
        if plan.rebuild_from == 0 or self.new_sink:  # the first re-run frames are the sink
            sink_keys, sink_values = keys[:, :, :sink], values[:, :, :sink]
            band = raw[:, :, :sink, : group.band_dim]
            if plan.rebuild_from > 0:  # written over the old sink once the pass is stored
                self.sinks[id(group)] = (sink_keys, sink_values, band)
        else:  # the protected old sink
            sink_keys, sink_values = group.keys[:, :, :sink], group.values[:, :, :sink]
            band = group.band[:, :, :sink] if group.band is not None else None
        if group.rule.positions == "relative":
            sink_keys = self._placed(group, band, sink_keys, start - group.sink_frames)
        keys = torch.cat([sink_keys, window_keys], dim=2)
        return keys, torch.cat([sink_values, window_values], dim=2)

    def _placed(self, group: HeadGroup, band, keys, origin: int) -> torch.Tensor:
        """Sink keys with their temporal band (raw: position 0) rotated to ``origin + p``."""
        cache = self.cache
        positions = torch.arange(group.sink_frames, device=cache.device) + origin
        angles = cache.rope.temporal_angles(positions).repeat_interleave(cache.tokens_per_frame, 0)
        cos, sin = cos_sin(angles)
        return torch.cat([rotate(band, cos, sin), keys[..., group.band_dim :]], dim=-1)


class PromptSwitcher:
    """Applies prompt switches to one cache between chunks, and keeps what they need.

    Parameters
    ----------
    model:
        The transformer (its passes rebuild the cache), or a head-parallel runner with the same
        call.
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
        if self.mode in ONE_PASS_MODES:
            self._one_pass(plan, latents, context)
        else:
            cache.rewind(plan.rebuild_from, lambda group: _keep_mask(group, plan))
            self._commit_chunks(plan.rebuild_from, plan.frame, latents, context)
        return plan

    def _commit_chunks(self, first: int, end: int, latents: torch.Tensor, context) -> None:
        """Commit passes of frames ``first .. end - 1`` (latents ``[B, C, F, h, w]``) at t = 0,
        chunk by chunk on the original chunk grid."""
        cache = self.cache
        while cache.frames_done < end:
            start = cache.frames_done
            count = min(cache.chunk_frames - start % cache.chunk_frames, end - start)
            cache.begin_chunk(count)
            clean = latents[:, :, start - first :][:, :, :count]
            timesteps = torch.zeros(clean.shape[0], count, device=clean.device)
            self.model(clean, timesteps, context, cache.attention(commit=True))
            cache.end_chunk()

    def _one_pass(self, plan: SwitchPlan, latents: torch.Tensor, context) -> None:
        """LongLive's re-cache: one pass over the re-run frames, then its K/V into the cache."""
        cache = self.cache
        keep_queries = any(group.importance is not None for group in cache.groups())
        new_sink = plan.mode == "recache-new-sink"
        backend = OnePassRecache(cache, plan, new_sink, keep_queries)
        timesteps = torch.zeros(latents.shape[0], latents.shape[2], device=latents.device)
        self.model(latents, timesteps, context, backend)

        # store the pass's K/V of frames stored_from .. frame - 1 in their own slots (the
        # pointers stay where they were); a protected sink stays, the rest is reset
        protected = plan.rebuild_from > 0
        cache.rewind(
            plan.stored_from,
            lambda group: _sink_slots(group) if protected else group.slot_token < -1,
        )
        tokens = cache.tokens_per_frame
        while cache.frames_done < plan.frame:
            start = cache.frames_done
            count = min(cache.chunk_frames - start % cache.chunk_frames, plan.frame - start)
            cache.begin_chunk(count)
            writer = cache.attention(commit=True)
            span = slice(
                (start - plan.stored_from) * tokens, (start - plan.stored_from + count) * tokens
            )
            for layer, (q, k, v) in enumerate(backend.captured):
                k, v = k[:, span], v[:, span]
                writer.attend(layer, k if q is None else q[:, span], k, v)  # output unused
            cache.end_chunk()
        if new_sink and protected:
            for group in cache.groups():
                if id(group) in backend.sinks:
                    _replace_sink(group, plan.rebuild_from, *backend.sinks[id(group)])


def _replace_sink(group: HeadGroup, first: int, keys, values, band) -> None:
    """``recache-new-sink``: the sink slots take frames ``first ..`` (keys at their own frames,
    values, raw temporal band), written in place; the token ids say which frames they hold."""
    tokens = group.tokens_per_frame
    sink = slice(0, group.sink_frames * tokens)
    group.keys[:, :, sink] = keys
    group.values[:, :, sink] = values
    ids = torch.arange(first * tokens, first * tokens + sink.stop, device=group.slot_token.device)
    group.slot_token[sink] = ids.to(group.slot_token.dtype)
    if group.band is not None:
        group.band[:, :, sink] = band
