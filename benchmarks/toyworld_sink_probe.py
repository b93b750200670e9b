"""Where a toy model's heads look when the first chunk is given (image-to-video).

    python benchmarks/toyworld_sink_probe.py --weights DIR [--prompts 4] [--seed 0]

For each evaluation prompt this renders a true first chunk in the world the weights were trained
in (read from their ``config.json``: the lit world's light radius, random backgrounds, the latent
format), from a random start, commits it to a cache at t = 0 as the given image, generates the
rest of the trained window with the toy sampler, and profiles the heads as
``python -m headforcing.toyworld.profile`` does (chunks 3-6, denoising passes, 64 query rows).
It prints the sink and current mass of every head and how many heads are sink-heavy (sink mass
at least 0.3).

Why a given first chunk: a world whose first frame holds something the prompt leaves open (a
random background) cannot be generated from the prompt by a model that draws the conditional
mean, so such weights are only ever continued from a given start, and the shipped model's
profile (generated first chunk) would not measure the same thing. For comparison the probe
runs any weights, the shipped ones too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from headforcing.cache.policies import WindowPolicy
from headforcing.heads.profile import HeadProfiler, ProfileSettings
from headforcing.sampling import generate_chunks
from headforcing.toyworld.codec import SPATIAL_STRIDE, encode_frames
from headforcing.toyworld.evaluate import EVAL_PROMPTS
from headforcing.toyworld.pretrained import WEIGHTS_DIR, first_negated, load_toy_pipeline
from headforcing.toyworld.world import Scene, random_background, render, simulate


def probe(weights: Path, prompts: list[str], seed: int = 0) -> dict[str, np.ndarray]:
    """Mean mass per region ``{region: [layers, heads]}`` over ``prompts``, each rollout
    continued from a given first chunk."""
    pipeline = load_toy_pipeline(weights_dir=weights, probe_world=True)
    meta = json.loads((weights / "config.json").read_text())
    trained = meta.get("train", {})
    radius = trained.get("light_radius", 0)
    drawn = trained.get("random_background", False)
    video, model = pipeline.preset.video, pipeline.model
    settings = ProfileSettings()
    profiler = HeadProfiler(
        model.config.num_layers, model.config.num_heads, video.chunk_frames, settings
    )
    for index, prompt in enumerate(prompts):
        scene = Scene.from_prompt(prompt)
        rng = np.random.default_rng([seed, index])
        background = random_background(scene, rng) if drawn else None
        corners = simulate(scene, video.chunk_frames, seed=int(rng.integers(2**31)))
        frames = render(scene, corners, radius, background)
        given = encode_frames(frames[None], SPATIAL_STRIDE, first_negated(meta))
        cache = pipeline.new_cache(WindowPolicy(video.trained_frames, 0, "relative"))
        cache.observers.append(profiler)
        context = model.encode_text(pipeline.text_encoder.encode([prompt]))
        with torch.no_grad():
            cache.begin_chunk(video.chunk_frames)
            at_zero = torch.zeros(1, video.chunk_frames)
            model(given, at_zero, context, cache.attention(commit=True))
            cache.end_chunk()
            generator = torch.Generator().manual_seed(seed + index)
            for _ in generate_chunks(
                model,
                cache,
                context,
                settings.frames,
                pipeline.latent_shape,
                generator,
                pipeline.schedule,
            ):
                pass
    return {region: np.array(mass) for region, mass in profiler.stats().items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", type=Path, default=WEIGHTS_DIR, help="default: shipped")
    parser.add_argument("--prompts", type=int, default=len(EVAL_PROMPTS), help="how many")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    stats = probe(args.weights, list(EVAL_PROMPTS[: args.prompts]), args.seed)
    sink, current = stats["sink"], stats["current"]
    print(f"weights: {args.weights}")
    print("| layer | sink mass per head | current mass per head |")
    print("|---|---|---|")
    for layer in range(len(sink)):
        print(
            f"| {layer} | {' '.join(f'{v:.2f}' for v in sink[layer])} "
            f"| {' '.join(f'{v:.2f}' for v in current[layer])} |"
        )
    print(
        f"sink-heavy heads (>= 0.3): {int((sink >= 0.3).sum())} of {sink.size}; "
        f"max sink mass {sink.max():.2f}; current-heavy (>= 0.5): {int((current >= 0.5).sum())}"
    )


if __name__ == "__main__":
    main()
