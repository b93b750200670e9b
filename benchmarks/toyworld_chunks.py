"""Where a toy model's sprite errors come from: count and colour error per 3-frame chunk.

Three ways to roll out the 21-frame training horizon, on the evaluation prompts (or the
acceptance check's twelve, ``--prompts acceptance``):

- ``free``: the model's own frames as context (what the pipeline does);
- ``real-first``: the real clip's first chunk, then the model's own frames;
- ``teacher``: every chunk sampled with the real clip's past frames as context.

``free`` against ``real-first`` measures the first chunk (drawn from the prompt alone);
``real-first`` against ``teacher`` measures how the model's own errors compound.

    python benchmarks/toyworld_chunks.py [--weights DIR] [--prompts eval|acceptance] [--seeds 0 1]

Each chunk is sampled with the pipeline's schedule under a block-causal dense mask over the
context and the chunk, which is what the ``full`` cache computes.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from headforcing.model import DenseAttention, TextContext, WanModel, block_causal_mask
from headforcing.pipeline import Pipeline
from headforcing.sampling import denoise
from headforcing.toyworld.codec import decode_latents, encode_frames
from headforcing.toyworld.evaluate import ACCEPTANCE_PROMPTS, EVAL_PROMPTS
from headforcing.toyworld.metrics import as_uint8_video, colour_error, find_sprites
from headforcing.toyworld.pretrained import load_toy_pipeline
from headforcing.toyworld.world import Scene, render_clip

MODES = ("free", "real-first", "teacher")
PROMPT_SETS = {"eval": EVAL_PROMPTS, "acceptance": ACCEPTANCE_PROMPTS}


@torch.inference_mode()
def rollout(
    pipeline: Pipeline, prompt: str, real: torch.Tensor, mode: str, seed: int
) -> torch.Tensor:
    """Latents ``[1, C, F, h, w]`` of one rollout as long as ``real`` (latents of the real clip)."""
    model, chunk_frames = pipeline.model, pipeline.preset.video.chunk_frames
    sigmas = pipeline.schedule.sigmas()
    train_steps = pipeline.schedule.train_steps
    frames = real.shape[2]
    mask = block_causal_mask(frames, chunk_frames)
    context = model.encode_text(pipeline.text_encoder.encode([prompt]))
    generator = torch.Generator().manual_seed(seed)
    done: list[torch.Tensor] = []
    for first in range(0, frames, chunk_frames):
        end = min(first + chunk_frames, frames)
        if mode == "real-first" and first == 0:
            done.append(real[:, :, :end])
            continue
        past = real[:, :, :first] if mode == "teacher" else torch.cat([real[:, :, :0], *done], 2)
        attention = DenseAttention(
            model.rope, torch.arange(end), *pipeline.token_grid, mask[:end, :end]
        )
        shape = (1, real.shape[1], end - first, *real.shape[3:])
        flow = _prefix_flow(model, past, context, attention, train_steps)
        x0 = denoise(flow, shape, generator, sigmas)
        done.append(x0)
    return torch.cat(done, 2)


def _prefix_flow(
    model: WanModel,
    past: torch.Tensor,
    context: TextContext,
    attention: DenseAttention,
    train_steps: int,
) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """The flow of a chunk that follows the clean frames ``past`` (run together, dense)."""
    first = past.shape[2]

    def flow(x: torch.Tensor, sigma: float) -> torch.Tensor:
        timesteps = torch.cat(
            [torch.zeros(1, first), torch.full((1, x.shape[2]), sigma * train_steps)], 1
        )
        return model(torch.cat([past, x], 2), timesteps, context, attention)[:, :, first:]

    return flow


def chunk_errors(video: np.ndarray, scene: Scene, chunk_frames: int) -> np.ndarray:
    """``[2, chunks]``: mean count error and colour error of every chunk of ``video``."""
    sprites = find_sprites(video, scene)
    count = np.array([abs(len(blobs) - len(scene.sprites)) for blobs in sprites], dtype=float)
    colour = np.array([colour_error(blobs, scene) for blobs in sprites])
    chunks = range(0, len(video), chunk_frames)
    return np.array([[v[c : c + chunk_frames].mean() for c in chunks] for v in (count, colour)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=None, help="shipped weights by default")
    parser.add_argument("--prompts", choices=sorted(PROMPT_SETS), default="eval")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    pipeline = load_toy_pipeline(weights_dir=args.weights)
    frames = pipeline.preset.video.trained_frames
    chunk_frames = pipeline.preset.video.chunk_frames
    errors: dict[str, list[np.ndarray]] = {mode: [] for mode in MODES}
    prompts = PROMPT_SETS[args.prompts]
    for prompt in prompts:
        scene = Scene.from_prompt(prompt)
        negated = pipeline.decoder.first_negated  # the weights' latent format
        real = encode_frames(render_clip(scene, frames)[None], first_negated=negated)
        for seed in args.seeds:
            for mode in MODES:
                latents = rollout(pipeline, prompt, real, mode, seed)
                rgb = decode_latents(latents, first_negated=negated)[0]
                video = as_uint8_video(rgb.permute(1, 2, 3, 0))
                errors[mode].append(chunk_errors(video, scene, chunk_frames))

    chunks = errors[MODES[0]][0].shape[1]
    print(f"{len(prompts)} {args.prompts} prompts x {len(args.seeds)} seeds, {frames} frames\n")
    print("| rollout | metric | " + " | ".join(f"chunk {c}" for c in range(chunks)) + " | mean |")
    print("|---|---|" + "---|" * (chunks + 1))
    for mode in MODES:
        mean = np.mean(errors[mode], axis=0)
        for name, row in zip(("count_error", "colour_error"), mean, strict=True):
            cells = " | ".join(f"{v:.2f}" for v in row)
            print(f"| {mode} | {name} | {cells} | {row.mean():.3f} |")


if __name__ == "__main__":
    main()
