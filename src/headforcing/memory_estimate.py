"""The memory a run needs, per part and per memory mode, before anything loads
(:mod:`headforcing.resources` picks the mode).

The estimate counts the tensors a run allocates, from the configs' shapes alone:

- **weights**: the transformer (its float32 norms and modulation included), umT5 when the mode
  puts it on the GPU, the VAE's decoder;
- **K/V**: every head group's buffers as the cache allocates them for the policy at the
  requested length (keys, values, raw temporal bands, token ids, importance; a ring grows by
  doubling up to its bound, ``full``'s without one);
- **activations**: the peak of one DiT pass, inside the FFN (its hidden layer and GELU output in
  the model's dtype, the float32 residual stream and normalised input), and, for a run that can
  switch prompts with a one-pass re-cache, that pass over the re-run frames and the K/V it holds
  until they are stored;
- **decoder**: the Wan VAE's causal cache (kept between calls) and the transient peak of one
  decoder call, both proportional to the pixels (counted on the meta device; the decoder runs
  beside the DiT, so the two peaks add).

The peak is the larger of generating (all of the above) and encoding a prompt (weights, K/V
and umT5 on the GPU; at a prompt switch also the decoder, which works on the chunk before).
Checked against the bytes of the real modules built on the meta device (tests/
test_resources.py). It is a count of tensors: the CUDA caching allocator's fragmentation and
kernel workspaces come on top, which the share of free memory a plan may use
(:data:`headforcing.resources.USABLE_SHARE`) leaves room for.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from headforcing.cache.policy import CachePolicy, HeadMapPolicy
from headforcing.cache.store import ring_allocation
from headforcing.model.config import Preset, WanConfig
from headforcing.model.rope import band_sizes

GIB = 2**30
# bytes per written pixel of a chunk upscaled for display (--scale): two uint8 RGB copies
UPSCALED_BYTES_PER_PIXEL = 6
# bytes per pixel of a decoded chunk, from float32 frames to the encoder's input (measured on
# CPU with the ``tiny`` preset's preview decoder, float32 frames and their copies included)
DECODE_BYTES_PER_PIXEL = 48

# The Wan2.1 VAE's decoder half (diffusers AutoencoderKLWan's ``decoder`` and
# ``post_quant_conv``; the encoder half is never moved to the GPU)
WAN_VAE_DECODER_PARAMETERS = 73_295_603
# Its memory per output pixel (height x width), counted on the meta device at 240x416 and
# 480x832 (the same per pixel): the causal cache of every causal convolution (the last input
# frames, kept between calls) and, per video frame a call makes, the transient peak above it.
# Keyed by the element size of the decoder's dtype (bf16/fp16: 2, float32: 4).
WAN_VAE_CACHE_BYTES_PER_PIXEL = {2: 4729.0, 4: 10632.8}
WAN_VAE_CALL_BYTES_PER_PIXEL_FRAME = {2: 1348.1, 4: 2206.4}

# the one-pass re-cache modes of headforcing.switch (imported there; a string here keeps this
# module free of the model code)
ONE_PASS_SWITCHES = ("recache", "recache-new-sink")


@dataclass(frozen=True)
class MemoryMode:
    """Where the big parts of a run live (see the module docstring).

    ``text_on_device``: umT5 on the run's GPU (else the CPU); ``keep_text_encoder``: kept loaded
    between prompts (else freed after each and read again at a switch);
    ``decode_frames_per_call``: latent frames per VAE decoder call (``None``: a whole chunk).
    """

    name: str
    card_gib: int
    text_on_device: bool
    keep_text_encoder: bool
    decode_frames_per_call: int | None
    summary: str


MEMORY_MODES: tuple[MemoryMode, ...] = (
    MemoryMode("80gb", 80, True, True, None, "umT5 on the GPU, kept loaded"),
    MemoryMode("40gb", 40, True, False, None, "umT5 on the GPU while it encodes, then freed"),
    MemoryMode("24gb", 24, False, True, None, "umT5 on the CPU"),
    MemoryMode("16gb", 16, False, True, 1, "umT5 on the CPU, the VAE one latent frame per call"),
)
MODE_NAMES = tuple(mode.name for mode in MEMORY_MODES)


def get_mode(name: str) -> MemoryMode:
    for mode in MEMORY_MODES:
        if mode.name == name:
            return mode
    raise ValueError(f"--memory-mode {name!r}: give auto or one of {', '.join(MODE_NAMES)}")


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of a run's tensors on its device, by part (see the module docstring)."""

    transformer: int
    text_encoder: int  # on the device while it encodes (0 when on the CPU)
    text_resident: bool  # whether it stays there while the video is generated
    decoder_weights: int
    kv: int
    activations: int
    decoder: int
    policy: str = ""
    # prompts can switch: the text encoder, read again at a switch, meets the decoder at work
    switches: bool = False

    @property
    def weights(self) -> int:
        return self.transformer + self.text_encoder + self.decoder_weights

    @property
    def generating(self) -> int:
        resident = self.transformer + self.decoder_weights + self.kv
        text = self.text_encoder if self.text_resident else 0
        return resident + text + self.activations + self.decoder

    @property
    def encoding(self) -> int:
        """Encoding a prompt: the first before any decoding, a later one (a switch, with the
        encoder read again) while the decoder works on the chunk before it."""
        encoding = self.transformer + self.decoder_weights + self.kv + self.text_encoder
        if self.switches and not self.text_resident:
            encoding += self.decoder
        return encoding

    @property
    def total(self) -> int:
        """The peak: generating or encoding a prompt, whichever is larger."""
        return max(self.generating, self.encoding)

    def parts(self) -> str:
        text = ""
        if self.text_encoder:
            when = "" if self.text_resident else " while it encodes"
            text = f"umT5 {self.text_encoder / GIB:.1f}{when}, "
        return (
            f"transformer {self.transformer / GIB:.1f}, {text}VAE {self.decoder_weights / GIB:.2f}"
            f", K/V {self.kv / GIB:.1f} ({self.policy}), activations "
            f"{self.activations / GIB:.2f}, decoder {self.decoder / GIB:.1f}"
        )


# ---------------------------------------------------------------------------------- the parts


def element_size(dtype: torch.dtype) -> int:
    return torch.finfo(dtype).bits // 8


def transformer_bytes(config: WanConfig, dtype: torch.dtype) -> int:
    """Bytes of the transformer's parameters: every linear, norm and embedding, with the time
    embedding, the modulation and ``norm3`` in float32 (as :meth:`WanModel.set_dtype`)."""
    dim, ffn = config.dim, config.ffn_dim
    patch = config.patch_size[0] * config.patch_size[1] * config.patch_size[2]

    def linear(inputs: int, outputs: int) -> int:
        return inputs * outputs + outputs

    attention = 4 * linear(dim, dim) + 2 * dim  # q, k, v, o and the q/k RMS norms
    block = 2 * attention + linear(dim, ffn) + linear(ffn, dim)
    main = (
        config.num_layers * block
        + config.in_channels * patch * dim
        + dim  # patch embedding
        + linear(config.text_dim, dim)
        + linear(dim, dim)  # text embedding
        + linear(dim, config.out_channels * patch)  # head
    )
    float32 = (
        config.num_layers * (6 * dim + 2 * dim)  # modulation, norm3
        + linear(config.freq_dim, dim)
        + linear(dim, dim)  # time embedding
        + linear(dim, 6 * dim)  # time projection
        + 2 * dim  # head modulation
    )
    return main * element_size(dtype) + float32 * 4


def umt5_bytes(shape, dtype: torch.dtype) -> int:
    """Bytes of a umT5 encoder (:class:`headforcing.io.umt5.UMT5Shape`): embedding, per layer
    attention (q, k, v, o), gated FFN (two inputs, one output), two RMS norms and its own
    relative-position table, and the final norm."""
    layer = (
        4 * shape.dim * shape.dim_attn
        + 3 * shape.dim * shape.dim_ffn
        + 2 * shape.dim
        + shape.num_buckets * shape.num_heads
    )
    parameters = shape.vocab_size * shape.dim + shape.num_layers * layer + shape.dim
    return parameters * element_size(dtype)


def ring_frames(retention, chunk_frames: int, num_frames: int) -> int:
    """Frame slots of a group's ring at ``num_frames`` (it grows by doubling, up to its bound)."""
    bound = None if retention.recent_frames is None else retention.recent_frames + chunk_frames
    return ring_allocation(bound, max(num_frames - retention.sink_frames, 0))


def kv_bytes(
    policy: CachePolicy,
    config: WanConfig,
    tokens_per_frame: int,
    chunk_frames: int,
    num_frames: int,
    dtype: torch.dtype,
) -> int:
    """Bytes the cache holds for ``policy`` once ``num_frames`` latent frames are made."""
    element = element_size(dtype)
    band = band_sizes(config.head_dim)[0]
    total = 0
    for layer in range(config.num_layers):
        for spec in policy.head_groups(layer, config.num_heads, chunk_frames):
            rule, heads = spec.rule, len(spec.heads)
            memory = rule.memory.capacity(tokens_per_frame) if rule.memory is not None else 0
            replaced = rule.sink_frames * tokens_per_frame + memory
            ring = ring_frames(rule, chunk_frames, num_frames) * tokens_per_frame
            capacity = replaced + ring
            total += 2 * heads * capacity * config.head_dim * element  # keys, values
            total += capacity * 4  # token ids
            if rule.memory is not None and rule.memory.importance_decay is not None:
                total += capacity * 4
            if rule.positions == "relative" and replaced:
                total += heads * replaced * band * element  # raw temporal bands
    return total


def pass_bytes(config: WanConfig, tokens: int, dtype: torch.dtype) -> int:
    """Peak activations of one DiT pass over ``tokens`` tokens: inside the FFN, its hidden layer
    and GELU output (model dtype), the float32 residual stream and normalised input and the
    latter's cast to the model dtype."""
    element = element_size(dtype)
    return tokens * (2 * config.ffn_dim * element + config.dim * (8 + element))


def context_bytes(config: WanConfig, dtype: torch.dtype) -> int:
    """The prompt's cross-attention keys and values of every layer."""
    return 2 * config.num_layers * config.text_len * config.dim * element_size(dtype)


def wan_vae_decode_bytes(height: int, width: int, frames_per_call: int, dtype) -> int:
    """The Wan VAE decoder's causal cache and one call's transient peak, ``frames_per_call``
    latent frames a call (4 video frames each)."""
    element = element_size(dtype)
    pixels = height * width
    cache = WAN_VAE_CACHE_BYTES_PER_PIXEL[element]
    call = WAN_VAE_CALL_BYTES_PER_PIXEL_FRAME[element] * 4 * frames_per_call
    return round(pixels * (cache + call))


def attention_frames(
    policy: CachePolicy, config: WanConfig, chunk_frames: int, num_frames: int
) -> int:
    """Frames a re-cache re-runs: the widest span of any group (chunk and sink included), at
    most the frames made."""
    spans = [
        spec.rule.attention_span(chunk_frames)
        for layer in range(config.num_layers)
        for spec in policy.head_groups(layer, config.num_heads, chunk_frames)
    ]
    return num_frames if None in spans else min(max(spans), num_frames)


def recache_bytes(
    policy: CachePolicy,
    config: WanConfig,
    tokens_per_frame: int,
    chunk_frames: int,
    num_frames: int,
    dtype: torch.dtype,
) -> int:
    """A one-pass re-cache's transient: its pass over the re-run frames and their K/V (and q,
    for memories that score by attention) of every layer, held until they are stored."""
    frames = attention_frames(policy, config, chunk_frames, num_frames)
    scored = any(
        spec.rule.memory is not None and spec.rule.memory.importance_decay is not None
        for layer in range(config.num_layers)
        for spec in policy.head_groups(layer, config.num_heads, chunk_frames)
    )
    tokens = frames * tokens_per_frame
    held = (3 if scored else 2) * config.num_layers * tokens * config.dim * element_size(dtype)
    return pass_bytes(config, tokens, dtype) + held


# ------------------------------------------------------------------------------- the estimate


@dataclass(frozen=True)
class RunShape:
    """What a run will hold: the preset at a frame size, the policy and length, the dtype,
    whether it can switch prompts and with which switch mode."""

    preset: Preset
    height: int
    width: int
    dtype: torch.dtype
    policy: CachePolicy
    num_frames: int
    switches: bool = False
    switch_mode: str | None = None
    # real weights: the umT5 encoder's shape (headforcing.io.umt5.UMT5Shape) and dtype, and
    # the Wan VAE (else the preset's stand-ins: hashed text, the linear preview decoder)
    text_shape: object = None
    text_dtype: torch.dtype = torch.bfloat16
    wan_vae: bool = False
    # the frames written at scale x scale pixels per pixel (--scale)
    scale: int = 1

    @property
    def tokens_per_frame(self) -> int:
        video, (_, patch_h, patch_w) = self.preset.video, self.preset.model.patch_size
        return (self.height // video.vae_stride[1] // patch_h) * (
            self.width // video.vae_stride[2] // patch_w
        )


def estimate_memory(run: RunShape, mode: MemoryMode = MEMORY_MODES[0]) -> MemoryEstimate:
    """The bytes ``run`` needs on its device in ``mode``."""
    config, video = run.preset.model, run.preset.video
    chunk, tokens = video.chunk_frames, run.tokens_per_frame
    policy = run.policy
    if isinstance(policy, HeadMapPolicy) and policy.head_map is None:
        # no map yet (profiled at the start of the run): every head within the trained range
        from headforcing.cache.policies import WindowPolicy

        policy = WindowPolicy(window_frames=video.trained_frames, positions=policy.positions)
    kv = kv_bytes(policy, config, tokens, chunk, run.num_frames, run.dtype)

    activations = pass_bytes(config, chunk * tokens, run.dtype)
    if run.switches and run.switch_mode in ONE_PASS_SWITCHES:
        recache = recache_bytes(policy, config, tokens, chunk, run.num_frames, run.dtype)
        activations = max(activations, recache)
    activations += context_bytes(config, run.dtype)

    if run.wan_vae:
        decoder_weights = WAN_VAE_DECODER_PARAMETERS * element_size(run.dtype)
        frames = mode.decode_frames_per_call or chunk
        decoder = wan_vae_decode_bytes(run.height, run.width, frames, run.dtype)
    else:
        decoder_weights = 0
        pixels = chunk * video.vae_stride[0] * run.height * run.width
        decoder = DECODE_BYTES_PER_PIXEL * pixels
    if run.scale > 1:
        pixels = chunk * video.vae_stride[0] * run.height * run.width
        decoder += UPSCALED_BYTES_PER_PIXEL * pixels * run.scale**2
    text = 0
    if run.text_shape is not None and mode.text_on_device:
        text = umt5_bytes(run.text_shape, run.text_dtype)
    return MemoryEstimate(
        transformer=transformer_bytes(config, run.dtype),
        text_encoder=text,
        text_resident=mode.keep_text_encoder,
        decoder_weights=decoder_weights,
        kv=kv,
        activations=activations,
        decoder=decoder,
        policy=run.policy.describe(),
        switches=run.switches,
    )
