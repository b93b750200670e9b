"""The toy world: a procedural scene with known truth, a small model trained on it, metrics.

No pretrained video model can be downloaded everywhere and random weights cannot show drift, so
the package ships a small causal model trained here, in a world where the truth is known:

- :mod:`~headforcing.toyworld.world`: 32 x 32 frames, a static textured background (4 colours x
  3 patterns) and 1-3 coloured sprites (circles, squares) that move and bounce; prompts describe
  the scene and can change mid-video (:func:`~headforcing.toyworld.world.render_schedule`).
- :mod:`~headforcing.toyworld.codec`: the latent space, a fixed pixel-unshuffle by 4 (48 x 8 x 8
  latents per frame, temporal stride 1) and its inverse, :class:`ToyDecoder`.
- :mod:`~headforcing.toyworld.text`: :class:`ToyTextEncoder`, a word table with one mixing layer.
- :mod:`~headforcing.toyworld.train`: diffusion forcing with flow matching on 21-frame clips
  (``python -m headforcing.toyworld.train --out DIR --steps N --seed S``), by stage: its
  settings (``train_config``), the data and noise levels of a step (``train_data``), the
  objective (``forcing``), then the loop, the EMA and the saved run (``train``).
- :mod:`~headforcing.toyworld.metrics`: per-segment quality against the truth, and drift.
- :mod:`~headforcing.toyworld.evaluate`: samples against real clips (the acceptance rule).
- :func:`load_toy_pipeline`: the shipped weights as a :class:`~headforcing.pipeline.Pipeline`.
"""

from headforcing.toyworld.codec import ToyDecoder
from headforcing.toyworld.pretrained import load_toy_pipeline
from headforcing.toyworld.text import ToyTextEncoder
from headforcing.toyworld.world import Scene, Sprite, render_clip, render_schedule

__all__ = [
    "Scene",
    "Sprite",
    "ToyDecoder",
    "ToyTextEncoder",
    "load_toy_pipeline",
    "render_clip",
    "render_schedule",
]
