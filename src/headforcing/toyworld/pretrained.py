"""The shipped toy-world model: weights in ``toyworld/weights/``, loaded into a Pipeline.

``weights/`` holds what ``python -m headforcing.toyworld.train`` writes: ``model.safetensors``
(the transformer, original Wan names), ``text_encoder.safetensors``, ``config.json`` (preset,
text-encoder vocabulary, training settings, seed, final loss) and ``training_log.jsonl``; the
shipped folder also holds ``training_log.stage1.jsonl`` (the log of the run the shipped one
continued, see ``train.py``) and ``head_map.json``, the model's heads profiled on the evaluation
prompts (``python -m headforcing.toyworld.profile``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from headforcing.heads.headmap import HeadMap
from headforcing.heads.store import fingerprint
from headforcing.io.checkpoints import model_from_state_dict
from headforcing.model import WanConfig, get_preset
from headforcing.pipeline import Pipeline
from headforcing.toyworld.codec import SPATIAL_STRIDE, ToyDecoder
from headforcing.toyworld.text import ToyTextEncoder

WEIGHTS_DIR = Path(__file__).parent / "weights"
WEIGHT_FILES = ("model.safetensors", "text_encoder.safetensors", "config.json")
HEAD_MAP_FILE = "head_map.json"


def load_toy_text_encoder(weights_dir: Path) -> ToyTextEncoder:
    """The trained toy text encoder of ``weights_dir`` (vocabulary from ``config.json``)."""
    meta = json.loads((weights_dir / "config.json").read_text())["text_encoder"]
    encoder = ToyTextEncoder(
        meta["vocabulary"], meta["text_len"], meta["text_dim"], meta["num_heads"]
    )
    state = {
        k: v.float() for k, v in load_file(str(weights_dir / "text_encoder.safetensors")).items()
    }
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{weights_dir / 'text_encoder.safetensors'} does not fit the toy text encoder: "
            f"missing {missing}, unexpected {unexpected}"
        )
    return encoder.eval().requires_grad_(False)


def load_toy_pipeline(
    device: torch.device | str = "cpu",
    weights_dir: str | Path | None = None,
    probe_world: bool = False,
) -> Pipeline:
    """The trained toy-world model as a :class:`~headforcing.pipeline.Pipeline` (preset ``toy``).

    Parameters
    ----------
    device:
        Where the transformer runs (float32).
    weights_dir:
        A folder written by ``python -m headforcing.toyworld.train``; the shipped weights by
        default. Its ``head_map.json``, if any, becomes the pipeline's head map.
    probe_world:
        Accept weights trained in a probe world (``train.py``'s ``--light-radius``,
        ``--random-background``). Only the head profilers do: the metrics, the demo and the
        benchmarks render the plain world, and would score such weights against the wrong
        truth.

    Raises
    ------
    FileNotFoundError
        If a weight file is missing, naming it and how to make it.
    ValueError
        If the files were trained for another preset, do not fit the preset's shapes, or
        were trained in a probe world and ``probe_world`` is false.
    """
    folder = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    missing = [name for name in WEIGHT_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"toy-world weights missing in {folder}: {', '.join(missing)}. Reinstall headforcing "
            "(the package ships them), or train them: python -m headforcing.toyworld.train "
            f"--out {folder}"
        )
    meta = json.loads((folder / "config.json").read_text())
    preset = get_preset(meta.get("preset", "?"))
    if preset.name != "toy" or preset.video.vae_stride[1] != SPATIAL_STRIDE:
        raise ValueError(f"{folder / 'config.json'} is for preset {preset.name!r}, not 'toy'")
    probe = probe_world_settings(meta)
    if probe and not probe_world:
        raise ValueError(
            f"{folder} was trained in a probe world ({probe}); the metrics, the demo and the "
            "benchmarks render the plain world. Profile it instead: python -m "
            f"headforcing.toyworld.profile --weights {folder}, or benchmarks/toyworld_sink_probe.py"
        )
    # the shapes the weights were trained with (config.json) win over today's preset
    if "model" in meta:
        saved = {**meta["model"], "patch_size": tuple(meta["model"]["patch_size"])}
        preset = dataclasses.replace(preset, model=WanConfig(**saved))
    model = model_from_state_dict(
        load_file(str(folder / "model.safetensors")),
        preset.model,
        source=str(folder / "model.safetensors"),
        device=device,
        dtype=torch.float32,
    )
    head_map_path = folder / HEAD_MAP_FILE
    return Pipeline(
        preset,
        model,
        load_toy_text_encoder(folder),
        ToyDecoder(SPATIAL_STRIDE, first_negated=first_negated(meta)),
        weights_id="toy-" + fingerprint(folder / "model.safetensors"),
        head_map=HeadMap.load(head_map_path) if head_map_path.is_file() else None,
    )


def first_negated(meta: dict) -> bool:
    """Whether weights (their ``config.json``) were trained on latents whose first frame is
    stored negated (``codec.py``); weights from before the field use the plain format."""
    form = meta.get("latent", {}).get("first_frame", "plain")
    if form not in ("plain", "negated"):
        raise ValueError(f"unknown toy latent first-frame format {form!r}")
    return form == "negated"


def probe_world_settings(meta: dict) -> str:
    """The probe-world settings weights (their ``config.json``) were trained with, as text;
    empty for the plain world."""
    trained = meta.get("train", {})
    settings = []
    if trained.get("light_radius", 0):
        settings.append(f"light radius {trained['light_radius']}")
    if trained.get("random_background", False):
        settings.append("random backgrounds")
    return ", ".join(settings)
