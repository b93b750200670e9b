"""Where a toy model's colour error comes from: lost sprites, soft edges or wrong colours.

    python benchmarks/toyworld_colour.py [--weights shipped DIR ...]
        [--prompts acceptance|random:RNG:N] [--seeds 0 1]

Four tables:

1. What the colour metric makes of real clips with a known defect (the acceptance prompts):
   pixel noise on the sprites, or a 3x3 box blur (every colour exact, every edge soft).
2. Free samples of the training horizon (``full`` cache), for every ``--weights``: colour error
   split into sprites lost or merged (an unmatched sprite counts 1) and the colour of the matched
   ones, with the count error.
3. The first chunk's x0 prediction at every level of the sampler (colour error of the decoded
   prediction): how the sampler's chain refines it.
4. One x0 prediction of the first chunk from a low noise level, noised from the real frames or
   from the same frames blurred: does the model correct a blurred input or keep it?

``random:RNG:N`` draws N scenes with ``random_scene`` from ``numpy`` seed RNG (prompts outside the
acceptance set, for choosing between models).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from headforcing.model import DenseAttention, TextContext, block_causal_mask
from headforcing.pipeline import Pipeline
from headforcing.sampling import denoise
from headforcing.toyworld.codec import decode_latents, encode_frames
from headforcing.toyworld.evaluate import ACCEPTANCE_PROMPTS, sample_video
from headforcing.toyworld.metrics import (
    as_uint8_video,
    colour_error,
    colour_error_parts,
    find_sprites,
)
from headforcing.toyworld.pretrained import load_toy_pipeline
from headforcing.toyworld.world import Scene, random_scene, render_clip

LOW_LEVELS = (0.05, 0.165, 0.3)


def prompt_set(spec: str) -> list[str]:
    if spec == "acceptance":
        return list(ACCEPTANCE_PROMPTS)
    kind, rng_seed, count = spec.split(":")
    if kind != "random":
        raise SystemExit(f"--prompts: 'acceptance' or 'random:RNG:N', got {spec!r}")
    rng = np.random.default_rng(int(rng_seed))
    return [random_scene(rng).prompt() for _ in range(int(count))]


def blur(frames: np.ndarray) -> np.ndarray:
    """3x3 box blur of ``[..., H, W, 3]`` uint8 frames (edges replicated)."""
    pad = [(0, 0)] * (frames.ndim - 3) + [(1, 1), (1, 1), (0, 0)]
    padded = np.pad(frames.astype(float), pad, mode="edge")
    height, width = frames.shape[-3:-1]
    total = sum(
        padded[..., 1 + dr : 1 + dr + height, 1 + dc : 1 + dc + width, :]
        for dr in (-1, 0, 1)
        for dc in (-1, 0, 1)
    )
    return np.round(total / 9).astype(np.uint8)


def video_colour(frames: np.ndarray, scene: Scene) -> float:
    """Mean colour error over the frames of one video."""
    return float(np.mean([colour_error(blobs, scene) for blobs in find_sprites(frames, scene)]))


def latent_colour(latents: torch.Tensor, scene: Scene, first_negated: bool = False) -> float:
    """Colour error of one video's latents ``[1, C, F, h, w]`` (clamped, decoded; the first
    frame stored negated in that latent format)."""
    frames = decode_latents(latents.clamp(-1, 1), first_negated=first_negated)[0]
    frames = frames.permute(1, 2, 3, 0)
    return video_colour(as_uint8_video(frames), scene)


def metric_on_real_clips(frames: int) -> list[tuple[str, float]]:
    rng = np.random.default_rng(0)
    rows = []
    for name, noise_std, blurred in (
        ("real clips", 0, False),
        ("pixel noise std 8 on sprites", 8, False),
        ("pixel noise std 17 on sprites", 17, False),
        ("3x3 box blur", 0, True),
    ):
        errors = []
        for prompt in ACCEPTANCE_PROMPTS:
            scene = Scene.from_prompt(prompt)
            clip = render_clip(scene, frames)
            sprites = (clip != scene.background_image()).any(-1, keepdims=True)
            video = blur(clip) if blurred else clip
            noise = rng.normal(0, noise_std, clip.shape) * sprites
            video = np.clip(np.round(video + noise), 0, 255).astype(np.uint8)
            errors.append(video_colour(video, scene))
        rows.append((name, float(np.mean(errors))))
    return rows


def free_samples(
    pipeline: Pipeline, prompts: list[str], seeds: list[int], frames: int
) -> tuple[float, float, float]:
    """Mean (unmatched, matched, count error) per frame of free samples."""
    parts, counts = [], []
    for prompt in prompts:
        scene = Scene.from_prompt(prompt)
        for seed in seeds:
            for blobs in find_sprites(sample_video(pipeline, prompt, frames, seed=seed), scene):
                parts.append(colour_error_parts(blobs, scene))
                counts.append(abs(len(blobs) - len(scene.sprites)))
    unmatched, matched = np.mean(parts, axis=0)
    return float(unmatched), float(matched), float(np.mean(counts))


@torch.inference_mode()
def sampler_chain(pipeline: Pipeline, prompts: list[str], seeds: list[int]) -> np.ndarray:
    """``[levels, 2]``: sigma and mean colour error of the first chunk's x0 at every level."""
    model, chunk = pipeline.model, pipeline.preset.video.chunk_frames
    attention = first_chunk_attention(pipeline)
    train_steps = pipeline.schedule.train_steps
    negated = pipeline.decoder.first_negated  # the weights' latent format
    errors: dict[float, list[float]] = {}
    for prompt in prompts:
        scene = Scene.from_prompt(prompt)
        text = model.encode_text(pipeline.text_encoder.encode([prompt]))
        for seed in seeds:
            predictions: list[tuple[float, torch.Tensor]] = []

            def flow(
                x: torch.Tensor, sigma: float, text: TextContext = text, seen: list = predictions
            ) -> torch.Tensor:
                velocity = model(x, torch.full((1, chunk), sigma * train_steps), text, attention)
                seen.append((sigma, x - sigma * velocity))
                return velocity

            shape = (1, pipeline.latent_shape[0], chunk, *pipeline.latent_shape[1:])
            denoise(flow, shape, torch.Generator().manual_seed(seed), pipeline.schedule.sigmas())
            for sigma, x0 in predictions:
                errors.setdefault(sigma, []).append(latent_colour(x0, scene, negated))
    return np.array([(sigma, np.mean(e)) for sigma, e in errors.items()])


def first_chunk_attention(pipeline: Pipeline) -> DenseAttention:
    """Dense attention over the first chunk alone (what every cache policy computes there)."""
    chunk = pipeline.preset.video.chunk_frames
    mask = block_causal_mask(chunk, chunk)
    return DenseAttention(pipeline.model.rope, torch.arange(chunk), *pipeline.token_grid, mask)


@torch.inference_mode()
def low_noise_inputs(pipeline: Pipeline, seed: int = 0) -> list[tuple[float, str, float, float]]:
    """(sigma, base, input colour error, prediction colour error) of the first chunk of every
    acceptance prompt, noised from the real frames or from the blurred real frames."""
    model, chunk = pipeline.model, pipeline.preset.video.chunk_frames
    scenes = [Scene.from_prompt(p) for p in ACCEPTANCE_PROMPTS]
    clips = np.stack([render_clip(s, chunk) for s in scenes])
    negated = pipeline.decoder.first_negated  # the weights' latent format
    bases = {
        "real": encode_frames(clips, first_negated=negated),
        "blurred": encode_frames(blur(clips), first_negated=negated),
    }
    text = model.encode_text(pipeline.text_encoder.encode(list(ACCEPTANCE_PROMPTS)))
    attention = first_chunk_attention(pipeline)
    generator = torch.Generator().manual_seed(seed)
    train_steps = pipeline.schedule.train_steps
    rows = []
    for sigma in LOW_LEVELS:
        for name, base in bases.items():
            noisy = (1 - sigma) * base + sigma * torch.randn(base.shape, generator=generator)
            timesteps = torch.full((len(scenes), chunk), sigma * train_steps)
            x0 = noisy - sigma * model(noisy, timesteps, text, attention)
            before, after = (
                np.mean([latent_colour(x[i : i + 1], s, negated) for i, s in enumerate(scenes)])
                for x in (noisy, x0)
            )
            rows.append((sigma, name, float(before), float(after)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--weights", nargs="+", default=["shipped"], help="weight folders; 'shipped': the package's"
    )
    parser.add_argument("--prompts", default="acceptance", help="acceptance or random:RNG:N")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    prompts = prompt_set(args.prompts)

    pipelines = {
        name: load_toy_pipeline(weights_dir=None if name == "shipped" else Path(name))
        for name in args.weights
    }
    frames = next(iter(pipelines.values())).preset.video.trained_frames

    print("\n1. the colour metric on real clips with a known defect (acceptance prompts)\n")
    print("| real clips | colour error |\n|---|---|")
    for name, error in metric_on_real_clips(frames):
        print(f"| {name} | {error:.3f} |")

    print(f"\n2. free samples, {frames} frames, {args.prompts} x seeds {args.seeds}\n")
    print("| weights | colour error | lost or merged | matched colour | count error |")
    print("|---|---|---|---|---|")
    for name, pipeline in pipelines.items():
        unmatched, matched, count = free_samples(pipeline, prompts, args.seeds, frames)
        total = unmatched + matched
        print(f"| {name} | {total:.3f} | {unmatched:.3f} | {matched:.3f} | {count:.3f} |")

    print(f"\n3. first chunk's x0 at every sampler level (colour error), {args.prompts}\n")
    chains = {name: sampler_chain(p, prompts, args.seeds) for name, p in pipelines.items()}
    print("| sigma | " + " | ".join(chains) + " |\n|---|" + "---|" * len(chains))
    for level, sigma in enumerate(next(iter(chains.values()))[:, 0]):
        cells = " | ".join(f"{chain[level, 1]:.3f}" for chain in chains.values())
        print(f"| {sigma:.3f} | {cells} |")

    print("\n4. one x0 prediction of the first chunk from a low level (acceptance prompts)\n")
    print("| weights | sigma | noised from | input colour error | prediction colour error |")
    print("|---|---|---|---|---|")
    for name, pipeline in pipelines.items():
        for sigma, base, before, after in low_noise_inputs(pipeline):
            print(f"| {name} | {sigma:g} | {base} | {before:.3f} | {after:.3f} |")


if __name__ == "__main__":
    main()
