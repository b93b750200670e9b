"""Speed and memory of the cache policies: ms per chunk, frames/s, K/V bytes and host reads by
video length.

To measure chunk k of a long video without generating the k - 1 chunks before it, the cache is
fast-forwarded through its own API: every earlier chunk is committed layer by layer with random
q/k/v (real attention, real commits, no MLPs), so the policy holds exactly what it would hold.
Timing then covers whole chunks at that length: ``begin_chunk``, four denoising passes, the
commit pass and ``end_chunk``, with random weights (speed does not depend on their values). One
more chunk runs under :class:`~headforcing.hostsync.DispatchCounter` (untimed: the counter
slows every call) for the backend ATen ops and the host reads per chunk: on the
``wan-skeleton`` preset (Wan's 30 layers x 12 heads, negligible arithmetic) the ops and the
host ms are the launch-overhead proxy for a GPU, on ``cpu-bench`` the ms the arithmetic one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from headforcing.cache import CachePolicy, KVCache
from headforcing.hostsync import DispatchCounter
from headforcing.pipeline import Pipeline


@dataclass(frozen=True)
class BenchRow:
    policy: str
    seconds: float
    latent_frames: int
    context_frames: float
    ms_per_pass: float
    ms_per_chunk: float
    frames_per_second: float
    kv_bytes: int
    syncs_per_chunk: int = 0
    ops_per_chunk: int = 0  # backend ATen ops (hostsync.DispatchCounter)
    peak_gib: float | None = None  # CUDA only: peak allocated memory while timing
    note: str = ""
    # with the decoder beside the DiT (as Pipeline.stream runs it): the slower of the two
    end_to_end_frames_per_second: float | None = None

    @property
    def kv_megabytes(self) -> float:
        return self.kv_bytes / 2**20


def fast_forward(cache: KVCache, num_frames: int, num_heads: int, head_dim: int) -> None:
    """Commit random chunks until ``num_frames`` frames are in the cache."""
    while cache.frames_done < num_frames:
        chunk = cache.begin_chunk(min(cache.chunk_frames, num_frames - cache.frames_done))
        shape = (cache.batch, chunk.num_tokens, num_heads, head_dim)
        for layer in range(len(cache.layers)):
            q, k, v = (torch.randn(shape, device=cache.device, dtype=cache.dtype) for _ in range(3))
            cache.attend(layer, q, k, v, commit=True)
        cache.end_chunk()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def estimated_full_bytes(pipeline: Pipeline, frames: int) -> int:
    """K/V bytes a ``full`` cache holds at ``frames`` (stored keys, read keys, values)."""
    config = pipeline.model.config
    tokens = frames * pipeline.token_grid[0] * pipeline.token_grid[1]
    element = torch.finfo(pipeline.model.dtype).bits // 8
    return 3 * tokens * config.num_layers * config.dim * element


def bench_policy(
    pipeline: Pipeline, policy: CachePolicy, seconds: float, timed_chunks: int = 2
) -> BenchRow:
    """Time ``timed_chunks`` chunks after fast-forwarding to ``seconds`` of video."""
    model, device, runner = pipeline.model, pipeline.model.device, pipeline.runner
    config = model.config
    frames = pipeline.latent_frames(seconds)
    chunk_frames = pipeline.preset.video.chunk_frames
    cache = pipeline.new_cache(policy)
    start_frame = max(0, frames - (timed_chunks + 2) * chunk_frames)
    context = model.encode_text(
        torch.zeros(1, config.text_len, config.text_dim, device=device, dtype=model.dtype)
    )
    channels, height, width = pipeline.latent_shape
    x = torch.randn(1, channels, chunk_frames, height, width, device=device, dtype=model.dtype)
    t = torch.full((1, chunk_frames), 500.0, device=device)

    def run_chunk() -> float:
        """One whole chunk; returns ms of its first denoising pass."""
        cache.begin_chunk(chunk_frames)
        _sync(device)
        began = time.perf_counter()
        runner(x, t, context, cache.attention())
        _sync(device)
        pass_ms = 1000 * (time.perf_counter() - began)
        for _ in range(3):
            runner(x, t, context, cache.attention())
        runner(x, t * 0, context, cache.attention(commit=True))
        cache.end_chunk()
        return pass_ms

    with torch.inference_mode():
        fast_forward(cache, start_frame, config.num_heads, config.head_dim)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        run_chunk()  # warm-up
        with DispatchCounter() as counter:
            run_chunk()
        _sync(device)
        pass_times, began = [], time.perf_counter()
        for _ in range(timed_chunks):
            pass_times.append(run_chunk())
        _sync(device)
        chunk_ms = 1000 * (time.perf_counter() - began) / timed_chunks
    # what the next chunk sees, per head on average, in frames' worth of tokens
    held = sum(group.kept_tokens * len(group.heads) for group in cache.groups())
    context_frames = held / (config.num_layers * config.num_heads * cache.tokens_per_frame)
    return BenchRow(
        policy=policy.describe(),
        seconds=seconds,
        latent_frames=frames,
        context_frames=context_frames,
        ms_per_pass=sorted(pass_times)[len(pass_times) // 2],
        ms_per_chunk=chunk_ms,
        frames_per_second=chunk_frames * pipeline.preset.video.vae_stride[0] / (chunk_ms / 1000),
        kv_bytes=cache.bytes_held(),
        syncs_per_chunk=counter.count,
        ops_per_chunk=counter.ops,
        peak_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    )


class PlainContextAttention:
    """The reference point of REFERENCE.md section 4: plain SDPA of the chunk over fixed random
    context K/V plus itself, no RoPE, no cache bookkeeping."""

    def __init__(self, num_layers: int, context_tokens: int, like: torch.Tensor) -> None:
        batch, _, heads, head_dim = like.shape
        shape = (batch, heads, context_tokens, head_dim)
        self.context = [
            (
                torch.randn(shape, device=like.device, dtype=like.dtype),
                torch.randn(shape, device=like.device, dtype=like.dtype),
            )
            for _ in range(num_layers)
        ]

    def attend(self, layer: int, q, k, v):
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        context_k, context_v = self.context[layer]
        keys, values = torch.cat([context_k, k], dim=2), torch.cat([context_v, v], dim=2)
        return F.scaled_dot_product_attention(q, keys, values).transpose(1, 2)


def bench_plain_pass(pipeline: Pipeline, context_frames: int, repeats: int = 3) -> float:
    """Median ms of one DiT pass with :class:`PlainContextAttention` over ``context_frames``."""
    model, device = pipeline.model, pipeline.model.device
    config = model.config
    chunk_frames = pipeline.preset.video.chunk_frames
    tokens = pipeline.token_grid[0] * pipeline.token_grid[1]
    like = torch.empty(1, 0, config.num_heads, config.head_dim, device=device, dtype=model.dtype)
    attention = PlainContextAttention(config.num_layers, context_frames * tokens, like)
    context = model.encode_text(
        torch.zeros(1, config.text_len, config.text_dim, device=device, dtype=model.dtype)
    )
    x = torch.randn(1, pipeline.latent_shape[0], chunk_frames, *pipeline.latent_shape[1:])
    x = x.to(device, model.dtype)
    t = torch.full((1, chunk_frames), 500.0, device=device)
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 1):
            _sync(device)
            began = time.perf_counter()
            model(x, t, context, attention)
            _sync(device)
            times.append(1000 * (time.perf_counter() - began))
    return sorted(times[1:])[len(times[1:]) // 2]


def bench_decode(pipeline: Pipeline, timed_chunks: int = 2) -> float:
    """ms to decode one full chunk with the pipeline's decoder, in steady state."""
    device = pipeline.model.device
    chunk_frames = pipeline.preset.video.chunk_frames
    latents = torch.randn(1, *pipeline.latent_shape[:1], chunk_frames, *pipeline.latent_shape[1:])
    latents = latents.to(device, pipeline.model.dtype)
    pipeline.decoder.reset()
    with torch.inference_mode():
        pipeline.decoder.decode_chunk(latents)  # the first chunk of a video is shorter
        pipeline.decoder.decode_chunk(latents)  # warm-up
        _sync(device)
        began = time.perf_counter()
        for _ in range(timed_chunks):
            pipeline.decoder.decode_chunk(latents)
        _sync(device)
    return 1000 * (time.perf_counter() - began) / timed_chunks


def with_decode(row: BenchRow, decode_ms: float, pixel_frames: int) -> BenchRow:
    """``row`` with its end-to-end frames/s: the decoder (``decode_ms`` per chunk of
    ``pixel_frames``) beside the DiT, so a chunk costs the slower of the two."""
    if row.note:
        return row
    chunk_seconds = max(row.ms_per_chunk, decode_ms) / 1000
    return replace(row, end_to_end_frames_per_second=pixel_frames / chunk_seconds)


def bench_rows(
    pipeline: Pipeline,
    names: list[str],
    lengths: list[float],
    *,
    positions: str,
    timed_chunks: int,
    decode_ms: float,
    head_map: Callable[[], object],
    on_row: Callable[[BenchRow], None] | None = None,
) -> list[BenchRow]:
    """A row per policy of ``names`` and video length of ``lengths`` (seconds), each with the
    decoder's rate beside (``decode_ms`` per chunk, :func:`bench_decode`); ``on_row``: each
    row as it is measured. A head-map policy takes ``head_map()`` (asked once, when the first
    one needs it: one map for all). On CUDA, ``full`` rows whose K/V would not fit 80 % of the
    free memory are skipped, with a note saying so.
    """
    from headforcing.cache.policies import make_policy

    device = pipeline.model.device
    video = pipeline.preset.video
    pixel_frames = video.chunk_frames * video.vae_stride[0]
    rows, shared_map = [], None
    for name in names:
        policy = make_policy(name, positions=positions)
        if getattr(policy, "head_map", "-") is None:  # a head-map policy: one map for all
            shared_map = shared_map or head_map()
            policy = policy.with_head_map(shared_map)
        for seconds in lengths:
            frames = pipeline.latent_frames(seconds)
            if name == "full" and device.type == "cuda":
                need = estimated_full_bytes(pipeline, frames)
                free = torch.cuda.mem_get_info(device)[0]
                if need > 0.8 * free:
                    note = f"skipped: needs ~{need / 2**30:.0f} GiB of K/V, {free / 2**30:.0f} free"
                    rows.append(
                        BenchRow(policy.describe(), seconds, frames, 0, 0, 0, 0, 0, note=note)
                    )
                    continue
            row = bench_policy(pipeline, policy, seconds, timed_chunks=timed_chunks)
            rows.append(with_decode(row, decode_ms, pixel_frames))
            if on_row is not None:
                on_row(rows[-1])
    return rows


def write_json(rows: list[BenchRow], path: str | Path, overwrite: bool = True, **header) -> Path:
    """The rows as JSON: ``{"header": {...}, "rows": [{policy, seconds, latent_frames,
    ms_per_chunk, kv_bytes, syncs_per_chunk, ...}]}``, written beside and renamed."""
    from headforcing.io.files import write_text

    data = {"header": header, "rows": [asdict(row) for row in rows]}
    return write_text(path, json.dumps(data, indent=1), overwrite)


def format_table(rows: list[BenchRow], title: str, decode_ms: float, pixel_frames: int) -> str:
    """Markdown table; ``decode_ms`` per chunk of ``pixel_frames`` frames gives end to end.
    Its title names the device; its header says which columns are the DiT only."""
    columns = [
        "policy", "video s", "latent frames", "context frames/head", "ms/pass", "ms/chunk",
        "frames/s DiT only", "frames/s DiT+decode serial", "frames/s end to end (decode beside)",
        "K/V MiB", "ATen ops/chunk", "host reads/chunk", "peak GiB", "note",
    ]  # fmt: skip
    lines = [
        f"### {title}",
        "",
        f"decode: {decode_ms:.1f} ms per chunk of {pixel_frames} frames; ms/pass, ms/chunk and "
        "frames/s DiT only time the transformer alone, end to end adds the decoder beside it",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for row in rows:
        cells = [row.policy, f"{row.seconds:g}", str(row.latent_frames)]
        if row.note:
            cells += ["-"] * (len(columns) - 4) + [row.note]
        else:
            serial = pixel_frames / ((row.ms_per_chunk + decode_ms) / 1000)
            beside = with_decode(row, decode_ms, pixel_frames).end_to_end_frames_per_second
            peak = "-" if row.peak_gib is None else f"{row.peak_gib:.1f}"
            cells += [
                f"{row.context_frames:.1f}",
                f"{row.ms_per_pass:.1f}",
                f"{row.ms_per_chunk:.1f}",
                f"{row.frames_per_second:.1f}",
                f"{serial:.1f}",
                f"{beside:.1f}",
                f"{row.kv_megabytes:.1f}",
                str(row.ops_per_chunk),
                str(row.syncs_per_chunk),
                peak,
                "",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
