"""Prompt switches: the context changes exactly at the chunk asked for, and a KV re-cache equals
re-running the kept frames with the new prompt (dense and naive-attention references)."""

import json

import pytest
import torch

from headforcing.cache import KVCache, make_policy
from headforcing.cache.policies import HeadForcingPolicy
from headforcing.model import DenseAttention
from headforcing.pipeline import Pipeline
from headforcing.sampling import generate_chunks
from headforcing.schedule import FrameClock, load_schedule
from headforcing.switch import PromptSwitcher, plan_switch
from headforcing.testing import AttentionRecorder, check_against_reference

from .conftest import random_head_map, random_model
from .reference import relative_error
from .test_cache import GRID, LATENT


def log_passes(model):
    """Wrap ``model.forward``: log (chunk first frame, commit, context, latents, t, output)."""
    log, forward = [], model.forward

    def recording(latents, timesteps, context, attention):
        chunk = attention.cache.chunk  # the commit pass closes it
        # a one-pass re-cache runs outside any chunk: it says where its frames start
        first = chunk.first_frame if chunk is not None else attention.first_frame
        out = forward(latents, timesteps, context, attention)
        log.append(
            dict(
                first=first,
                commit=attention.commit,
                context=context,
                latents=latents.clone(),
                t=timesteps.clone(),
                out=out.clone(),
            )
        )
        return out

    model.forward = recording
    return log


# ---------------------------------------------------------------- the switch lands on a boundary


@pytest.mark.parametrize(
    ("mode", "extra_passes"),
    [("cut", 0), ("recache", 1), ("recache-new-sink", 1), ("recache-causal", 2), ("head-aware", 2)],
)
def test_scheduled_switch_changes_context_at_the_chunk_asked_for(tmp_path, mode, extra_passes):
    pipeline = Pipeline.with_standins("tiny", height=64, width=64)
    video = pipeline.preset.video
    path = tmp_path / "schedule.jsonl"
    lines = [{"seconds": 0, "prompt": "a red ball"}, {"seconds": 1.0, "prompt": "a blue cube"}]
    path.write_text("\n".join(json.dumps(line) for line in lines))
    clock = FrameClock(video.fps, video.vae_stride[0], video.chunk_frames)
    schedule = load_schedule(path, clock)
    # 1.0 s = pixel frame 16 = latent frame 4, inside chunk 3..5: rounded up to 6, and said so
    assert schedule.switch_frames() == [6]
    assert "latent frame 4" in schedule.notes[0] and "latent frame 6" in schedule.notes[0]

    model = pipeline.model
    expected = {
        prompt: model.encode_text(pipeline.text_encoder.encode([prompt]))
        for prompt in ("a red ball", "a blue cube")
    }
    log = log_passes(model)
    chunks = list(pipeline.stream(schedule, 12, make_policy("window"), switch=mode))
    assert [c.prompt for c in chunks] == ["a red ball"] * 2 + ["a blue cube"] * 2
    assert len(log) == 4 * 5 + extra_passes
    for index, entry in enumerate(log):
        # re-run passes (re-cache) come right after the switch: frames < 6 at t = 0, prompt B
        rerun = 10 <= index < 10 + extra_passes
        assert rerun == (index >= 10 and entry["first"] < 6)
        prompt = "a blue cube" if entry["first"] >= 6 or rerun else "a red ball"
        assert torch.equal(entry["context"].keys[0], expected[prompt].keys[0]), (index, prompt)
        if rerun:
            assert entry["commit"] and not entry["t"].any()

    # the switch changes nothing before it: the first two chunks are the single-prompt video's
    model.forward = type(model).forward.__get__(model)
    single = list(pipeline.stream("a red ball", 12, make_policy("window")))
    for ours, reference in zip(chunks[:2], single[:2], strict=True):
        assert torch.equal(ours.latents, reference.latents)
    assert (chunks[2].latents - single[2].latents).abs().max() > 1e-3


def test_one_prompt_is_the_plain_chunk_loop():
    """The prompt loop draws noise in the same order as one generate_chunks call."""
    pipeline = Pipeline.with_standins("tiny", height=64, width=64)
    policy = make_policy("window", window_frames=9)
    ours = [c.latents for c in pipeline.generate_latents("a cat", 14, pipeline.new_cache(policy))]
    context = pipeline.model.encode_text(pipeline.text_encoder.encode(["a cat"]))
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        plain = [
            c.latents
            for c in generate_chunks(
                pipeline.model,
                pipeline.new_cache(policy),
                context,
                14,
                pipeline.latent_shape,
                generator,
                pipeline.schedule,
            )
        ]
    assert all(torch.equal(a, b) for a, b in zip(ours, plain, strict=True))


# ------------------------------------------------------------- re-cache vs a dense re-run


def contexts(config, count=2, seed=5):
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(1, config.text_len, config.text_dim, generator=generator) for _ in range(count)
    ]


def run_until(model, cache, switcher, context, frames, generator):
    """Generate up to ``frames`` (chunk by chunk, as the pipeline does); clean latents."""
    clean = []
    while cache.frames_done < frames:
        end = min(cache.frames_done + cache.chunk_frames, frames)
        for chunk in generate_chunks(model, cache, context, end, LATENT, generator):
            switcher.remember(chunk)
            clean.append(chunk.latents)
    return clean


def window_mask(frames: int, chunk_frames: int, window_chunks: int | None) -> torch.Tensor:
    chunk = torch.arange(frames) // chunk_frames
    allowed = chunk[:, None] >= chunk[None, :]
    if window_chunks is not None:
        allowed &= chunk[:, None] - chunk[None, :] < window_chunks
    return allowed


@pytest.mark.parametrize(
    ("name", "params", "switch_at", "rebuild_from", "window_chunks"),
    [
        ("full", {"positions": "absolute"}, 9, 0, None),
        ("window", {"window_frames": 6, "positions": "absolute"}, 12, 6, 2),
        ("window", {"window_frames": 6, "positions": "relative"}, 12, 6, 2),
        ("window", {"window_frames": 9, "positions": "relative"}, 6, 0, 3),
    ],
)
def test_recache_equals_rerunning_the_frames_with_the_new_prompt(
    small_config, name, params, switch_at, rebuild_from, window_chunks
):
    model = random_model(small_config)
    text_a, text_b = contexts(small_config)
    with torch.no_grad():
        context_a, context_b = model.encode_text(text_a), model.encode_text(text_b)
    policy = make_policy(name, **params)
    cache = KVCache(policy, small_config, *GRID)
    switcher = PromptSwitcher(model, cache, "recache-causal")
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        clean = torch.cat(run_until(model, cache, switcher, context_a, switch_at, generator), 2)
        plan = switcher.apply(context_b)
        assert (plan.frame, plan.rebuild_from) == (switch_at, rebuild_from)
        log = log_passes(model)
        run_until(model, cache, switcher, context_b, switch_at + 3, generator)
    model.forward = type(model).forward.__get__(model)
    assert len(log) == 5

    # dense reference: a fresh forward over exactly the re-run frames + the next chunk, new prompt
    kept = clean[:, :, rebuild_from:]
    frames = kept.shape[2] + 3
    first = rebuild_from if params["positions"] == "absolute" else 0
    mask = window_mask(frames, 3, window_chunks)
    dense = DenseAttention(model.rope, torch.arange(first, first + frames), *GRID, mask)
    for entry in log:
        latents = torch.cat([kept, entry["latents"]], dim=2)
        t = torch.cat([torch.zeros(1, kept.shape[2]), entry["t"]], dim=1)
        with torch.no_grad():
            expected = model(latents, t, context_b, dense)[:, :, kept.shape[2] :]
        assert relative_error(entry["out"], expected) <= 1e-5

    if name == "full":
        # the rebuilt K/V are those of a fresh cache fed the same clean frames under prompt B
        fresh = KVCache(make_policy("full", positions="absolute"), small_config, *GRID)
        with torch.no_grad():
            for start in range(0, switch_at + 3, 3):
                fresh.begin_chunk(3)
                source = clean if start < switch_at else log[-1]["latents"]
                chunk = source[:, :, start : start + 3] if start < switch_at else source
                model(chunk, torch.zeros(1, 3), context_b, fresh.attention(commit=True))
                fresh.end_chunk()
        for ours, theirs in zip(cache.groups(), fresh.groups(), strict=True):
            ours, theirs = ours.snapshot(), theirs.snapshot()
            assert torch.equal(ours.token_ids, theirs.token_ids)
            assert relative_error(ours.keys, theirs.keys) <= 1e-5
            assert relative_error(ours.values, theirs.values) <= 1e-5


# ------------------------------------- sink kept, head-aware: naive attention over kept tokens


def head_forcing_policy(config, positions):
    return HeadForcingPolicy(
        head_map=random_head_map(config, seed=2),
        local_frames=3,
        sink_frames=3,
        anchor_recent_frames=3,
        working_frames=3,
        max_episodes=3,
        episode_frames=0.5,
        episode_span_frames=3,
        positions=positions,
    )


def episodes(cache):
    return {
        id(group): [e.token_ids.clone() for e in group.episodes]
        for group in cache.groups()
        if group.label == "memory"
    }


@pytest.mark.parametrize("positions", ["relative", "absolute"])
@pytest.mark.parametrize(
    ("policy_name", "mode"),
    [
        ("sink", "recache"),
        ("sink", "recache-causal"),
        ("head_forcing", "recache"),
        ("head_forcing", "recache-causal"),
        ("head_forcing", "head-aware"),
    ],
)
def test_switches_match_naive_attention_over_reported_tokens(
    small_config, positions, policy_name, mode
):
    model = random_model(small_config)
    if policy_name == "sink":
        policy = make_policy("sink", window_frames=9, sink_frames=3, positions=positions)
    else:
        policy = head_forcing_policy(small_config, positions)
    cache = KVCache(policy, small_config, *GRID)
    recorder = AttentionRecorder(cache)
    switcher = PromptSwitcher(model, cache, mode)
    texts = contexts(small_config, 3)
    with torch.no_grad():
        context = [model.encode_text(text) for text in texts]
    generator = torch.Generator().manual_seed(7)
    plans = []
    with torch.no_grad():
        for prompt, end in ((0, 18), (1, 30), (2, 36)):
            if prompt:
                before = episodes(cache)
                keys_before = {id(g): g.snapshot() for g in cache.groups()}
                plans.append(switcher.apply(context[prompt]))
                check_switch(cache, plans[-1], before, keys_before, policy)
            run_until(model, cache, switcher, context[prompt], end, generator)
    checked = check_against_reference(recorder)
    # every re-run chunk's commit, or the one-pass re-cache's writes (checked as commits too)
    rerun_chunks = sum(-(-(p.frame - p.stored_from) // 3) for p in plans)
    assert checked == (12 * 5 + rerun_chunks) * sum(len(groups) for groups in cache.layers)
    if positions == "relative":
        assert cache.max_position < 21
    if mode == "head-aware":
        for group in cache.groups():
            if group.label == "memory":  # post-switch content opened its own episode
                assert any(f >= plans[-1].rebuild_from for f in group.opened_at)


def check_switch(cache, plan, episodes_before, keys_before, policy):
    """Right after a switch: what each group kept, rebuilt, and never holds twice."""
    sink = policy.sink_frames
    for group in cache.groups():
        frames = group.frame_ids
        assert (group.token_ids[1:] > group.token_ids[:-1]).all(), "a token is stored twice"
        before, now = keys_before[id(group)], group.snapshot()
        old = torch.isin(now.token_ids, before.token_ids) & (frames < plan.rebuild_from)
        where = torch.searchsorted(before.token_ids, now.token_ids[old])
        assert torch.equal(now.keys[:, :, old], before.keys[:, :, where]), "kept K/V were changed"
        assert torch.equal(now.values[:, :, old], before.values[:, :, where])
        if group.label == "local":
            assert (frames >= plan.rebuild_from).all()  # local heads rebuild all they hold
        if group.label in ("anchor", "all"):
            assert ((frames < sink) | (frames >= plan.rebuild_from)).all()
        if group.label == "memory":
            if plan.mode == "head-aware":  # episodes kept as they were
                assert all(torch.isin(e, group.token_ids).all() for e in episodes_before[id(group)])
                kept = [e for e in episodes_before[id(group)] if e.numel()]
                assert len(group.episodes) >= len(kept)
            else:  # LongLive's re-cache keeps the sink only: episodes come from the re-run
                assert all(e.first_frame >= plan.rebuild_from for e in group.episodes)
    rebuilt = [g for g in cache.groups() if (g.frame_ids >= plan.rebuild_from).any()]
    assert rebuilt, "nothing was rebuilt"


def test_head_aware_reruns_after_the_memory_recache_reruns_the_window(small_config):
    model = random_model(small_config)
    policy = head_forcing_policy(small_config, "relative")
    (text,) = contexts(small_config, 1)
    plans = {}
    for mode in ("recache-causal", "head-aware"):
        cache = KVCache(policy, small_config, *GRID)
        switcher = PromptSwitcher(model, cache, mode)
        with torch.no_grad():
            context = model.encode_text(text)
            run_until(model, cache, switcher, context, 30, torch.Generator().manual_seed(1))
        plans[mode] = plan_switch(cache, mode)
        span = 3 + 3 + 3  # anchor: sink + recent + chunk; memory: sink + working + chunk
        assert switcher.history.latents.shape[2] == span  # bounded by the widest span
        memory_end = max(
            int(e.token_ids.max()) // 16 + 1
            for g in cache.groups()
            if g.label == "memory"
            for e in g.episodes
        )
        if mode == "head-aware":
            assert plans[mode].rebuild_from == max(30 - span, memory_end)
    assert plans["recache-causal"].rebuild_from == 30 - 9
    assert plans["head-aware"].rebuilt_frames < plans["recache-causal"].rebuilt_frames


def test_cut_keeps_every_kv_and_history_is_not_kept(small_config):
    model = random_model(small_config)
    cache = KVCache(make_policy("sink", window_frames=9), small_config, *GRID)
    switcher = PromptSwitcher(model, cache, "cut")
    text_a, text_b = contexts(small_config)
    with torch.no_grad():
        run_until(model, cache, switcher, model.encode_text(text_a), 12, torch.Generator())
        before = [g.keys.clone() for g in cache.groups()]
        plan = switcher.apply(model.encode_text(text_b))
    assert plan.rebuilt_frames == 0 and switcher.history is None
    assert all(torch.equal(a, g.keys) for a, g in zip(before, cache.groups(), strict=True))


def test_full_history_is_unbounded_window_history_bounded(small_config):
    model = random_model(small_config)
    (text,) = contexts(small_config, 1)
    for name, params, limit in (("full", {}, 30), ("window", {"window_frames": 6}, 6)):
        cache = KVCache(make_policy(name, **params), small_config, *GRID)
        switcher = PromptSwitcher(model, cache, "recache")
        with torch.no_grad():
            run_until(model, cache, switcher, model.encode_text(text), 30, torch.Generator())
        assert switcher.history.latents.shape[2] == limit
        assert switcher.history.end_frame == 30


def test_unknown_switch_mode(small_config):
    cache = KVCache(make_policy("window"), small_config, *GRID)
    with pytest.raises(ValueError, match="unknown switch mode 'purge'; valid modes: cut"):
        PromptSwitcher(random_model(small_config), cache, "purge")
