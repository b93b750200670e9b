"""What ``batch`` runs, from its options: the policies of the sweep (and their head maps), every
item's length, the output folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from headforcing.batch.items import BatchItem
from headforcing.cache.policies import make_policy
from headforcing.pipeline import MAX_LATENT_FRAMES

BATCH_POLICY_PARAMS = ("window_frames", "sink_frames", "positions")


def batch_policy(
    name: str,
    *,
    base=None,
    window_frames: int | None = None,
    sink_frames: int | None = None,
    positions: str | None = None,
):
    """Policy ``name`` with the options of --window-frames/--sink-frames/--positions it takes;
    ``base``: a base model's defaults (:mod:`headforcing.bases`), as generate uses them."""
    from headforcing.cache.policies import policy_class

    fields = policy_class(name).__dataclass_fields__  # unknown: the error lists valid names
    given = {"window_frames": window_frames, "sink_frames": sink_frames, "positions": positions}
    params = {key: given[key] for key in BATCH_POLICY_PARAMS if key in fields}
    if base is not None:  # the base's defaults, as generate uses them
        from headforcing.bases import base_policy

        return base_policy(base, name, **params)
    return make_policy(name, **params)


def batch_policies(names: list[str], items: list[BatchItem], prompts_file: Path, **options) -> dict:
    """The policies of ``names`` and of the items' own lists (by name, in order), each made by
    :func:`batch_policy` with ``options``; an option that none of them takes is refused."""
    policies = {name: batch_policy(name, **options) for name in dict.fromkeys(names)}
    for item in items:
        for name in item.policies or ():
            try:
                policies.setdefault(name, batch_policy(name, **options))
            except ValueError as error:
                raise ValueError(f"{prompts_file} line {item.line}: {error}") from None
    for key in BATCH_POLICY_PARAMS:
        takers = [name for name in policies if key in type(policies[name]).__dataclass_fields__]
        if options.get(key) is not None and not takers:
            option = "--" + key.replace("_", "-")
            raise ValueError(f"{option} applies to none of the policies {', '.join(policies)}")
    return policies


def with_head_maps(
    pipeline,
    policies: dict,
    head_map,
    first_prompt,
    seed: int,
    is_main: bool,
    report: Callable[[str], None],
) -> dict:
    """Every policy of the sweep with its head map: ``head_map`` (--head-map), else the stored
    or shipped one, else one profiled once on the first item, the same on every rank (then
    stored by rank 0): every video gets one map. Rank 0 ``report``s where each came from."""
    from headforcing.heads.lookup import attach_head_map, storer

    for name, policy in policies.items():
        policy, source = attach_head_map(policy, head_map, pipeline)
        if getattr(policy, "head_map", "-") is None:  # a head-map policy without one
            # once, on the first item, the same on every rank: every video gets one map
            profiled = pipeline.calibrate(first_prompt, seed)
            if is_main:
                storer(pipeline, report)(profiled)
            policy, source = policy.with_head_map(profiled), "profiled on the first item"
        if is_main and source != "-":
            report(f"head map: {source}")
        policies[name] = policy
    return policies


def batch_lengths(prompts_file: Path, default_frames: int, video) -> Callable[[BatchItem], int]:
    """``frames_of(item)``: an item's latent frames (its seconds/frames, else the options'),
    checked against its schedule; ``video``: the preset's video config."""
    from headforcing.pipeline import latent_frames_for_seconds

    def frames_of(item) -> int:
        where = f"{prompts_file} line {item.line}"
        frames = default_frames
        if item.frames is not None:
            frames = item.frames
        elif item.seconds is not None:
            frames = latent_frames_for_seconds(item.seconds, video.fps, video.vae_stride[0])
        if not 1 <= frames <= MAX_LATENT_FRAMES:
            raise ValueError(f"{where}: {frames} latent frames; give 1..{MAX_LATENT_FRAMES}")
        if not isinstance(item.prompt, str):
            item.prompt.check_length(frames)
        return frames

    return frames_of


def check_out_dir(path: Path) -> Path:
    """Refuse an output folder that is a file or cannot be written; create it."""
    import tempfile

    if path.exists() and not path.is_dir():
        raise ValueError(f"--out-dir {path} is a file; give a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise ValueError(f"--out-dir {path}: cannot write there ({error.strerror})") from None
    return path
