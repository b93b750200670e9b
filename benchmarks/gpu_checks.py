"""The checks `benchmarks/gpu.sh` runs beside `headforcing bench`, and its closing summary.

``python benchmarks/gpu_checks.py syncs --preset wan2.1-t2v-1.3b --device cuda``: a few chunks of
every policy, then one denoising pass, one commit pass and ``end_chunk`` with
``torch.cuda.set_sync_debug_mode("error")``: any call that synchronises the host with the GPU
inside them raises. On the CPU (no streams to synchronise) it counts host reads instead, with
:class:`headforcing.hostsync.DispatchCounter` (dispatch level).

``python benchmarks/gpu_checks.py summary A.json B.json ...``: one short table of the
``bench --json`` files: DiT frames/s per policy and length, the ratio to ``window`` of the same
file and length, K/V GiB.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from headforcing.bench import fast_forward
from headforcing.cache.policies import make_policy
from headforcing.heads.profile import profile_heads
from headforcing.hostsync import DispatchCounter
from headforcing.pipeline import Pipeline


def check_syncs(preset: str, device: str, chunks: int) -> list[str]:
    dtype = torch.float32 if device.startswith("cpu") else torch.bfloat16
    pipeline = Pipeline.with_standins(preset, device=device, dtype=dtype)
    model, config = pipeline.model, pipeline.model.config
    video = pipeline.preset.video
    head_map = profile_heads(pipeline, ["a calibration prompt"])
    lines = []
    for name in ("window", "sink", "head_forcing", "deep_forcing", "pyramid_forcing"):
        policy = make_policy(name)
        if getattr(policy, "head_map", "-") is None:
            policy = policy.with_head_map(head_map)
        cache = pipeline.new_cache(policy)
        with torch.inference_mode():
            # past the filling phase: every memory full, so end_chunk reads nothing either
            fast_forward(cache, chunks * video.chunk_frames, config.num_heads, config.head_dim)
            context = model.encode_text(
                torch.zeros(1, config.text_len, config.text_dim, device=model.device)
            )
            shape = (1, config.in_channels, video.chunk_frames, *pipeline.latent_shape[1:])
            x = torch.randn(shape, device=model.device, dtype=model.dtype)
            t = torch.full((1, video.chunk_frames), 500.0, device=model.device)
            cache.begin_chunk(video.chunk_frames)
            if model.device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("error")
                try:
                    model(x, t, context, cache.attention())
                    model(x, t * 0, context, cache.attention(commit=True))
                    cache.end_chunk()
                finally:
                    torch.cuda.set_sync_debug_mode("default")
                reads = "no synchronisation (set_sync_debug_mode error)"
            else:
                with DispatchCounter() as counter:
                    model(x, t, context, cache.attention())
                    model(x, t * 0, context, cache.attention(commit=True))
                    cache.end_chunk()
                reads = f"{counter.count} host reads"
        lines.append(f"{policy.describe()}: a denoising pass, a commit pass, end_chunk: {reads}")
    return lines


def summary(paths: list[Path]) -> str:
    lines = [
        "| run | policy | video s | frames/s DiT only | frames/s end to end | x window | K/V GiB "
        "| ATen ops/chunk | host reads/chunk |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for path in paths:
        data = json.loads(path.read_text())
        rows = [row for row in data["rows"] if not row["note"]]
        window = {r["seconds"]: r for r in rows if r["policy"].startswith("window")}
        compiled = data["header"].get("compiled")
        run = "eager" if not compiled else "compiled" if compiled is True else compiled
        for row in rows:
            base = window.get(row["seconds"])
            ratio = f"{base['ms_per_chunk'] / row['ms_per_chunk']:.2f}" if base else "-"
            end_to_end = row.get("end_to_end_frames_per_second")
            end_to_end = "-" if end_to_end is None else f"{end_to_end:.1f}"
            lines.append(
                f"| {run} | {row['policy']} | {row['seconds']:g} | "
                f"{row['frames_per_second']:.1f} | {end_to_end} | {ratio} | "
                f"{row['kv_bytes'] / 2**30:.2f} | "
                f"{row.get('ops_per_chunk', '-')} | {row['syncs_per_chunk']} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    syncs = commands.add_parser("syncs")
    syncs.add_argument("--preset", default="wan2.1-t2v-1.3b")
    syncs.add_argument("--device", default="cuda")
    syncs.add_argument("--chunks", type=int, default=16, help="chunks before the checked one")
    table = commands.add_parser("summary")
    table.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args()
    if args.command == "syncs":
        print("\n".join(check_syncs(args.preset, args.device, args.chunks)))
    else:
        print(summary(args.files))


if __name__ == "__main__":
    main()
