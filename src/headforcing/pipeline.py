"""The generation pipeline: prompt -> text context -> AR chunks -> decoded frames, as a stream.

``Pipeline.stream`` is a generator: the CLI, a file writer and a live preview all consume the same
chunks as they are made. It reads like the method: encode the prompt once; for each chunk,
denoise, commit the clean K/V, decode.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch

from headforcing.cache import CachePolicy, KVCache
from headforcing.cache.policies import HeadForcingPolicy
from headforcing.heads.headmap import HeadMap
from headforcing.heads.profile import HeadProfiler, ProfileSettings
from headforcing.io.decoders import LatentDecoder, PreviewDecoder
from headforcing.io.text import HashedTextEncoder, TextEncoder
from headforcing.model import Preset, WanModel, get_preset
from headforcing.sampling import FlowSchedule, LatentChunk, generate_chunks
from headforcing.schedule import PromptSchedule, PromptSource
from headforcing.switch import PromptSwitcher

SIZE_MULTIPLE = 16  # VAE stride 8 x patch 2

# Online profiling of a head_forcing run without a head map: chunks 3-6 (frames 9-20, inside
# the trained window, where the warm-up group keeps everything), 64 query rows per pass,
# denoising passes; then the percentile rule. The map is fixed from chunk 7 on.
ONLINE_PROFILE = ProfileSettings()


@dataclass(frozen=True)
class VideoChunk:
    """One finished chunk: latents ``[B, C, F, h, w]``, frames ``[B, F_pix, H, W, 3]`` uint8,
    the cache's state after committing it, and the prompt that drove it."""

    first_frame: int
    latents: torch.Tensor
    frames: torch.Tensor
    kv_bytes: int
    max_position: int
    prompt: str = ""


def latent_frames_for_seconds(seconds: float, fps: int = 16, temporal_stride: int = 4) -> int:
    """Latent frames whose decoded video lasts at least ``seconds`` (5 s -> 21 at 16 fps)."""
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    return math.ceil((seconds * fps - 1) / temporal_stride) + 1


def check_size(height: int, width: int) -> None:
    for name, value in (("height", height), ("width", width)):
        if value < SIZE_MULTIPLE or value % SIZE_MULTIPLE:
            lower = max(SIZE_MULTIPLE, value // SIZE_MULTIPLE * SIZE_MULTIPLE)
            raise ValueError(
                f"{name} {value} is not a positive multiple of {SIZE_MULTIPLE} "
                f"(VAE stride 8 x patch 2); try {lower} or {lower + SIZE_MULTIPLE}"
            )


def random_model(preset: Preset, seed: int = 0, device="cpu", dtype=torch.float32) -> WanModel:
    """The preset's transformer with seeded random weights (tests, benchmarks, ``tiny``)."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        with device:
            model = WanModel(preset.model)
    return model.set_dtype(dtype).eval()


class Pipeline:
    """Text encoder + transformer + sampler + decoder for one preset and resolution.

    Parameters
    ----------
    preset:
        Model and video configuration.
    model, text_encoder, decoder:
        The three networks; see :meth:`tiny` for the stand-ins of the ``tiny`` preset.
    height, width:
        Output size in pixels, multiples of 16.
    schedule:
        The few-step sampler schedule (default: the preset's).
    weights_id:
        Names the weights (a checkpoint fingerprint): head maps are stored under it.
    head_map:
        A head map that comes with the weights (the toy model ships one): ``head_forcing`` runs
        use it when no map is given or stored, instead of profiling online.
    """

    def __init__(
        self,
        preset: Preset,
        model: WanModel,
        text_encoder: TextEncoder,
        decoder: LatentDecoder,
        *,
        height: int | None = None,
        width: int | None = None,
        schedule: FlowSchedule | None = None,
        weights_id: str = "unnamed",
        head_map: HeadMap | None = None,
    ) -> None:
        self.preset = preset
        self.weights_id = weights_id
        self.head_map = head_map
        self.model = model
        self.text_encoder = text_encoder
        self.decoder = decoder
        self.height = height or preset.video.height
        self.width = width or preset.video.width
        check_size(self.height, self.width)
        video = preset.video
        self.schedule = schedule or FlowSchedule(video.sampler_steps, video.sampler_shift)

    @classmethod
    def with_standins(
        cls,
        preset_name: str = "tiny",
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        height: int | None = None,
        width: int | None = None,
    ) -> Pipeline:
        """A preset with random weights, hashed-word text embeddings and the linear preview
        decoder: runs anywhere, shows the mechanics, not a trained model."""
        preset = get_preset(preset_name)
        config = preset.model
        return cls(
            preset,
            random_model(preset, device=device, dtype=dtype),
            HashedTextEncoder(config.text_len, config.text_dim),
            PreviewDecoder(
                config.in_channels,
                spatial_stride=preset.video.vae_stride[1],
                temporal_stride=preset.video.vae_stride[0],
            ),
            height=height,
            width=width,
            weights_id="random-seed0",
        )

    def latent_frames(self, seconds: float) -> int:
        """Latent frames whose decoded video lasts at least ``seconds`` at the preset's fps."""
        video = self.preset.video
        return latent_frames_for_seconds(seconds, video.fps, video.vae_stride[0])

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(C, h, w)`` of one latent frame."""
        stride = self.preset.video.vae_stride[1]
        return self.preset.model.in_channels, self.height // stride, self.width // stride

    @property
    def token_grid(self) -> tuple[int, int]:
        _, height, width = self.latent_shape
        _, patch_h, patch_w = self.preset.model.patch_size
        return height // patch_h, width // patch_w

    def new_cache(self, policy: CachePolicy) -> KVCache:
        return KVCache(
            policy,
            self.preset.model,
            *self.token_grid,
            self.preset.video.chunk_frames,
            self.preset.video.trained_frames,
            device=self.model.device,
            dtype=self.model.dtype,
        )

    def generate_latents(
        self,
        prompt: str | PromptSource,
        num_frames: int,
        cache: KVCache,
        seed: int = 0,
        switch: str = "head-aware",
    ) -> Iterator[LatentChunk]:
        """The AR chunk loop on ``cache``, yielding latent chunks (no decoding).

        ``prompt``: one prompt, or a source asked before every chunk (a
        :class:`~headforcing.schedule.PromptSchedule`, the live prompt of interactive mode).
        When its answer changes, the new context applies from that chunk on and ``switch``
        says what happens to the cached K/V (:mod:`headforcing.switch`). One prompt gives the
        same video as ever: the noise is drawn in the same order.
        """
        if num_frames < 1:
            raise ValueError(f"the number of latent frames must be >= 1, got {num_frames}")
        if isinstance(prompt, str):
            if not prompt.strip():
                raise ValueError("the prompt is empty")
            prompt = PromptSchedule.single(prompt)
        fixed = isinstance(prompt, PromptSchedule)
        if fixed:
            prompt.check_length(num_frames)
        switcher = PromptSwitcher(
            self.model, cache, switch, keep_history=not fixed or len(prompt.segments) > 1
        )
        with torch.inference_mode():
            generator = torch.Generator().manual_seed(seed)
            text = context = None
            while cache.frames_done < num_frames:
                # the prompt can only change here, between two chunks
                asked = prompt.prompt_at(cache.frames_done)
                if asked != text:
                    context = self.model.encode_text(self.text_encoder.encode([asked]))
                    if text is not None:
                        switcher.apply(context)
                    text = asked
                end = min(cache.frames_done + cache.chunk_frames, num_frames)
                for chunk in generate_chunks(
                    self.model, cache, context, end, self.latent_shape, generator, self.schedule
                ):
                    switcher.remember(chunk)
                    yield replace(chunk, prompt=text)

    def stream(
        self,
        prompt: str | PromptSource,
        num_frames: int,
        policy: CachePolicy,
        seed: int = 0,
        on_head_map: Callable[[HeadMap], None] | None = None,
        switch: str = "head-aware",
    ) -> Iterator[VideoChunk]:
        """Generate ``num_frames`` latent frames for ``prompt``, yielding decoded chunks.

        ``prompt`` and ``switch``: one prompt or a prompt source, see :meth:`generate_latents`.

        A ``head_forcing`` policy without a head map profiles the heads online during the
        first chunks (:data:`ONLINE_PROFILE`), then fixes the map, regroups the cache and hands
        the map to ``on_head_map`` (to save it for later runs).
        """
        # prepare input
        cache = self.new_cache(policy)
        profiler = None
        if isinstance(policy, HeadForcingPolicy) and policy.head_map is None:
            config = self.model.config
            chunk_frames = self.preset.video.chunk_frames
            profiler = HeadProfiler(
                config.num_layers, config.num_heads, chunk_frames, ONLINE_PROFILE
            )
            cache.observers.append(profiler)
            profiled_frames = (max(ONLINE_PROFILE.chunks) + 1) * chunk_frames
        self.decoder.reset()
        prompts_seen: list[str] = []
        # denoise chunk by chunk, then decode each chunk as it is done
        for chunk in self.generate_latents(prompt, num_frames, cache, seed, switch):
            if chunk.prompt not in prompts_seen:
                prompts_seen.append(chunk.prompt)
            if profiler is not None and cache.frames_done >= profiled_frames:
                calibration = {
                    "online": True,
                    "prompts": prompts_seen,
                    "token_grid": list(self.token_grid),
                    "seed": seed,
                }
                head_map = profiler.head_map(self.preset.name, calibration=calibration)
                cache.observers.remove(profiler)
                cache.regroup(policy.with_head_map(head_map))
                profiler = None
                if on_head_map is not None:
                    on_head_map(head_map)
            with torch.inference_mode():
                frames = self.decoder.decode_chunk(chunk.latents)
            yield VideoChunk(
                chunk.first_frame,
                chunk.latents,
                frames,
                cache.bytes_held(),
                cache.max_position,
                chunk.prompt,
            )
