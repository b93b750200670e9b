"""The generation pipeline: prompt -> text context -> AR chunks -> decoded frames, as a stream.

``Pipeline.stream`` is a generator: the CLI, a file writer and a live preview all consume the same
chunks as they are made. It reads like the method: encode the prompt once; for each chunk,
denoise, commit the clean K/V, decode.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, replace

import torch

from headforcing.cache import CachePolicy, KVCache
from headforcing.cache.kv import contiguous_groups
from headforcing.cache.policy import HeadMapPolicy
from headforcing.heads.headmap import HeadMap
from headforcing.interrupts import deferred_interrupt
from headforcing.io.decoders import LatentDecoder, PreviewDecoder
from headforcing.io.text import HashedTextEncoder, TextEncoder
from headforcing.model import Preset, WanModel, get_preset
from headforcing.sampling import FlowSchedule, LatentChunk, generate_chunks
from headforcing.schedule import PromptSchedule, PromptSource
from headforcing.speed import Span, mark
from headforcing.switch import PromptSwitcher

# torch.compile modes of ``--compile``: reduce-overhead replays each pass as a CUDA graph
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")

SIZE_MULTIPLE = 16  # VAE stride 8 x patch 2
# ~12 days of video at 16 fps: beyond any run, and far from integer overflow in positions
MAX_LATENT_FRAMES = 2**22


@dataclass(frozen=True)
class VideoChunk:
    """One finished chunk: latents ``[B, C, F, h, w]``, frames ``[B, F_pix, H, W, 3]`` uint8,
    the cache's state after committing it, the prompt that drove it, the seconds of the
    transformer's work on it (:mod:`headforcing.speed`) and the host's clock when that began."""

    first_frame: int
    latents: torch.Tensor
    frames: torch.Tensor
    kv_bytes: int
    max_position: int
    prompt: str = ""
    dit_seconds: float = 0.0
    started_at: float = 0.0


@dataclass(frozen=True)
class Video:
    """A whole video (:meth:`Pipeline.generate`): ``frames [F, H, W, 3]`` uint8, ``latents
    [1, C, f, h, w]``, its ``fps``, the ``record`` of what made it (the one stored in every
    MP4 the CLI writes) and the head map the policy used (``None``: it needs none)."""

    frames: torch.Tensor
    latents: torch.Tensor
    fps: int
    record: dict
    head_map: HeadMap | None = None
    chunk_lengths: tuple[int, ...] = ()  # pixel frames of every chunk, in order

    def save(self, path, *, overwrite: bool = False, scale: int = 1):
        """Write the frames to an MP4 at ``path`` (H.264, the run record stored in it, as
        the CLI writes them; ``scale``: every pixel as a ``scale`` x ``scale`` block)."""
        from headforcing.io.video import VideoWriter

        with VideoWriter(
            path, self.fps, overwrite=overwrite, scale=scale, metadata=self.record
        ) as writer:
            # chunk by chunk, as the CLI writes: the same fragments, the same encoding
            for chunk in self.frames.split(list(self.chunk_lengths) or [len(self.frames)]):
                writer.write(chunk)
        return writer.path


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
        use it when no map is given or stored, instead of profiling one before the run.
    real_weights:
        The networks are a real model's (``--model``), not a built-in small or random one:
        its videos are written at the size they are made (``--scale auto`` is 1).
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
        real_weights: bool = False,
    ) -> None:
        self.preset = preset
        self.real_weights = real_weights
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
        self.runner: Callable[..., torch.Tensor] = model  # the passes: the model or compiled
        self.compile_mode: str | None = None
        # one stream over several ranks by heads (headforcing.distributed.heads.HeadParallel):
        # this rank's caches hold its heads, and every pass and re-cache goes through it
        self.parallel = None

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

    @classmethod
    def toy(cls, device: torch.device | str = "cpu") -> Pipeline:
        """The toy-world model that ships with the package (32x32 frames, toy-world prompts:
        docs/toyworld.md), trained here on a CPU; the CLI's default model."""
        from headforcing.toyworld.pretrained import load_toy_pipeline

        return load_toy_pipeline(device)

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

    def compile(self, mode: str = "default") -> Pipeline:
        """Run the denoising and commit passes through ``torch.compile`` (the transformer with
        attention through the cache; profiling passes stay eager), and every later cache's
        end of chunk (:meth:`KVCache.compile_end_chunk`). ``mode``: one of
        :data:`COMPILE_MODES`; ``reduce-overhead`` replays them as CUDA graphs, over cache
        buffers marked static (:meth:`KVCache.mark_static`)."""
        if mode not in COMPILE_MODES:
            raise ValueError(f"compile mode {mode!r}: one of {', '.join(COMPILE_MODES)}")
        self.compile_mode = mode
        self.runner = torch.compile(self.model, mode=None if mode == "default" else mode)
        return self

    def new_cache(self, policy: CachePolicy, permute: bool = True) -> KVCache:
        """A cache for ``policy``; the model's heads are permuted once (if needed, unless
        ``permute`` is false: several caches sharing one model) so that every head group is a
        contiguous slice. Head-parallel: this rank's heads only."""
        if self.parallel is not None:
            return self.parallel.new_cache(policy)
        config, chunk_frames = self.preset.model, self.preset.video.chunk_frames
        contiguous = contiguous_groups(policy, config, chunk_frames, self.model.head_order)
        if permute and not contiguous:
            order = policy.head_order(config.num_layers, config.num_heads, chunk_frames)
            self.model.set_head_order(order)
        cache = KVCache(
            policy,
            config,
            *self.token_grid,
            chunk_frames,
            self.preset.video.trained_frames,
            device=self.model.device,
            dtype=self.model.dtype,
            head_order=self.model.head_order,
        )
        if self.compile_mode is not None:
            if self.compile_mode == "reduce-overhead":
                cache.mark_static()
            mode = None if self.compile_mode == "default" else self.compile_mode
            cache.compile_end_chunk(mode=mode, fullgraph=True)
        return cache

    def calibrate(self, prompt: str | PromptSource, seed: int = 0) -> HeadMap:
        """Profile the heads in one short rollout of the first prompt (the trained window,
        chunks 3-6, :class:`~headforcing.heads.profile.ProfileSettings`), for a
        ``head_forcing`` run that has no head map. Its noise comes from its own generator: the
        video that follows is the same as with that map given."""
        from headforcing.heads.profile import profile_heads

        first = prompt if isinstance(prompt, str) else prompt.prompt_at(0)
        return profile_heads(self, [first], seed=seed, before_run=True)

    def generate_latents(
        self,
        prompt: str | PromptSource,
        num_frames: int,
        cache: KVCache,
        seed: int = 0,
        switch: str | None = None,
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
            self.parallel or self.model,
            cache,
            switch or cache.policy.default_switch,
            keep_history=not fixed or len(prompt.segments) > 1,
        )
        generator = torch.Generator().manual_seed(seed)
        device = self.model.device
        text = context = None
        while cache.frames_done < num_frames:
            # inference mode for the work, never across a yield: a consumer interleaving two
            # streams (or suspending one) would otherwise leave it switched on or off
            with torch.inference_mode():
                # the prompt can only change here, between two chunks
                asked = prompt.prompt_at(cache.frames_done)
                switching = asked != text
                if switching:
                    context = self.model.encode_text(self.text_encoder.encode([asked]))
                # the transformer's work on this chunk: a re-cache, the passes
                began, start = time.perf_counter(), mark(device)
                if switching:
                    if text is not None:
                        switcher.apply(context)
                    text = asked
                end = min(cache.frames_done + cache.chunk_frames, num_frames)
                runner = self.model if cache.observers else (self.parallel or self.runner)
                (chunk,) = generate_chunks(
                    runner, cache, context, end, self.latent_shape, generator, self.schedule
                )
                span = Span(start, mark(device), began)
                switcher.remember(chunk)
            yield replace(chunk, prompt=text, span=span)

    def generate(
        self,
        prompt: str | PromptSource,
        *,
        seconds: float | None = None,
        latent_frames: int | None = None,
        policy: CachePolicy | str = "head_forcing",
        seed: int = 0,
        switch: str | None = None,
    ) -> Video:
        """A whole video of ``seconds`` (or ``latent_frames``; default 5 s) for ``prompt``
        (one prompt, or a :class:`~headforcing.schedule.PromptSchedule`) with ``policy`` (an
        object or a name); see :meth:`stream`, which this collects. Same seed, same frames.
        """
        from headforcing.cache.policies import make_policy
        from headforcing.io.provenance import run_metadata

        if seconds is not None and latent_frames is not None:
            raise ValueError("give seconds or latent_frames, not both")
        num_frames = latent_frames or self.latent_frames(5.0 if seconds is None else seconds)
        if isinstance(policy, str):
            policy = make_policy(policy)
        maps: list[HeadMap] = []
        chunks = list(self.stream(prompt, num_frames, policy, seed, maps.append, switch))
        head_map = maps[0] if maps else getattr(policy, "head_map", None)
        if maps:
            policy = policy.with_head_map(head_map)
        return Video(
            frames=torch.cat([chunk.frames for chunk in chunks], dim=1)[0],
            latents=torch.cat([chunk.latents for chunk in chunks], dim=2),
            fps=self.preset.video.fps,
            record=run_metadata(self, prompt, seed, policy, num_frames),
            head_map=head_map,
            chunk_lengths=tuple(chunk.frames.shape[1] for chunk in chunks),
        )

    def stream(
        self,
        prompt: str | PromptSource,
        num_frames: int,
        policy: CachePolicy,
        seed: int = 0,
        on_head_map: Callable[[HeadMap], None] | None = None,
        switch: str | None = None,
        write: Callable[[VideoChunk], None] | None = None,
    ) -> Iterator[VideoChunk]:
        """Generate ``num_frames`` latent frames for ``prompt``, yielding decoded chunks.

        ``prompt`` and ``switch``: one prompt or a prompt source, see :meth:`generate_latents`.

        A policy that needs a head map (``head_forcing``, ...) and has none first profiles the
        heads in a short calibration rollout (:meth:`calibrate`) and hands the map to
        ``on_head_map`` (to store it for later runs): every head type keeps its own tokens from
        the first chunk on, and a
        later run with the stored map makes the same video.

        Decoding runs in a worker thread (on CUDA, on its own stream) one chunk behind the
        generation: the DiT makes chunk ``n + 1`` while chunk ``n`` is decoded, and ``write``
        (a video writer's) runs there too, right after each chunk's decode, in order. However
        the stream ends (exhausted, closed, an exception, Ctrl-C), the chunk in the worker is
        decoded and written before the generator returns.
        """
        # prepare input
        if isinstance(policy, HeadMapPolicy) and policy.head_map is None:
            head_map = self.calibrate(prompt, seed)
            if on_head_map is not None:
                on_head_map(head_map)
            policy = policy.with_head_map(head_map)
        cache = self.new_cache(policy)
        self.decoder.reset()
        device = self.model.device
        side = torch.cuda.Stream(device) if device.type == "cuda" else None

        def decode(chunk: LatentChunk, ready, kv_bytes: int, max_position) -> VideoChunk:
            with torch.inference_mode(), torch.cuda.stream(side) if side else nullcontext():
                if side is not None:
                    side.wait_event(ready)
                    chunk.latents.record_stream(side)
                frames = self.decoder.decode_chunk(chunk.latents)
                position = int(max_position)
            decoded = VideoChunk(
                chunk.first_frame,
                chunk.latents,
                frames,
                kv_bytes,
                position,
                chunk.prompt,
                dit_seconds=chunk.span.seconds(),
                started_at=chunk.span.began,
            )
            if write is not None:
                write(decoded)
            return decoded

        # denoise chunk by chunk; decode (and write) each finished chunk beside the next one
        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode")
        try:
            pending = None
            for chunk in self.generate_latents(prompt, num_frames, cache, seed, switch):
                ready = None
                if side is not None:
                    ready = torch.cuda.Event()
                    ready.record()
                decoded = worker.submit(
                    decode, chunk, ready, cache.bytes_held(), cache.position_record
                )
                if pending is not None:
                    yield pending.result()
                pending = decoded
            if pending is not None:
                yield pending.result()
        finally:
            # however the stream ends, the chunk in the worker is finished (a stop signal
            # meanwhile waits: the writer must not be closed under it)
            with deferred_interrupt():
                worker.shutdown(wait=True)
