"""The command line of the toy world's paired benchmarks: ``benchmarks/long_horizon.py`` and
``benchmarks/head_forcing_variants.py`` (commands in their docstrings and docs/toyworld.md).

Both roll out the same reporting prompts (:func:`~headforcing.toyworld.longrun.reporting_prompts`)
and seeds with every policy, one record per video in the results folder (resumed on a rerun,
split over ``torchrun`` ranks: :mod:`headforcing.toyworld.rollouts`), and write their tables
there as markdown and JSON (:mod:`headforcing.toyworld.paired`). They differ in the policies,
the rollout length and what is read off each video (a :class:`Report`); with the same
``--rng`` they share the results folder, so the variants reuse the long-horizon rollouts.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import torch

from headforcing.distributed.world import World, join_world
from headforcing.heads.headmap import HeadMap
from headforcing.pipeline import Pipeline
from headforcing.toyworld.evaluate import EVAL_PROMPTS
from headforcing.toyworld.longrun import (
    LONG_HORIZON_POLICIES,
    MAIN_METRICS,
    METRICS,
    POLICY_SPECS,
    REPORTING_RNG,
    TUNING_DRAWS,
    VARIANT_POLICIES,
    Measure,
    after_first_segment,
    check_frames,
    comparisons,
    horizon_measures,
    reporting_prompts,
)
from headforcing.toyworld.metrics import SEGMENT_FRAMES, video_metrics
from headforcing.toyworld.paired import Table, differences, policy_rows
from headforcing.toyworld.rollouts import (
    Item,
    estimated_seconds,
    identity,
    longest_records,
    pending_items,
    plan_items,
    read_records,
    run_items,
)
from headforcing.toyworld.world import Scene, render_clip

HEAD_MAP_FILE = "head_map.json"


@dataclass(frozen=True)
class Report:
    """One benchmark: its files (``{name}.md``, ``{name}.json``), the policies and rollout
    length it runs by default, and the measures its tables read off each video."""

    name: str
    title: str
    policies: tuple[str, ...]
    frames: int
    measures: Callable[[int], list[Measure]]


LONG_HORIZON = Report(
    "long_horizon",
    "Cache policies at 1x, 10x and 50x the training horizon on the toy world, with intervals",
    LONG_HORIZON_POLICIES,
    1050,
    horizon_measures,
)
VARIANTS = Report(
    "variants",
    "Head Forcing's variants against its defaults and the baselines on the toy world",
    VARIANT_POLICIES,
    210,
    lambda frames: [after_first_segment(frames)],
)


def main(report: Report, argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(report, argv)
    torch.set_num_threads(args.threads)
    # the end waits for every rank's last video: give the collectives a day
    world = join_world("gloo", timeout=timedelta(hours=24))
    try:
        run(report, args, world)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        world.close()
    return 0


def parse_arguments(report: Report, argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=report.title)
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="results folder (default benchmark-results/toy-rng{RNG}; shared by both benchmarks)",
    )
    parser.add_argument("--weights", type=Path, default=None, help="toy weights folder")
    parser.add_argument(
        "--rng", type=int, default=REPORTING_RNG, help="seed of the reporting scenes' draw"
    )
    parser.add_argument("--scenes", type=int, default=16, help="reporting scenes")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="sampler seeds")
    parser.add_argument(
        "--frames", type=int, default=report.frames, help="rollout length (a multiple of 21)"
    )
    parser.add_argument(
        "--policies",
        nargs="+",
        default=list(report.policies),
        choices=list(POLICY_SPECS),
        metavar="POLICY",
        help=f"of {', '.join(POLICY_SPECS)} (default: {' '.join(report.policies)})",
    )
    parser.add_argument(
        "--policy-frames",
        nargs="+",
        default=[],
        metavar="POLICY=FRAMES",
        help="cap a policy's rollouts, e.g. full=210",
    )
    parser.add_argument(
        "--limit",
        nargs="+",
        default=[],
        metavar="POLICY=VIDEOS",
        help="cap a policy's videos (the first ones, seed by seed), e.g. full=16",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument(
        "--dry-run", action="store_true", help="print what is pending and its cost; run nothing"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="write the tables of the videos done so far"
    )
    args = parser.parse_args(argv)
    try:
        args.policy_frames = caps(args.policy_frames, "--policy-frames")
        args.limit = caps(args.limit, "--limit")
        for frames in (args.frames, *args.policy_frames.values()):
            check_frames(frames)
        report.measures(args.frames)  # the variants need two segments at least
        if args.scenes < 1 or args.threads < 1:
            raise ValueError("--scenes and --threads must be at least 1")
    except ValueError as error:
        parser.error(str(error))
    if args.out_dir is None:
        args.out_dir = Path("benchmark-results") / f"toy-rng{args.rng}"
    return args


def caps(pairs: Sequence[str], option: str) -> dict[str, int]:
    """``["full=210"]`` -> ``{"full": 210}``."""
    out = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in POLICY_SPECS or not value.isdigit():
            raise ValueError(
                f"{option} takes POLICY=NUMBER with a policy of {', '.join(POLICY_SPECS)}, "
                f"got {pair!r}"
            )
        out[name] = int(value)
    return out


def run(report: Report, args: argparse.Namespace, world: World) -> None:
    # prepare input
    from headforcing.toyworld.pretrained import load_toy_pipeline

    pipeline = load_toy_pipeline(weights_dir=args.weights)
    prompts = reporting_prompts(args.scenes, args.rng)
    items = plan_items(
        args.policies, prompts, args.seeds, args.frames, args.policy_frames, args.limit
    )
    out_dir: Path = args.out_dir
    head_map = None
    if any(POLICY_SPECS[name].needs_head_map for name in args.policies):
        generating = not (args.dry_run or args.report_only)
        head_map = on_main(world, lambda: results_head_map(pipeline, out_dir, generating))
    identities = {name: identity(name, pipeline.weights_id, head_map) for name in args.policies}

    # what is left: rank 0 reads the folder, every rank splits the same list
    pending = on_main(world, lambda: pending_items(items, read_records(out_dir), identities))
    if world.is_main:
        print(describe_plan(items, pending, world.size), file=sys.stderr, flush=True)
    if args.dry_run:
        return

    # roll out
    if not args.report_only:
        out_dir.mkdir(parents=True, exist_ok=True)
        run_items(pipeline, pending, head_map, out_dir, world)
    world.barrier()

    # report
    if world.is_main:
        tables = build_tables(
            read_records(out_dir), identities, prompts, args.seeds, report.measures(args.frames)
        )
        header = describe_settings(report, args, prompts, pipeline, head_map)
        mean_metrics = [m for m in METRICS if m not in MAIN_METRICS]
        text = "\n\n".join([header, *(t.markdown(MAIN_METRICS, mean_metrics) for t in tables)])
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{report.name}.md").write_text(text + "\n")
        summary = {
            "report": report.name,
            "settings": settings(args, prompts, pipeline, head_map),
            "tables": [table.to_json() for table in tables],
        }
        (out_dir / f"{report.name}.json").write_text(json.dumps(summary, indent=1) + "\n")
        print(text)
        print(f"written: {out_dir / report.name}.md and .json", file=sys.stderr)


def on_main(world: World, decide: Callable[[], object]):
    """``decide()`` on rank 0, its value on every rank; a user error there (``ValueError``)
    is raised on every rank instead of leaving the others waiting for the value."""
    outcome = None
    if world.is_main:
        try:
            outcome = ("value", decide())
        except ValueError as error:
            outcome = ("error", str(error))
    kind, value = world.broadcast(outcome)
    if kind == "error":
        raise ValueError(value)
    return value


def results_head_map(pipeline: Pipeline, out_dir: Path, profile: bool) -> HeadMap | None:
    """The one head map of a results folder (``head_map.json``): profiled on the evaluation
    prompts the first time videos are made there and saved with a picture, read back on every
    later run so that resumed videos use the same map. ``None`` if there is none yet and
    ``profile`` is off."""
    path = out_dir / HEAD_MAP_FILE
    if path.is_file():
        head_map = HeadMap.load(path)
        config = pipeline.model.config
        head_map.check(pipeline.preset.name, config.num_layers, config.num_heads)
        profiled_for = head_map.calibration.get("weights")
        if profiled_for != pipeline.weights_id:
            raise ValueError(
                f"{path} was profiled for weights {profiled_for}, this run loads "
                f"{pipeline.weights_id}; give these weights another --out-dir"
            )
        return head_map
    if not profile:
        return None
    from headforcing.heads.plot import plot_head_map
    from headforcing.heads.profile import profile_heads

    print(f"profiling the heads on the {len(EVAL_PROMPTS)} evaluation prompts", file=sys.stderr)
    head_map = profile_heads(pipeline, list(EVAL_PROMPTS))
    calibration = {**head_map.calibration, "weights": pipeline.weights_id}
    head_map = replace(head_map, calibration=calibration)
    head_map.save(path)
    plot_head_map(head_map, out_dir / "head_map.png")
    return head_map


def describe_plan(items: Sequence[Item], pending: Sequence[Item], ranks: int) -> str:
    """What a run will make: videos pending per policy and their estimated cost."""
    lines = [f"{len(items)} videos planned, {len(items) - len(pending)} already done"]
    for name in dict.fromkeys(item.policy for item in items):
        mine = [item for item in pending if item.policy == name]
        if mine:
            frames = sorted({item.frames for item in mine})
            seconds = sum(estimated_seconds(item) for item in mine)
            lines.append(
                f"  {name}: {len(mine)} pending, {'/'.join(map(str, frames))} frames, "
                f"about {duration(seconds)} of one thread"
            )
    total = sum(estimated_seconds(item) for item in pending)
    lines.append(
        f"estimated: {duration(total)} of one thread, {duration(total / ranks)} on {ranks} "
        "rank(s) of one thread each (an idle core; the last rank to finish sets the end)"
    )
    return "\n".join(lines)


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def build_tables(
    records: Sequence[dict],
    identities: dict[str, dict],
    prompts: Sequence[str],
    seeds: Sequence[int],
    measures: Sequence[Measure],
) -> list[Table]:
    """A table per measure from every finished video of the reporting set (its prompts and
    seeds; longer rollouts stand for shorter ones)."""
    best = longest_records(records, identities)
    reporting = {(prompt, seed) for prompt in prompts for seed in seeds}
    pairs = comparisons(list(identities))
    tables = []
    for measure in measures:
        values = {}
        for name, videos in best.items():
            measured = {video: measure.of(record["segments"]) for video, record in videos.items()}
            values[name] = {
                video: value
                for video, value in measured.items()
                if video in reporting and value is not None
            }
        real = policy_rows({"real clips": real_values(prompts, measure)}, METRICS)[0]
        rows = policy_rows(values, METRICS)
        tables.append(
            Table(measure.label, measure.frames, rows, real, differences(values, pairs, METRICS))
        )
    return tables


def real_values(prompts: Sequence[str], measure: Measure) -> dict:
    """The measure on each prompt's real clip (the canonical start the model is trained on)."""
    values = {}
    for prompt in prompts:
        scene = Scene.from_prompt(prompt)
        clip = render_clip(scene, measure.frames)[measure.start * SEGMENT_FRAMES :]
        segments = [segment.as_dict() for segment in video_metrics(clip, scene)]
        values[(prompt, 0)] = Measure(0, measure.stop - measure.start).of(segments)
    return values


def settings(args: argparse.Namespace, prompts, pipeline: Pipeline, head_map) -> dict:
    return {
        "rng": args.rng,
        "prompts": list(prompts),
        "seeds": list(args.seeds),
        "frames": args.frames,
        "policies": {name: POLICY_SPECS[name].params for name in args.policies},
        "policy_frames": args.policy_frames,
        "limit": args.limit,
        "weights": pipeline.weights_id,
        "head_map": [list(row) for row in head_map.labels] if head_map else None,
        "tuning_draws": {name: draws for name, draws in TUNING_DRAWS.items()},
    }


def describe_settings(report: Report, args, prompts, pipeline: Pipeline, head_map) -> str:
    lines = [
        f"### {report.title}",
        "",
        f"Reporting set: {len(prompts)} random scene(s) (rng {args.rng}, none of the evaluation "
        f"prompts or tuning scenes) x seeds {' '.join(map(str, args.seeds))}, rollouts of "
        f"{args.frames} frames; weights {pipeline.weights_id}.",
    ]
    if args.policy_frames or args.limit:
        capped = [f"{name} to {frames} frames" for name, frames in args.policy_frames.items()]
        capped += [f"{name} to {videos} videos" for name, videos in args.limit.items()]
        lines.append(
            f"Capped: {', '.join(capped)}; records of longer rollouts of the same videos from "
            "earlier runs count too (each row says how many videos it has); differences pair "
            "the videos both have."
        )
    if head_map is not None:
        counts = ", ".join(f"{count} {label}" for label, count in head_map.counts().items())
        lines.append(f"Head map ({HEAD_MAP_FILE}, profiled on the evaluation prompts): {counts}.")
    lines.append(
        "Each cell: mean over videos [bootstrap 95 % interval]; a difference is subject - "
        "reference over the same prompt and seed (negative: the subject's error is lower)."
    )
    return "\n".join(lines)
