"""The memory estimate at Wan-1.3B's shape against the bytes the real modules and the cache
allocate, counted on the meta device (no GPU, no data): our WanModel, the umT5-XXL encoder class,
diffusers' AutoencoderKLWan at Wan's config, our KVCache at the requested length, one DiT pass
and the VAE decoder's calls; and the mode decision for a card size, refused in one line."""

import dataclasses

import pytest
import torch

from headforcing.cache import KVCache, make_policy
from headforcing.io.umt5_wan import UMT5_XXL
from headforcing.memory_estimate import (
    GIB,
    MEMORY_MODES,
    RunShape,
    context_bytes,
    estimate_memory,
)
from headforcing.model import WanModel, get_preset
from headforcing.resources import plan_memory

from .conftest import random_head_map
from .meta_memory import PeakBytes, module_bytes, tensor_bytes

PRESET = get_preset("wan2.1-t2v-1.3b")
CONFIG = PRESET.model
HEIGHT, WIDTH = 480, 832
DTYPE = torch.bfloat16
FRAMES_60S = 241  # 60 s at 16 fps
TOLERANCE = 0.10


def within(estimate: int, counted: int) -> bool:
    return abs(estimate - counted) <= TOLERANCE * counted


def run_of(policy, frames=FRAMES_60S, **kwargs) -> RunShape:
    return RunShape(
        PRESET, HEIGHT, WIDTH, DTYPE, policy, frames, text_shape=UMT5_XXL, wan_vae=True, **kwargs
    )


@pytest.fixture(scope="module")
def transformer():
    with torch.device("meta"):
        model = WanModel(CONFIG)
    return model.set_dtype(DTYPE).eval()


@pytest.fixture(scope="module")
def counted(transformer):
    """Bytes of the real modules' parameters and buffers, and the decoder's peaks by call size."""
    from diffusers import AutoencoderKLWan
    from transformers import UMT5EncoderModel

    from headforcing.io.wan_vae import WanVAEConfig, WanVAEDecoder

    with torch.device("meta"):
        umt5 = UMT5EncoderModel(UMT5_XXL.to_config()).to(DTYPE)
        vae = AutoencoderKLWan(**WanVAEConfig().diffusers_kwargs())
    decoder_weights = module_bytes(vae.decoder) + module_bytes(vae.post_quant_conv)
    decoder_weights = decoder_weights * 2 // 4  # float32 as built, bf16 on the GPU
    decoder = {}
    for frames_per_call in (None, 1):
        stream = WanVAEDecoder(vae, device="meta", dtype=DTYPE, frames_per_call=frames_per_call)
        worst = 0
        with torch.inference_mode():
            for _ in range(4):  # the first chunk, then the steady state
                cached = [t for t in stream._feat_cache if isinstance(t, torch.Tensor)]
                tracker = PeakBytes(tracked=cached)
                del cached
                latents = torch.zeros(1, 16, 3, HEIGHT // 8, WIDTH // 8, device="meta")
                with tracker:
                    stream.decode_chunk_float(latents.to(DTYPE))
                worst = max(worst, tracker.peak)
        decoder[frames_per_call] = worst
    return {
        "transformer": module_bytes(transformer),
        "umt5": module_bytes(umt5),
        "decoder_weights": decoder_weights,
        "decoder": decoder,
    }


def cache_at(policy, frames):
    """Our KVCache on the meta device after ``frames`` latent frames: the chunk lifecycle
    without passes grows the rings as a run does. A memory's update reads the device, which
    meta cannot: a cache with memories is taken as built, once every ring it has is already
    at its bound (nothing left to grow)."""
    grid = (HEIGHT // 16, WIDTH // 16)
    cache = KVCache(policy, CONFIG, *grid, 3, 21, device="meta", dtype=DTYPE)
    if any(store.memory is not None for store in cache.stores):
        assert all(store.ring_frames == store.ring_bound for store in cache.stores)
        return cache
    while cache.frames_done < frames:
        cache.begin_chunk(min(3, frames - cache.frames_done))
        cache.end_chunk()
    return cache


def pass_peak(transformer, cache) -> int:
    """Peak bytes one DiT pass of a chunk allocates, the prompt's context included."""
    text = torch.zeros(1, CONFIG.text_len, CONFIG.text_dim, device="meta")
    latents = torch.zeros(1, 16, 3, HEIGHT // 8, WIDTH // 8, device="meta")
    with torch.inference_mode():
        tracker = PeakBytes()
        with tracker:
            context = transformer.encode_text(text)
            cache.begin_chunk(3)
            transformer(latents, torch.full((1, 3), 500.0), context, cache.attention())
        held = tensor_bytes([*context.keys, *context.values])
        assert held == context_bytes(CONFIG, DTYPE)
        cache.end_chunk()
    return tracker.peak


@pytest.fixture(scope="module")
def window_run(transformer):
    """The default run (``window`` 21, relative positions, 60 s): its K/V and one pass's peak."""
    policy = make_policy("window", window_frames=21, positions="relative")
    cache = cache_at(policy, FRAMES_60S)
    return policy, cache.bytes_held(), pass_peak(transformer, cache)


@pytest.mark.parametrize("mode", MEMORY_MODES, ids=lambda mode: mode.name)
def test_estimate_of_each_mode_is_the_allocated_bytes(mode, counted, window_run):
    policy, kv, activations = window_run
    estimate = estimate_memory(run_of(policy), mode)
    allocated = {
        "transformer": counted["transformer"],
        "text_encoder": counted["umt5"] if mode.text_on_device else 0,
        "decoder_weights": counted["decoder_weights"],
        "kv": kv,
        "activations": activations,
        "decoder": counted["decoder"][mode.decode_frames_per_call],
    }
    for part, count in allocated.items():
        assert within(getattr(estimate, part), count), (part, getattr(estimate, part), count)
    resident = allocated["transformer"] + allocated["decoder_weights"] + allocated["kv"]
    text = allocated["text_encoder"]
    generating = resident + allocated["activations"] + allocated["decoder"]
    generating += text if mode.keep_text_encoder else 0
    peak = max(generating, resident + text)
    assert within(estimate.total, peak)
    # the numbers docs/real-models.md quotes (pytest -s shows them)
    parts = ", ".join(
        f"{k} {getattr(estimate, k) / GIB:.3f}/{v / GIB:.3f}" for k, v in allocated.items()
    )
    print(
        f"\n{mode.name}: estimate {estimate.total / GIB:.2f} GiB, "
        f"allocated {peak / GIB:.2f} ({parts})"
    )


@pytest.mark.parametrize(
    ("name", "params", "frames"),
    [
        ("sink", {"window_frames": 12, "sink_frames": 3, "positions": "absolute"}, FRAMES_60S),
        ("full", {"positions": "absolute"}, 81),  # 20 s: the ring has doubled past its start
        ("head_forcing", {"positions": "relative"}, FRAMES_60S),
    ],
)
def test_kv_estimate_of_other_policies(name, params, frames):
    policy = make_policy(name, **params)
    if name == "head_forcing":
        policy = policy.with_head_map(random_head_map(CONFIG, preset=PRESET.name))
    estimate = estimate_memory(run_of(policy, frames), MEMORY_MODES[0])
    assert within(estimate.kv, cache_at(policy, frames).bytes_held()), name


def test_a_one_pass_recache_adds_its_transient():
    policy = make_policy("sink", window_frames=12, sink_frames=3, positions="absolute")
    plain = estimate_memory(run_of(policy, switches=True, switch_mode="recache-causal"))
    one_pass = estimate_memory(run_of(policy, switches=True, switch_mode="recache"))
    # 12 frames in one pass and their K/V of 30 layers held until stored: about 3.3 GiB more
    assert 2.5 * GIB < one_pass.activations - plain.activations < 4 * GIB


def test_auto_picks_the_most_generous_mode_that_fits_the_card():
    policy = make_policy("window", window_frames=21, positions="relative")
    run, cuda = run_of(policy), torch.device("cuda")
    picked = {
        card: plan_memory(run, cuda, free=int(free * GIB), device_name=f"{card} GB").mode.name
        for card, free in ((80, 79.0), (24, 23.5), (16, 15.5))
    }
    assert picked == {80: "80gb", 24: "40gb", 16: "16gb"}
    # on a 24 GB card umT5 may visit the GPU for one prompt, but not at a switch: the decoder
    # is at work then, and umT5 stays on the CPU
    switching = dataclasses.replace(run, switches=True, switch_mode="head-aware")
    assert plan_memory(switching, cuda, free=int(23.5 * GIB)).mode.name == "24gb"
    # a longer window on a 40 GB card gets the mode that frees umT5 after encoding
    wide = run_of(make_policy("window", window_frames=60, positions="relative"))
    assert plan_memory(wide, cuda, free=39 * GIB).mode.name == "40gb"


def test_a_mode_that_cannot_fit_the_card_is_refused_in_one_line():
    policy = make_policy("window", window_frames=21, positions="relative")
    cuda = torch.device("cuda")
    with pytest.raises(ValueError) as refused:
        plan_memory(run_of(policy), cuda, "80gb", free=int(15.5 * GIB), device_name="a 16 GB card")
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("--memory-mode 80gb with 832x480 frames, 241 latent frames")
    assert "GiB on a 16 GB card (transformer 2.7, umT5 10.6, VAE 0.14, K/V 5.6" in message
    assert "15.5 GiB are free" in message
    # nothing fits: the leanest mode's numbers and the fixes
    full = run_of(make_policy("full", positions="absolute"))
    with pytest.raises(
        ValueError, match=r"no memory mode fits .* the leanest, 16gb, needs"
    ) as none:
        plan_memory(full, cuda, free=79 * GIB, device_name="an 80 GB card")
    assert "\n" not in str(none.value) and "--policy window" in str(none.value)


def test_the_estimate_scales_with_the_run():
    """Sanity of the parts that are formulas: half the width, half the tokens."""
    policy = make_policy("window", window_frames=21, positions="relative")
    full, half = (
        estimate_memory(dataclasses.replace(run_of(policy), width=width)) for width in (832, 416)
    )
    assert half.kv == pytest.approx(full.kv / 2, rel=0.01)
    assert half.decoder == pytest.approx(full.decoder / 2, rel=0.01)
    assert half.transformer == full.transformer
