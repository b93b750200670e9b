"""``headforcing demo``: the toy model far past its training horizon, Head Forcing beside a
baseline, with a report (``headforcing.toyworld.demo_report``: the horizon and the mean after
it with intervals, every segment, metrics over time) and the head map."""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from headforcing.heads.headmap import HeadMap
from headforcing.pipeline import Pipeline
from headforcing.toyworld.demo_report import plot_over_time, report_text, summary_line
from headforcing.toyworld.evaluate import EVAL_PROMPTS
from headforcing.toyworld.longrun import baseline_policies
from headforcing.toyworld.metrics import segment_bounds, video_metrics
from headforcing.toyworld.world import Scene, render_clip

DEMO_PROMPT = "a blue square and a yellow circle bounce over a gray checkered background"
LABEL_PIXELS = 16  # the strip above each panel that names it
GAP_PIXELS = 4  # between two panels


# the files the demo writes into its folder (an existing one is replaced only with --overwrite)
DEMO_FILES = {
    "video": "demo.mp4",
    "report": "report.md",
    "plot": "metrics_over_time.png",
    "head_map": "head_map.png",
}


def check_demo_folder(out_dir: Path, overwrite: bool = False) -> None:
    """Refuse a folder the demo cannot write its files into, before anything runs: a file in
    its place, a folder without write permission, one of its files being a symbolic link, or
    existing already (unless ``overwrite``): :func:`~headforcing.io.files.check_output_path`."""
    from headforcing.io.files import check_output_path

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out-dir {out_dir} is a file, not a folder; choose another --out-dir")
    for name in DEMO_FILES.values():
        check_output_path(out_dir / name, option="--out-dir", overwrite=overwrite)


@dataclass(frozen=True)
class DemoReport:
    video: Path
    report: Path
    plot: Path
    head_map_picture: Path
    summary: str  # one line: the errors after the training horizon, compared


def toy_head_map(pipeline: Pipeline) -> HeadMap:
    """The head map shipped with the toy weights, else one profiled now on the eval prompts."""
    if pipeline.head_map is not None:
        return pipeline.head_map
    from headforcing.heads.profile import profile_heads

    return profile_heads(pipeline, list(EVAL_PROMPTS))


def _labelled(frames: np.ndarray, label: str, scale: int) -> np.ndarray:
    """Upscale ``[F, h, w, 3]`` by ``scale`` (nearest) and put ``label`` on a strip above it."""
    from PIL import Image, ImageDraw

    big = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    strip = Image.new("RGB", (big.shape[2], LABEL_PIXELS), (0, 0, 0))
    ImageDraw.Draw(strip).text((3, 2), label, fill=(255, 255, 255))
    header = np.broadcast_to(np.asarray(strip), (len(big), LABEL_PIXELS, big.shape[2], 3))
    return np.concatenate([header, big], axis=1)


def side_by_side(panels: dict[str, np.ndarray], scale: int) -> np.ndarray:
    """Label each ``[F, h, w, 3]`` video and put them next to each other, ``GAP_PIXELS``
    apart (:func:`panel_layout` says where each one lands)."""
    labelled = [_labelled(frames, label, scale) for label, frames in panels.items()]
    gap = np.zeros((*labelled[0].shape[:2], GAP_PIXELS, 3), dtype=np.uint8)
    row = [labelled[0]]
    for panel in labelled[1:]:
        row += [gap, panel]
    return np.concatenate(row, axis=2)


def panel_layout(names, size: int, scale: int) -> list[dict]:
    """Where :func:`side_by_side` puts each panel's picture (display pixels), for the video's
    metadata: ``headforcing eval`` measures each panel as its own video."""
    width = size * scale
    return [
        {
            "name": name,
            "top": LABEL_PIXELS,
            "left": index * (width + GAP_PIXELS),
            "height": width,
            "width": width,
        }
        for index, name in enumerate(names)
    ]


def lockstep_streams(
    pipeline: Pipeline, prompt: str, frames: int, policies: list, seed: int
) -> list[Iterator]:
    """One :meth:`Pipeline.stream` per policy, to be advanced chunk by chunk together. They
    share the model, each with its own copy of the decoder: a decoder follows one video (the
    toy decoder, like Wan's, treats the video's first frame apart)."""
    streams = []
    for index, policy in enumerate(policies):
        each = pipeline
        if index:
            each = copy.copy(pipeline)
            each.decoder = copy.deepcopy(pipeline.decoder)
        streams.append(each.stream(prompt, frames, policy, seed))
    return streams


def run_demo(
    out_dir: Path,
    frames: int = 252,
    baseline: str = "window-21 (absolute)",
    prompt: str | None = None,
    seed: int = 0,
    scale: int | str = "auto",
    overwrite: bool = True,
) -> DemoReport:
    """Generate ``frames`` frames of ``prompt`` with ``baseline`` and with Head Forcing side by
    side (a progress bar on stderr), beside the real clip, and write the video, the report, the
    plot of the metrics over time and the head map picture into ``out_dir``.

    The two runs go chunk by chunk in lockstep and the video is written as it grows, so a stop
    leaves ``demo.mp4`` with the chunks made so far (``headforcing.io.video``). Each panel
    is upscaled by ``scale`` (``"auto"``: to at least 256 px, ``headforcing.io.scale``); the
    file's metadata holds the prompt, seed and where each panel sits (``headforcing eval``).
    Each file is written beside its name and renamed (never through a link); an existing one
    is replaced only with ``overwrite``.
    """
    from tqdm import tqdm

    from headforcing.heads.plot import plot_head_map
    from headforcing.interrupts import deferred_interrupt
    from headforcing.io.files import write_text
    from headforcing.io.provenance import run_metadata
    from headforcing.io.scale import display_scale
    from headforcing.io.video import VideoWriter
    from headforcing.toyworld.pretrained import load_toy_pipeline

    pipeline = load_toy_pipeline()
    head_map = toy_head_map(pipeline)
    policies = baseline_policies(head_map)
    if baseline not in policies or baseline == "head_forcing":
        choices = ", ".join(name for name in policies if name != "head_forcing")
        raise ValueError(f"unknown baseline {baseline!r}; choose one of {choices}")
    prompt = prompt or DEMO_PROMPT
    scene = Scene.from_prompt(prompt)
    out_dir.mkdir(parents=True, exist_ok=True)

    # the truth the model was trained on: the prompt's canonical start (the seed is the noise's)
    real = render_clip(scene, frames)
    names = (baseline, "head_forcing")
    streams = lockstep_streams(pipeline, prompt, frames, [policies[name] for name in names], seed)
    videos: dict[str, list[np.ndarray]] = {name: [] for name in names}
    video_path = out_dir / DEMO_FILES["video"]
    scale = display_scale(pipeline.height, pipeline.width, scale)
    metadata = run_metadata(pipeline, prompt, seed, policies["head_forcing"], frames)
    metadata |= {
        "policy": f"{baseline} | head_forcing",
        "scale": scale,  # of each panel; the writer adds none
        "panels": panel_layout(("real clip", *names), pipeline.height, scale),
    }
    writer = VideoWriter(
        video_path, fps=pipeline.preset.video.fps, overwrite=overwrite, metadata=metadata
    )
    complete = False
    try:
        with tqdm(total=frames, unit="frame", desc="demo", file=sys.stderr) as bar:
            for chunks in zip(*streams, strict=True):
                start = writer.frames_written
                panels = {"real clip": real[start : start + len(chunks[0].frames[0])]}
                for name, chunk in zip(names, chunks, strict=True):
                    videos[name].append(chunk.frames[0].numpy())
                    panels[name] = videos[name][-1]
                with deferred_interrupt():
                    picture = side_by_side(panels, scale)
                    writer.write(torch.from_numpy(np.ascontiguousarray(picture)))
                bar.update(len(panels["real clip"]))
        complete = True
    finally:
        with deferred_interrupt():  # whole: a plain MP4; cut short: the fragments so far
            if complete:
                writer.finish()
            else:
                writer.close()
    # measure every segment of every video, then report
    generated = {name: np.concatenate(chunks) for name, chunks in videos.items()}
    per_video = {
        name: video_metrics(video, scene)
        for name, video in {"real clip": real, **generated}.items()
    }
    bounds = segment_bounds(frames)
    plot = plot_over_time(per_video, bounds, out_dir / DEMO_FILES["plot"], overwrite)
    picture = plot_head_map(head_map, out_dir / DEMO_FILES["head_map"], overwrite)
    report = out_dir / DEMO_FILES["report"]
    write_text(report, report_text(prompt, seed, per_video, bounds, baseline), overwrite)
    summary = summary_line(per_video, baseline)
    return DemoReport(video_path, report, plot, picture, summary)
