"""Does decoding sit beside generation? End to end against the DiT alone and the decoder alone.

``Pipeline.stream`` decodes (and writes) chunk ``n`` in a worker thread while the DiT makes
chunk ``n + 1``. With one thread per operation (``OMP_NUM_THREADS=1``) on a machine with two
cores, the two can run at once: end to end should cost about the slower of the two per chunk,
not their sum. On a GPU the decoder runs on its own CUDA stream.

    OMP_NUM_THREADS=1 python benchmarks/decode_overlap.py --preset cpu-bench --chunks 6

The decoder is a random-weight Wan2.1 VAE (diffusers ``AutoencoderKLWan``, the real one's
architecture; ``--vae-dim`` narrows it so that on a CPU it costs about what the DiT does) at the
preset's size. Prints one table: ms per chunk of the DiT alone, the decoder
alone, their sum, their maximum, and the stream end to end.
"""

from __future__ import annotations

import argparse
import time

import torch

from headforcing.cache.policies import make_policy
from headforcing.pipeline import Pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu-bench")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--chunks", type=int, default=6)
    parser.add_argument(
        "--vae-dim",
        type=int,
        default=96,
        help="the VAE's base width (Wan2.1: 96); smaller makes a CPU decode as slow as the DiT",
    )
    args = parser.parse_args()

    from diffusers import AutoencoderKLWan

    from headforcing.io.wan_vae import WanVAEDecoder

    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    pipeline = Pipeline.with_standins(args.preset, device=args.device, dtype=dtype)
    vae = AutoencoderKLWan(base_dim=args.vae_dim)
    pipeline.decoder = WanVAEDecoder(vae, device=args.device, dtype=dtype)
    policy = make_policy("window")
    frames = args.chunks * pipeline.preset.video.chunk_frames
    prompt = "a lighthouse in a storm"

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    # warm-up: one chunk of everything
    list(pipeline.stream(prompt, pipeline.preset.video.chunk_frames, policy))

    sync()
    began = time.perf_counter()
    latents = [
        c.latents for c in pipeline.generate_latents(prompt, frames, pipeline.new_cache(policy))
    ]
    sync()
    dit = (time.perf_counter() - began) / args.chunks

    pipeline.decoder.reset()
    began = time.perf_counter()
    with torch.inference_mode():
        for chunk in latents:
            pipeline.decoder.decode_chunk(chunk)
    sync()
    decode = (time.perf_counter() - began) / args.chunks

    began = time.perf_counter()
    for _ in pipeline.stream(prompt, frames, policy):
        pass
    sync()
    stream = (time.perf_counter() - began) / args.chunks

    threads = torch.get_num_threads()
    print(
        f"### {args.preset} on {args.device}, {threads} thread(s) per op, {args.chunks} chunks, "
        f"VAE base width {args.vae_dim}"
    )
    print()
    print("| ms per chunk | DiT alone | decode alone | sum | max | stream (end to end) |")
    print("|---|---|---|---|---|---|")
    print(
        f"| | {1000 * dit:.0f} | {1000 * decode:.0f} | {1000 * (dit + decode):.0f} | "
        f"{1000 * max(dit, decode):.0f} | {1000 * stream:.0f} |"
    )


if __name__ == "__main__":
    main()
