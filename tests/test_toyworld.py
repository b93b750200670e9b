"""The toy world: renderer, latent codec, text encoder, metrics, training, shipped weights."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from headforcing.cache import make_policy
from headforcing.model import DenseAttention, WanModel, block_causal_mask, get_preset
from headforcing.toyworld.codec import ToyDecoder, decode_latents, encode_frames
from headforcing.toyworld.evaluate import (
    ABSOLUTE_TOLERANCE,
    ACCEPTANCE_PROMPTS,
    EVAL_PROMPTS,
    compare_to_real,
    format_table,
    model_metrics,
    real_metrics,
    sample_video,
)
from headforcing.toyworld.forcing import DiffusionForcing
from headforcing.toyworld.metrics import (
    TELEPORT_PIXELS,
    colour_error,
    colour_error_parts,
    drift,
    find_sprites,
    label_components,
    segment_metrics,
    video_metrics,
)
from headforcing.toyworld.pretrained import WEIGHTS_DIR, load_toy_pipeline
from headforcing.toyworld.text import ToyTextEncoder, slot_prompt
from headforcing.toyworld.train import main as train_main
from headforcing.toyworld.train import own_past, save, train
from headforcing.toyworld.train_config import TrainConfig
from headforcing.toyworld.train_data import (
    Batch,
    chunk_sigmas,
    own_input_levels,
    own_past_layout,
    sample_batch,
    self_context_levels,
    sink_only_mask,
    text_encoder_for,
)
from headforcing.toyworld.world import (
    BACKGROUND_COLOURS,
    MAX_SPEED,
    SPRITE_GAP,
    START_SLOTS,
    Scene,
    Sprite,
    random_background,
    random_scene,
    render,
    render_clip,
    render_schedule,
    simulate,
    vocabulary,
)

SCENE = Scene.from_prompt(
    "two red circles and a blue square bounce over a green striped background"
)


# -- world ---------------------------------------------------------------------------------------


def test_random_backgrounds_are_cells_of_the_prompts_two_shades_drawn_from_the_seed():
    first = random_background(SCENE, np.random.default_rng(5))
    assert np.array_equal(first, random_background(SCENE, np.random.default_rng(5)))
    other = random_background(SCENE, np.random.default_rng(6))
    assert not np.array_equal(first, other)
    light, dark = (np.array(c) for c in BACKGROUND_COLOURS[SCENE.background])
    is_light = (first == light).all(-1)
    assert (is_light | (first == dark).all(-1)).all()
    cells = is_light.reshape(8, 4, 8, 4)  # constant over each 4 x 4 cell
    assert (cells == cells[:, :1, :, :1]).all() and 0.2 < is_light.mean() < 0.8
    corners = simulate(SCENE, 4, seed=1)
    frames = render(SCENE, corners, background=first)
    plain = render(SCENE, corners)
    sprite = plain != SCENE.background_image()
    assert np.array_equal(frames[sprite], plain[sprite])  # the sprites drawn over it
    assert np.array_equal(
        frames[0][~sprite[0]], np.broadcast_to(first, frames[0].shape)[~sprite[0]]
    )
    with pytest.raises(ValueError, match="random_start_prob = 1"):
        TrainConfig(random_background=True)
    batch = sample_batch(2, TrainConfig(random_background=True, random_start_prob=1.0), 0)
    assert bool(batch.random_start.all())


def test_the_lit_world_shows_the_whole_background_only_in_its_first_frame():
    corners = simulate(SCENE, 12, seed=3)
    plain, lit = render(SCENE, corners), render(SCENE, corners, light_radius=6)
    np.testing.assert_array_equal(lit[0], plain[0])
    assert np.array_equal(render_clip(SCENE, 12, seed=3, light_radius=6), lit)
    # the rule, pixel by pixel: the background within 6 pixels of a sprite's centre, else black
    sizes = [sprite.stamp.shape[0] for sprite in SCENE.sprites]
    for frame in range(1, 12):
        for row in range(SCENE.size):
            for col in range(SCENE.size):
                near = any(
                    (row - (r + (size - 1) / 2)) ** 2 + (col - (c + (size - 1) / 2)) ** 2 <= 36
                    for (r, c), size in zip(corners[frame], sizes, strict=True)
                )
                expected = plain[frame, row, col] if near else 0
                np.testing.assert_array_equal(lit[frame, row, col], expected)
    # most of a later frame is dark (the sprites, within 6 pixels of their centres, are lit)
    assert (lit[1:] == 0).all(-1).mean() > 0.3


def test_same_seed_same_clip_other_seed_differs():
    first, again = render_clip(SCENE, 21, seed=3), render_clip(SCENE, 21, seed=3)
    other = render_clip(SCENE, 21, seed=4)
    assert first.shape == (21, 32, 32, 3) and first.dtype == np.uint8
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_canonical_start_is_what_the_prompt_implies():
    scene = Scene.from_prompt(
        "a cyan square, a red circle and a white circle bounce over a gray dotted background"
    )
    first, again = render_clip(scene, 21), render_clip(scene, 21)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, render_clip(scene, 21, seed=0))
    corners = simulate(scene, 3)  # sprite k of the canonical order starts at slot k
    assert [tuple(c) for c in corners[0]] == list(START_SLOTS)
    assert [s.colour for s in scene.sprites] == ["cyan", "red", "white"]
    velocity = corners[2] - corners[0]
    # slot 0 moves down-right, slot 1 down-left, slot 2 up-right
    assert (np.sign(velocity) == np.array([[1, 1], [1, -1], [-1, 1]])).all()


def test_prompt_round_trip_and_canonical_order():
    rng = np.random.default_rng(0)
    for _ in range(200):
        scene = random_scene(rng)
        assert Scene.from_prompt(scene.prompt()) == scene
    assert SCENE.prompt() == (
        "a blue square and two red circles bounce over a green striped background"
    )
    assert len(SCENE.sprites) == 3
    assert Scene.from_prompt("A  white circle bounces over a GRAY dotted background").sprites == (
        Sprite("white", "circle"),
    )


@pytest.mark.parametrize(
    "prompt",
    [
        "a dog runs over a green striped background",
        "two red circle bounce over a green striped background",
        "a red circle bounces over a pink striped background",
        "",
    ],
)
def test_bad_prompt_is_refused(prompt):
    with pytest.raises(ValueError, match=r"prompt|count|background"):
        Scene.from_prompt(prompt)


def test_real_clip_shows_what_the_prompt_says():
    rng = np.random.default_rng(1)
    for seed in range(10):
        scene = random_scene(rng)
        clip = render_clip(scene, 60, seed)
        background = scene.background_image()
        sprite_pixels = (clip != background).any(-1).sum(axis=(1, 2))
        assert (sprite_pixels <= sum(s.area for s in scene.sprites)).all()
        for blobs in find_sprites(clip, scene):
            assert len(blobs) == len(scene.sprites)  # sprites never touch
            found = sorted(tuple(np.round(b.colour).astype(int)) for b in blobs)
            assert found == sorted(s.rgb for s in scene.sprites)


def test_motion_is_bounded_and_sprites_keep_apart():
    scene = Scene.from_prompt("three white squares bounce over a brown checkered background")
    corners = simulate(scene, 500, seed=5)  # [F, N, 2]
    steps = np.abs(np.diff(corners, axis=0))
    assert steps.max() <= np.ceil(MAX_SPEED) + 1
    assert (steps.sum(axis=(1, 2)) > 0).mean() > 0.9, "sprites should keep moving"
    assert corners.min() >= 0 and (corners + 6).max() <= 32
    for frame in corners:
        for i in range(3):
            for j in range(i + 1, 3):
                gaps = np.abs(frame[i] - frame[j]) - 6
                assert gaps.max() >= SPRITE_GAP


def test_prompt_schedule_switches_background_and_keeps_sprites_moving():
    second = Scene.from_prompt(
        "two red circles and a blue square bounce over a gray dotted background"
    )
    frames, scenes = render_schedule([(0, SCENE), (10, second)], 20, seed=2)
    assert frames.shape == (20, 32, 32, 3) and scenes[9] == SCENE and scenes[10] == second
    segments = video_metrics(frames, scenes, segment_frames=20)
    assert segments[0].background_error == 0 and segments[0].count_error == 0
    assert segments[0].teleport_rate == 0, "sprites jumped at the prompt switch"
    canonical, _ = render_schedule([(0, SCENE), (10, second)], 20)
    assert np.array_equal(canonical[:10], render_clip(SCENE, 10))
    assert video_metrics(canonical, scenes, segment_frames=20)[0].teleport_rate == 0
    with pytest.raises(ValueError, match="frame 0"):
        render_schedule([(5, SCENE)], 20, seed=0)


# -- latents and text ----------------------------------------------------------------------------


def test_patchify_is_exactly_invertible():
    clip = render_clip(SCENE, 6, seed=0)
    latents = encode_frames(clip[None])
    assert latents.shape == (1, 48, 6, 8, 8) and latents.abs().max() <= 1
    decoder = ToyDecoder()
    assert decoder.temporal_stride == 1 and decoder.spatial_stride == 4
    decoded = torch.cat([decoder.decode_chunk(latents[:, :, i : i + 3]) for i in (0, 3)], dim=1)
    assert torch.equal(decoded[0], torch.from_numpy(clip))
    pixel = decode_latents(latents)  # independent check of the layout: one 4x4 block
    assert torch.equal(pixel[0, :, 0, :4, :4], latents[0, :, 0, 0, 0].view(3, 4, 4))


def test_first_frame_format_negates_only_the_videos_first_frame():
    clip = render_clip(SCENE, 6, seed=0)
    plain = encode_frames(clip[None])
    latents = encode_frames(clip[None], first_negated=True)
    assert torch.equal(latents[:, :, 0], -plain[:, :, 0])
    assert torch.equal(latents[:, :, 1:], plain[:, :, 1:])
    decoder = ToyDecoder(first_negated=True)
    for _ in range(2):  # a second video after reset() starts with its first frame again
        decoder.reset()
        chunks = [decoder.decode_chunk(latents[:, :, i : i + 3]) for i in (0, 3)]
        assert torch.equal(torch.cat(chunks, dim=1)[0], torch.from_numpy(clip))
    # a later chunk that happens to start a latent tensor is not a first frame
    assert not torch.equal(decoder.decode_chunk(latents[:, :, :3])[0], torch.from_numpy(clip[:3]))


def test_text_encoder_pads_with_zero_and_tells_word_order_apart():
    torch.manual_seed(0)
    encoder = ToyTextEncoder(vocabulary(), text_len=24, text_dim=16).eval()
    with torch.no_grad():
        first, swapped, unknown = encoder.encode(
            [
                "a red circle and a blue square bounce over a green striped background",
                "a blue circle and a red square bounce over a green striped background",
                "a zebra",
            ]
        )
    assert first.shape == (24, 16)
    assert (first[13:] == 0).all() and (first[:13].abs().sum(-1) > 0).all()
    assert not torch.allclose(first, swapped, atol=1e-3)
    assert (unknown[2:] == 0).all() and (unknown[1] != 0).all()


def test_text_encoder_reads_a_toy_prompt_one_sprite_per_phrase_in_canonical_order():
    encoder = ToyTextEncoder(vocabulary(), text_len=24, text_dim=16).eval()
    named = "two white circles and a magenta square bounce over a purple dotted background"
    canonical = Scene.from_prompt(named).prompt()
    assert canonical.startswith("a magenta square and two white circles")
    slots = slot_prompt(named)
    assert slots == (
        "a magenta square and a white circle and a white circle bounce over a purple dotted "
        "background"
    )
    assert Scene.from_prompt(slots) == Scene.from_prompt(named)
    assert slot_prompt("a zebra") == "a zebra"
    ids, valid = encoder.tokenize([named, canonical, slots])
    assert torch.equal(ids[0], ids[1]) and torch.equal(ids[0], ids[2])
    assert torch.equal(valid[0], valid[1])
    # sprite k's colour is word 4k + 1 whatever the count
    colour_ids = [encoder.index[c] for c in ("magenta", "white", "white")]
    assert ids[0, [1, 5, 9]].tolist() == colour_ids
    other = "a white circle and a magenta square bounce over a purple dotted background"
    assert not torch.equal(encoder.tokenize([other])[0][0], ids[0])  # a different scene


# -- metrics -------------------------------------------------------------------------------------


def test_components_match_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(0)
    mask = rng.random((4, 32, 32)) < 0.45
    labels = label_components(mask)
    for frame_mask, frame_labels in zip(mask, labels, strict=True):
        reference, count = ndimage.label(frame_mask, structure=np.ones((3, 3)))
        assert len(np.unique(frame_labels[frame_mask])) == count
        pairs = set(
            zip(reference[frame_mask].tolist(), frame_labels[frame_mask].tolist(), strict=True)
        )
        assert len(pairs) == count  # the same partition


def test_real_clips_score_as_the_truth():
    for seed, prompt in enumerate(EVAL_PROMPTS):
        scene = Scene.from_prompt(prompt)
        metrics = segment_metrics(render_clip(scene, 21, seed), scene)
        assert metrics.background_error == 0 and metrics.flicker == 0
        assert metrics.count_error == 0 and metrics.colour_error == 0
        assert metrics.teleport_rate == 0
        assert 0.5 < metrics.motion < MAX_SPEED * np.sqrt(2) + 1
        assert 0.8 < metrics.sharpness_ratio < 1.25
    segments = video_metrics(render_clip(SCENE, 63, 0), SCENE)
    assert len(segments) == 3
    assert drift(segments)["background_error"] == 0 and drift(segments)["count_error"] == 0


def test_metrics_fail_corrupted_clips():
    clip = render_clip(SCENE, 21, seed=0)
    real = segment_metrics(clip, SCENE)
    rng = np.random.default_rng(0)

    frozen = segment_metrics(np.repeat(clip[:1], 21, axis=0), SCENE)
    assert frozen.motion == 0 and real.motion > 0.5

    noisy = np.clip(clip + rng.normal(0, 40, clip.shape), 0, 255).astype(np.uint8)
    noisy_metrics = segment_metrics(noisy, SCENE)
    assert noisy_metrics.background_error > 0.1 and noisy_metrics.flicker > 0.1
    assert noisy_metrics.count_error > 1 and noisy_metrics.sharpness_ratio > 2

    shuffled = segment_metrics(clip[rng.permutation(21)], SCENE)
    assert shuffled.teleport_rate > 0.2 and shuffled.motion > 2 * real.motion

    blurred = (clip[:, :-1, :-1].astype(float) + clip[:, 1:, 1:]) / 2
    blurred = np.pad(blurred, ((0, 0), (0, 1), (0, 1), (0, 0)), mode="edge").astype(np.uint8)
    assert segment_metrics(blurred, SCENE).sharpness_ratio < 0.67

    wrong = Scene.from_prompt(
        "two yellow circles and a cyan square bounce over a gray dotted background"
    )
    wrong_metrics = segment_metrics(clip, wrong)
    assert wrong_metrics.background_error > 0.1 and wrong_metrics.colour_error > 0.2

    empty = np.repeat(SCENE.background_image()[None], 21, axis=0)
    assert segment_metrics(empty, SCENE).count_error == 3

    # float input in [-1, 1] is the same video
    as_float = torch.from_numpy(clip).float() / 127.5 - 1
    assert segment_metrics(as_float, SCENE) == real
    assert MAX_SPEED * np.sqrt(2) + 1 < TELEPORT_PIXELS


def test_colour_error_parts_tell_a_lost_sprite_from_a_wrong_colour():
    scene = Scene.from_prompt(
        "a blue circle, a red square and a yellow square bounce over a purple striped background"
    )
    frame = render_clip(scene, 1)[0]
    rgbs = [np.array(sprite.rgb) for sprite in scene.sprites]
    assert len({tuple(c) for c in rgbs}) == len(rgbs) == 3
    first = (frame == rgbs[0]).all(-1)

    erased = np.where(first[..., None], scene.background_image(), frame)
    recoloured = np.where(first[..., None], rgbs[0] + np.array([-30, 30, 0]), frame)
    for video, parts in (
        (frame, (0.0, 0.0)),
        (erased, (1 / 3, 0.0)),
        (recoloured.astype(np.uint8), (0.0, np.hypot(30, 30) / (255 * np.sqrt(3)) / 3)),
    ):
        blobs = find_sprites(video[None], scene)[0]
        np.testing.assert_allclose(colour_error_parts(blobs, scene), parts, atol=1e-9)
        assert colour_error(blobs, scene) == pytest.approx(sum(parts))


# -- training ------------------------------------------------------------------------------------


def test_training_is_reproducible_and_learns():
    config = TrainConfig(steps=2, batch=1, seed=7, warmup=1)
    _, _, first = train(config)
    _, _, again = train(config)
    assert first == again
    _, _, other = train(TrainConfig(steps=2, batch=1, seed=8, warmup=1))
    assert first != other

    fixed = TrainConfig(steps=30, batch=1, seed=0, warmup=5, lr=2e-3)
    _, _, losses = train(fixed, fixed_batch=True)
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def test_compiled_training_matches_eager_training():
    """``torch.compile`` (``--compile``) must not change the math: the same losses and weights
    as eager steps, up to float rounding."""
    config = TrainConfig(steps=3, batch=1, seed=7, warmup=1)
    net, ema, losses = train(config)
    compiled_net, compiled_ema, compiled_losses = train(config, compile=True)
    np.testing.assert_allclose(compiled_losses, losses, rtol=1e-4)
    # Adam moves every weight by about ``lr`` per step whatever its gradient's size, so float
    # rounding in a near-zero gradient element changes that weight's step by a share of ``lr``
    # (up to about 1 % of it here, at either learning rate tried), while math that differs
    # moves weights by whole steps of ``lr``
    atol = 0.02 * config.lr
    for name, value in ema.state_dict().items():
        torch.testing.assert_close(compiled_ema.state_dict()[name], value, atol=atol, rtol=1e-4)
    # the compiled module keeps its parameter names: its weights save and load as before
    assert compiled_net.model.state_dict().keys() == net.model.state_dict().keys()


def test_training_script_records_the_chain_of_runs(tmp_path):
    """``config.json`` of a continued run carries the settings of every run before it."""
    threads = str(torch.get_num_threads())  # the script sets the process-wide thread count
    small = ["--steps", "1", "--batch", "1", "--warmup", "1", "--threads", threads]
    train_main(["--out", str(tmp_path / "first"), *small, "--seed", "3"])
    train_main(["--out", str(tmp_path / "second"), *small, "--init", str(tmp_path / "first")])
    train_main(["--out", str(tmp_path / "third"), *small, "--init", str(tmp_path / "second")])
    meta = json.loads((tmp_path / "third" / "config.json").read_text())
    assert meta["compiled"] is False and meta["init"]["compiled"] is False
    assert meta["init"]["train"]["seed"] == 0 and meta["init"]["init"]["train"]["seed"] == 3
    assert "init" not in meta["init"]["init"]


def test_sink_gap_clips_are_the_first_chunk_then_the_frames_after_a_gap():
    config = TrainConfig(batch=6, random_start_prob=0.0, sink_gap_prob=1.0, sink_gap_max=30)
    batch = sample_batch(6, config, step=0)
    gaps = set()
    for prompt, latents in zip(batch.prompts, batch.latents, strict=True):
        scene = Scene.from_prompt(prompt)
        found = [
            gap
            for gap in range(3, 31, 3)
            if torch.equal(
                latents,
                encode_frames(
                    np.concatenate(
                        [render_clip(scene, 21 + gap)[:3], render_clip(scene, 21 + gap)[3 + gap :]]
                    )[None]
                )[0],
            )
        ]
        assert len(found) == 1
        gaps |= set(found)
    assert len(gaps) > 1  # gaps are drawn, not fixed
    with pytest.raises(ValueError, match="sink_gap_max"):
        TrainConfig(sink_gap_prob=0.5, sink_gap_max=2)


def test_first_chunk_clean_share_and_sink_truth():
    generator = torch.Generator().manual_seed(0)
    canonical = torch.zeros(4000, dtype=torch.bool)
    for share in (0.0, 0.5, 1.0):
        config = TrainConfig(first_clean_prob=share)
        sigmas = chunk_sigmas(canonical, 7, config, generator)
        expected = config.clean_prob * share
        assert abs(float((sigmas[:, 0] == 0).float().mean()) - expected) < 0.03
    # sink_truth: self-context replaces clean chunks, never the first one
    sigmas = torch.zeros(2000, 7)
    for sink_truth in (False, True):
        config = TrainConfig(self_context_prob=1.0, sink_truth=sink_truth)
        levels = self_context_levels(sigmas, config, generator)
        assert bool((levels[:, 1:] > 0).all())
        assert bool((levels[:, 0] > 0).all()) is not sink_truth
        assert bool((levels[:, 0] == 0).all()) is sink_truth


def test_sink_only_mask_leaves_the_first_chunk_and_the_chunk_itself():
    generator = torch.Generator().manual_seed(0)
    causal = block_causal_mask(21, 3)
    assert torch.equal(sink_only_mask(21, 3, TrainConfig(), generator), causal)
    chosen_rows = 0
    for _ in range(200):
        mask = sink_only_mask(21, 3, TrainConfig(sink_only_prob=0.4), generator)
        assert not (mask & ~causal).any()  # never more than block-causal
        for chunk in range(7):
            rows = mask[3 * chunk : 3 * chunk + 3]
            assert (rows == rows[0]).all()  # a chunk's frames see the same frames
            seen = set(torch.nonzero(rows[0]).flatten().tolist())
            full, sink_only = (
                set(range(3 * chunk + 3)),
                {0, 1, 2} | set(range(3 * chunk, 3 * chunk + 3)),
            )
            assert seen in (full, sink_only)
            chosen_rows += chunk > 1 and seen == sink_only
    assert abs(chosen_rows / (200 * 5) - 0.4) < 0.05  # chunks 2-6 can lose anything


def test_first_negated_training_clips_store_the_first_frame_negated():
    plain = sample_batch(2, TrainConfig(batch=2), step=0)
    negated = sample_batch(2, TrainConfig(batch=2, first_negated=True), step=0)
    assert torch.equal(negated.latents[:, :, 0], -plain.latents[:, :, 0])
    assert torch.equal(negated.latents[:, :, 1:], plain.latents[:, :, 1:])


def test_weights_carry_their_latent_format_to_the_decoder(tmp_path):
    threads = str(torch.get_num_threads())  # the script sets the process-wide thread count
    small = ["--steps", "1", "--batch", "1", "--warmup", "1", "--threads", threads]
    train_main(["--out", str(tmp_path / "negated"), *small, "--first-negated"])
    assert load_toy_pipeline(weights_dir=tmp_path / "negated").decoder.first_negated
    assert not load_toy_pipeline().decoder.first_negated  # the shipped weights: plain
    config = tmp_path / "negated" / "config.json"
    meta = json.loads(config.read_text())
    meta["latent"]["first_frame"] = "mirrored"
    config.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="mirrored"):
        load_toy_pipeline(weights_dir=tmp_path / "negated")


def _nine_frame_model_and_batch() -> tuple[DiffusionForcing, Batch]:
    """A random-weight training module for 9-frame clips and a batch of two such clips."""
    torch.manual_seed(0)
    net = DiffusionForcing(WanModel(get_preset("toy").model), text_encoder_for(), 9).eval()
    batch = sample_batch(2, TrainConfig(batch=2), step=0)
    batch = replace(batch, latents=batch.latents[:, :, :9], weights=batch.weights[:, :, :9])
    return net, batch


def test_self_context_replaces_clean_chunks_by_the_models_own_reconstruction():
    net, batch = _nine_frame_model_and_batch()
    sigmas = torch.tensor([[0.0, 0.0, 0.6], [0.0, 0.4, 0.0]])
    config = TrainConfig(self_context_prob=0.7)
    with pytest.raises(ValueError, match="needs self-context"):
        TrainConfig(self_context_refine=0.2)
    levels = self_context_levels(sigmas, config, torch.Generator().manual_seed(1))
    assert (levels[sigmas > 0] == 0).all()
    assert ((levels[levels > 0] >= 0.3) & (levels[levels > 0] <= 0.7)).all()

    levels = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, 0.3]])  # clip 0 chunk 0, clip 1 chunk 2
    noise, fresh = torch.randn(batch.latents.shape), torch.randn(batch.latents.shape)
    context = net.model.encode_text(net.text_encoder.encode(batch.prompts))
    attention = DenseAttention(net.model.rope, torch.arange(9), *net.grid, net.mask)
    kept = torch.ones(2, 9, dtype=torch.bool)
    kept[0, :3] = kept[1, 6:] = False
    for refine in (None, (0.2, fresh)):
        with torch.no_grad():
            mixed = net._own_context(
                batch.latents, sigmas, noise, levels, context, attention, refine
            )
        assert torch.equal(
            mixed.permute(0, 2, 1, 3, 4)[kept], batch.latents.permute(0, 2, 1, 3, 4)[kept]
        )
        # reference: the chunk alone (clip 0) or its whole prefix (clip 1), noised, one model
        # call; with refine, its prediction re-noised with the fresh noise and a second call
        for clip, chunk_levels in ((0, [0.5]), (1, [0.0, 0.4, 0.3])):
            frames = 3 * len(chunk_levels)
            prefix = DenseAttention(
                net.model.rope, torch.arange(frames), *net.grid, net.mask[:frames, :frames]
            )
            text = net.model.encode_text(net.text_encoder.encode(batch.prompts[clip : clip + 1]))
            clean = batch.latents[clip : clip + 1, :, :frames]
            clip_noise, estimate = noise[clip : clip + 1, :, :frames], clean
            for level, chunk_noise in [(chunk_levels[-1], noise)] + ([refine] if refine else []):
                per_frame = torch.tensor([*chunk_levels[:-1], level]).repeat_interleave(3)[None]
                per_frame_b = per_frame[:, None, :, None, None]
                source = (1 - per_frame_b) * clean + per_frame_b * clip_noise
                last = chunk_noise[clip : clip + 1, :, frames - 3 : frames]
                source[:, :, -3:] = (1 - level) * estimate[:, :, -3:] + level * last
                with torch.no_grad():
                    flow = net.model(source, per_frame * 1000, text, prefix)
                estimate = source - per_frame_b * flow
            torch.testing.assert_close(
                mixed[clip : clip + 1, :, frames - 3 : frames], estimate[:, :, -3:]
            )
    loss = net.loss(batch, sigmas, noise, levels)
    assert torch.isfinite(loss) and loss != net.loss(batch, sigmas, noise)


def _dense_flow(net, latents, levels, prompts):
    """The model on a clip's frames under the plain block-causal mask (the reference)."""
    frames = latents.shape[2]
    attention = DenseAttention(
        net.model.rope, torch.arange(frames), *net.grid, block_causal_mask(frames, 3)
    )
    text = net.model.encode_text(net.text_encoder.encode(prompts))
    with torch.no_grad():
        return net.model(latents, levels * 1000, text, attention)


def test_own_past_loss_denoises_every_chunk_from_the_clean_chunks_before_it():
    positions, mask = own_past_layout(6, 3)
    assert positions.tolist() == [0, 1, 2, 3, 4, 5] * 2
    for query in range(12):
        for key in range(12):
            q_chunk, k_chunk = (query % 6) // 3, (key % 6) // 3
            if query < 6:  # the clean past: block-causal, never the noisy copy
                expected = key < 6 and k_chunk <= q_chunk
            else:  # a noisy chunk: the clean chunks before it and itself
                expected = (key < 6 and k_chunk < q_chunk) or (key >= 6 and k_chunk == q_chunk)
            assert bool(mask[query, key]) == expected, (query, key)

    net, batch = _nine_frame_model_and_batch()
    past = torch.randn(batch.latents.shape)  # any clean past (a rollout in training)
    sigmas = torch.tensor([[0.8, 0.3, 0.5], [0.0, 0.6, 0.9]])  # clip 1's first: no loss
    noise = torch.randn(batch.latents.shape)
    with torch.no_grad():
        loss = net.loss_on_own_past(batch, past, sigmas, noise)
    # reference: each chunk alone after its past, the plain block-causal model, then the loss
    errors, count = 0.0, 0
    for clip in range(2):
        for chunk in range(3):
            sigma = float(sigmas[clip, chunk])
            if sigma == 0:
                continue
            end = 3 * chunk + 3
            truth = batch.latents[clip : clip + 1, :, end - 3 : end]
            chunk_noise = noise[clip : clip + 1, :, end - 3 : end]
            inputs = torch.cat(
                [past[clip : clip + 1, :, : end - 3], (1 - sigma) * truth + sigma * chunk_noise], 2
            )
            levels = torch.tensor([[0.0] * (end - 3) + [sigma] * 3])
            flow = _dense_flow(net, inputs, levels, batch.prompts[clip : clip + 1])[:, :, -3:]
            weights = batch.weights[clip : clip + 1, :, end - 3 : end]
            per_frame = ((flow - (chunk_noise - truth)).pow(2) * weights).mean(dim=(1, 3, 4))
            errors, count = errors + per_frame.sum(), count + 3
    torch.testing.assert_close(loss, errors / count, rtol=1e-4, atol=1e-6)


def test_rollouts_are_the_models_own_videos_generated_as_at_inference():
    """A rollout (full KV cache, the sampler's steps, each chunk committed at t = 0) equals
    sampling chunk by chunk with the dense block-causal model over the growing clip."""
    net, batch = _nine_frame_model_and_batch()
    steps = 3
    video = net.rollout(batch.prompts, 9, steps, torch.Generator().manual_seed(4))
    assert video.shape == batch.latents.shape

    generator = torch.Generator().manual_seed(4)
    shift = get_preset("toy").video.sampler_shift
    # even steps on the 1000-step scale, rounded as the toy preset's (1000, 667, 333)
    sigmas = [shift * u / (1 + (shift - 1) * u) for u in (1.0, 0.667, 0.333)]
    shape = (2, *batch.latents.shape[1:2], 3, *batch.latents.shape[3:])
    done = torch.zeros(2, shape[1], 0, *shape[3:])
    for _ in range(3):
        x = torch.randn(shape, generator=generator)
        for step, sigma in enumerate(sigmas):
            levels = torch.tensor([[0.0] * done.shape[2] + [sigma] * 3] * 2)
            flow = _dense_flow(net, torch.cat([done, x], 2), levels, batch.prompts)
            x0 = x - sigma * flow[:, :, -3:]
            if step + 1 < steps:
                x = (1 - sigmas[step + 1]) * x0 + sigmas[step + 1] * torch.randn(
                    shape, generator=generator
                )
        done = torch.cat([done, x0], 2)
    torch.testing.assert_close(video, done, rtol=1e-4, atol=1e-4)


def test_rollout_stage_rolls_out_the_canonical_clips_only(tmp_path):
    net, batch = _nine_frame_model_and_batch()
    batch = replace(batch, random_start=torch.tensor([False, True]))
    config = TrainConfig(rollout_prob=1.0, rollout_steps=2, clip_frames=9)
    past = own_past(net, batch, config, torch.Generator().manual_seed(0))
    assert torch.equal(past[1], batch.latents[1])  # a random start's past is the truth
    assert not torch.allclose(past[0], batch.latents[0], atol=0.1)  # the model's own video
    # every chunk is denoised from its past: none is left clean but a random start's first
    sigmas = chunk_sigmas(torch.tensor([False, True] * 20), 7, config, torch.Generator())
    assert (sigmas[0::2] > 0).all() and (sigmas[1::2, 1:] > 0).all()
    assert (sigmas[1::2, 0] == 0).all()

    with pytest.raises(ValueError, match="cannot be combined with self_context_prob"):
        TrainConfig(rollout_prob=0.5, self_context_prob=0.5)
    with pytest.raises(ValueError, match="rollout_steps"):
        TrainConfig(rollout_steps=0)
    save(tmp_path / "negated", net, TrainConfig(first_negated=True), {})
    with pytest.raises(SystemExit, match="add --first-negated"):
        train_main(["--out", str(tmp_path / "next"), "--init", str(tmp_path / "negated")])


def test_own_input_noises_low_noise_chunks_from_the_models_prediction():
    net, batch = _nine_frame_model_and_batch()
    sigmas = torch.tensor([[0.0, 0.3, 0.9], [0.5, 0.0, 0.2]])
    with pytest.raises(ValueError, match="own_input_sigma"):
        TrainConfig(own_input_sigma=(0.6, 0.2))
    with pytest.raises(ValueError, match="own_input_span"):
        TrainConfig(own_input_span=0.0)
    config = TrainConfig(own_input_prob=1.0, own_input_sigma=(0.25, 0.6))
    levels = own_input_levels(sigmas, config, torch.Generator().manual_seed(1))
    eligible = (sigmas >= 0.25) & (sigmas <= 0.6)
    assert (levels[~eligible] == 0).all() and (levels[eligible] >= sigmas[eligible]).all()
    assert ((levels[eligible] > 0) & (levels[eligible] <= 1)).all()
    near = own_input_levels(sigmas, replace(config, own_input_span=0.05), torch.Generator())
    assert (near[eligible] - sigmas[eligible] <= 0.05 + 1e-6).all()

    # clip 0 chunk 1 from 0.7, clip 1 chunk 2 from 0.45 (chosen by hand; the rest from truth)
    levels = torch.tensor([[0.0, 0.7, 0.0], [0.0, 0.0, 0.45]])
    noise, own_noise = torch.randn(batch.latents.shape), torch.randn(batch.latents.shape)
    text = net.model.encode_text(net.text_encoder.encode(batch.prompts))
    attention = DenseAttention(net.model.rope, torch.arange(9), *net.grid, net.mask)

    # reference: one call with the chosen chunks noised from the truth to their own-input level
    # with their own noise, the others as in the loss pass; the chosen chunks are then noised
    # from that prediction, and their target is the v that leads back to the truth
    truth = batch.latents
    sigma_f = sigmas.repeat_interleave(3, dim=1)
    chosen_f = (levels > 0).repeat_interleave(3, dim=1)[:, None, :, None, None]
    first_f = torch.where(levels > 0, levels, sigmas).repeat_interleave(3, dim=1)
    first_b = first_f[:, None, :, None, None]
    source = (1 - first_b) * truth + first_b * torch.where(chosen_f, own_noise, noise)
    with torch.no_grad():
        predicted = source - first_b * net.model(source, first_f * 1000, text, attention)
        base = torch.where(chosen_f, predicted, truth)
        sigma_b = sigma_f[:, None, :, None, None]
        noisy = (1 - sigma_b) * base + sigma_b * noise
        flow = net.model(noisy, sigma_f * 1000, text, attention)
        target = torch.where(chosen_f, (noisy - truth) / sigma_b.clamp(min=1e-6), noise - truth)
        error = ((flow - target).pow(2) * batch.weights).mean(dim=(1, 3, 4))
        expected = (error * (sigma_f > 0)).sum() / (sigma_f > 0).sum()
        zero = torch.zeros_like(sigmas)
        mixed = net._own_context(
            truth, sigmas, noise, zero, text, attention, own_input=(levels, own_noise)
        )
        loss = net.loss(batch, sigmas, noise, own_input=(levels, own_noise))
        plain = net.loss(batch, sigmas, noise)
    torch.testing.assert_close(mixed, base)
    assert not torch.equal(mixed, truth)
    torch.testing.assert_close(loss, expected)
    assert not torch.isclose(loss, plain)
    # no chunk chosen: the plain loss, exactly
    assert torch.equal(net.loss(batch, sigmas, noise, own_input=(zero, own_noise)), plain)


def test_continuing_from_saved_weights(tmp_path):
    config = TrainConfig(steps=1, batch=1, seed=0, warmup=1)
    _, ema, _ = train(config)
    save(tmp_path, ema, config, {"final_loss": 0.0, "wall_s": 0.0})
    net, _, _ = train(TrainConfig(steps=1, batch=1, seed=1, warmup=1, lr=1e-12), init=tmp_path)
    for name, value in ema.model.state_dict().items():
        torch.testing.assert_close(net.model.state_dict()[name], value, atol=2e-3, rtol=2e-3)
    pipeline = load_toy_pipeline(weights_dir=tmp_path)
    assert pipeline.preset.name == "toy" and pipeline.latent_shape == (48, 8, 8)
    assert pipeline.preset.model.spatial_pos_embed

    # weights saved before the position embedding existed load with the shapes they were saved
    # with (config.json), not today's preset
    old = tmp_path / "old"
    shutil.copytree(tmp_path, old, ignore=shutil.ignore_patterns("old"))
    meta = json.loads((old / "config.json").read_text())
    del meta["model"]["spatial_pos_embed"]
    (old / "config.json").write_text(json.dumps(meta))
    assert not load_toy_pipeline(weights_dir=old).preset.model.spatial_pos_embed


# -- the shipped model ---------------------------------------------------------------------------


def test_missing_weights_error_names_the_fix(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"model\.safetensors.*headforcing\.toyworld\.train"
    ):
        load_toy_pipeline(weights_dir=tmp_path)


@pytest.mark.skipif(not (WEIGHTS_DIR / "model.safetensors").exists(), reason="no shipped weights")
def test_shipped_model_is_close_to_real_clips_at_the_training_horizon():
    """Samples of 21 frames (the trained horizon, full cache; 12 prompts x 2 seeds): every metric
    within 1.5x of real clips where they score above zero, within ABSOLUTE_TOLERANCE where they
    score zero."""
    pipeline = load_toy_pipeline()
    seeds = (0, 1)
    real = real_metrics(ACCEPTANCE_PROMPTS)[0]
    model = model_metrics(pipeline, ACCEPTANCE_PROMPTS, seeds)[0]
    rows = compare_to_real(model, real)
    assert {r.name for r in rows if r.real == 0} <= set(ABSOLUTE_TOLERANCE)
    assert all(r.passed for r in rows), "\n" + format_table(rows)


@pytest.mark.skipif(not (WEIGHTS_DIR / "model.safetensors").exists(), reason="no shipped weights")
def test_demo_streams_in_lockstep_equal_runs_alone():
    # each stream decodes its own first frame, however they interleave
    from headforcing.toyworld.demo import lockstep_streams

    negated = load_toy_pipeline()
    negated.decoder = ToyDecoder(first_negated=True)
    prompt, policies = EVAL_PROMPTS[1], [make_policy("window"), make_policy("sink")]
    together = [[], []]
    for chunks in zip(*lockstep_streams(negated, prompt, 6, policies, seed=3), strict=True):
        for video, chunk in zip(together, chunks, strict=True):
            video.append(chunk.frames[0].numpy())
    for video, policy in zip(together, policies, strict=True):
        alone = sample_video(negated, prompt, 6, policy, seed=3)
        assert np.array_equal(np.concatenate(video), alone)


@pytest.mark.skipif(not (WEIGHTS_DIR / "model.safetensors").exists(), reason="no shipped weights")
def test_demo_writes_video_report_and_pictures(tmp_path, capsys):
    from headforcing.cli import main
    from headforcing.io.video import read_video

    assert main(["demo", "--frames", "42", "--out-dir", str(tmp_path)]) == 0
    video = read_video(tmp_path / "demo.mp4")
    assert video.shape[0] == 42 and video.shape[2] > 3 * 128  # three labelled panels
    report = (tmp_path / "report.md").read_text()
    for name in ("real clip", "window-21 (absolute)", "head_forcing"):
        assert f"| {name} | 1-21 |" in report and f"| {name} | 22-42, mean |" in report
        for segment in ("| 1 | 1-21 |", "| 2 | 22-42 |"):
            assert f"{segment} {name} |" in report
    for picture in ("metrics_over_time.png", "head_map.png"):
        assert (tmp_path / picture).read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "side-by-side video" in out
    # the last line printed is the report's summary, about the one segment past the horizon
    summary = out.strip().splitlines()[-1]
    assert f"**Summary:** {summary}" in report.splitlines()
    assert summary.startswith("after the 21-frame training horizon (1 later segment")


def test_weights_of_a_probe_world_load_for_the_profilers_only(tmp_path):
    for name in ("model.safetensors", "text_encoder.safetensors", "config.json"):
        shutil.copy(WEIGHTS_DIR / name, tmp_path / name)
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["train"] = {**meta["train"], "light_radius": 8, "random_background": True}
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="light radius 8, random backgrounds"):
        load_toy_pipeline(weights_dir=tmp_path)
    assert load_toy_pipeline(weights_dir=tmp_path, probe_world=True).model is not None


def test_sink_probe_profiles_every_head_after_a_given_first_chunk():
    """``benchmarks/toyworld_sink_probe.py`` runs on the shipped weights: every head's mass
    over the four regions sums to 1, and every head puts some on the given first chunk."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "toyworld_sink_probe.py"
    spec = importlib.util.spec_from_file_location("toyworld_sink_probe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    stats = module.probe(WEIGHTS_DIR, [EVAL_PROMPTS[0]])
    total = sum(stats[region] for region in ("sink", "middle", "recent", "current"))
    np.testing.assert_allclose(total, 1.0, atol=1e-4)
    assert stats["sink"].shape == (4, 4) and (stats["sink"] > 0).all()
