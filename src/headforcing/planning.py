"""The memory plan of a run, from the run's own parameters: which memory mode it takes on its
device, or a one-line refusal of a frame size and cache that cannot fit it
(:mod:`headforcing.resources` estimates; the loader follows the plan's mode)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from headforcing.loading import default_preset
from headforcing.model.config import get_preset

if TYPE_CHECKING:
    from headforcing.cache.policy import CachePolicy
    from headforcing.heads.headmap import HeadMap
    from headforcing.io.wan_files import RealFiles
    from headforcing.resources import MemoryPlan
    from headforcing.schedule import PromptSource


def plan_run_memory(
    *,
    policy: CachePolicy,
    num_frames: int,
    device: torch.device,
    dtype: torch.dtype,
    preset: str | None = None,
    files: RealFiles | None = None,
    prompts: str | PromptSource | None = None,
    live_prompts: bool = False,
    height: int | None = None,
    width: int | None = None,
    scale: int | str | None = None,
    switch: str | None = None,
    mode: str = "auto",
    text_device: torch.device | None = None,
    keep_text_encoder: bool | None = None,
    head_map: HeadMap | None = None,
) -> MemoryPlan:
    """Pick the memory mode of a run, or refuse a frame size and cache that cannot fit the
    device (:func:`headforcing.resources.plan_run`).

    ``files``: a real model's (its umT5's shape is read from them); ``prompts``: the run's (a
    schedule of several prompts switches), ``live_prompts``: a prompt can come at any chunk
    (interactive); ``scale``: the ``--scale`` of a run that writes a video (``None``: it
    writes none); ``switch``: the switch mode (default: the policy's); ``head_map``: the map
    the policy will take.
    """
    from headforcing.resources import plan_run

    preset = get_preset(preset or default_preset(files.model if files else None))
    real = files is not None
    if head_map is not None:
        policy = policy.with_head_map(head_map)
    # live: a prompt can come from the page at any chunk
    scheduled = prompts is not None and not isinstance(prompts, str)
    switches = live_prompts or (scheduled and len(prompts.segments) > 1)
    height = height or preset.video.height
    width = width or preset.video.width
    factor = 1
    if scale is not None:
        from headforcing.io.scale import display_scale

        factor = display_scale(height, width, scale, real_weights=real)
    return plan_run(
        preset,
        height,
        width,
        dtype,
        policy,
        num_frames,
        device,
        real_weights=real,
        text_shape=files.text_encoder_shape() if real else None,
        switches=switches,
        switch_mode=switch or policy.default_switch,
        mode=mode,
        text_device=text_device,
        keep_text_encoder=keep_text_encoder,
        scale=factor,
    )
