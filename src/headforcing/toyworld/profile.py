"""Profile a toy model's heads on the evaluation prompts and store the map with its weights.

    python -m headforcing.toyworld.profile [--weights DIR] [--png PICTURE]

writes ``DIR/head_map.json`` (the shipped weights by default), which :func:`load_toy_pipeline`
hands to ``head_forcing`` runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from headforcing.heads.headmap import HeadMap
from headforcing.toyworld.pretrained import HEAD_MAP_FILE, WEIGHTS_DIR, load_toy_pipeline


def write_head_map(weights_dir: str | Path | None = None, png: str | Path | None = None) -> Path:
    """Profile the model of ``weights_dir`` (shipped by default) on the evaluation prompts and
    write its ``head_map.json`` there (and the picture to ``png``, if given)."""
    from headforcing.heads.plot import plot_head_map
    from headforcing.heads.profile import profile_heads
    from headforcing.toyworld.evaluate import EVAL_PROMPTS

    folder = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    pipeline = load_toy_pipeline(weights_dir=folder, probe_world=True)
    head_map = profile_heads(pipeline, list(EVAL_PROMPTS))
    path = head_map.save(folder / HEAD_MAP_FILE)
    if png is not None:
        plot_head_map(head_map, png)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Profile the toy model's heads into its folder.")
    parser.add_argument("--weights", type=Path, default=None, help="default: the shipped weights")
    parser.add_argument("--png", type=Path, default=None, help="also draw the map here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    path = write_head_map(args.weights, args.png)
    print(f"wrote {path}")
    for layer, labels in enumerate(HeadMap.load(path).labels):
        print(f"  layer {layer}: {' '.join(labels)}")


if __name__ == "__main__":
    main()
