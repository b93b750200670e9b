"""Will a run fit, and how? The memory of a run, estimated before anything loads, and the
memory mode that makes it fit the card.

A **memory mode** says where the big parts live (:data:`MEMORY_MODES`, one per card size it is
made for):

``80gb``
    Everything on the GPU; the umT5 encoder stays loaded, so a prompt switch costs no reload.
``40gb``
    umT5 on the GPU only while it encodes: freed after every prompt, read again (memory-mapped)
    at a prompt switch.
``24gb``
    umT5 on the CPU (bf16 when the run is bf16, the precision of its file): the GPU never holds
    it; a prompt is encoded on the CPU in a few seconds.
``16gb``
    As ``24gb``, and the VAE decodes one latent frame per call instead of a whole chunk: the
    same pixels, in bounded memory (the decoder's transient peak grows with the frames of a
    call).

Every mode runs the transformer and the VAE in the run's dtype (bf16 on CUDA), norms and
modulation in float32. With ``auto`` the most generous mode whose estimate fits the device's
free memory is picked, and the run is refused (one line, with the numbers) when none does.

The estimate itself is :mod:`headforcing.memory_estimate`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch

from headforcing.cache.policy import CachePolicy
from headforcing.memory_estimate import (
    GIB,
    MEMORY_MODES,
    MODE_NAMES,
    MemoryEstimate,
    MemoryMode,
    RunShape,
    estimate_memory,
    get_mode,
)
from headforcing.model.config import Preset

__all__ = [
    "MEMORY_MODES",
    "MODE_NAMES",
    "USABLE_SHARE",
    "MemoryMode",
    "MemoryPlan",
    "free_memory",
    "get_mode",
    "plan_memory",
    "plan_run",
]

# share of the free memory a run may plan to use
USABLE_SHARE = 0.9


# ------------------------------------------------------------------------------ the decision


def free_memory(device: torch.device) -> int | None:
    """Free bytes on ``device``: CUDA's own count, or the kernel's MemAvailable for the CPU
    (``None`` when neither can be read)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


@dataclass(frozen=True)
class MemoryPlan:
    """The mode a run takes on its device, with its estimate and the free memory it saw."""

    mode: MemoryMode
    estimate: MemoryEstimate
    device: str
    free: int | None

    def line(self) -> str:
        free = "free memory unknown" if self.free is None else f"{self.free / GIB:.1f} GiB free"
        estimate = self.estimate
        return (
            f"memory: mode {self.mode.name} ({self.mode.summary}) on {self.device}, {free}: peak "
            f"about {estimate.total / GIB:.1f} GiB (generating {estimate.generating / GIB:.1f}, "
            f"encoding a prompt {estimate.encoding / GIB:.1f}): {estimate.parts()}"
        )


def plan_memory(
    run: RunShape,
    device: torch.device,
    mode: str = "auto",
    *,
    free: int | None = None,
    device_name: str | None = None,
    text_on_device: bool | None = None,
    keep_text_encoder: bool | None = None,
) -> MemoryPlan:
    """The memory mode of ``run`` on ``device``: ``mode``, or with ``auto`` the most generous
    one whose estimate fits the usable share of the free memory (``free``: the device's, read
    now, unless given). ``text_on_device`` and ``keep_text_encoder``, when given (the user's
    ``--text-device`` and ``--keep-text-encoder``), override every mode's.

    Raises
    ------
    ValueError
        One line with the numbers, when the mode asked for (or, with ``auto``, the leanest one)
        does not fit.
    """
    free = free_memory(device) if free is None else free
    name = device_name or str(device)
    candidates = MEMORY_MODES if mode == "auto" else (get_mode(mode),)
    if device.type != "cuda" and mode == "auto":
        # one memory for all, the CPU's: umT5 held only while it encodes, as the 40gb mode
        candidates = (get_mode("40gb"),)
    overrides = {"text_on_device": text_on_device, "keep_text_encoder": keep_text_encoder}
    overrides = {key: value for key, value in overrides.items() if value is not None}
    candidates = tuple(dataclasses.replace(candidate, **overrides) for candidate in candidates)
    for candidate in candidates:
        estimate = estimate_memory(run, candidate)
        if free is None or estimate.total <= USABLE_SHARE * free:
            return MemoryPlan(candidate, estimate, name, free)
    what = f"{run.width}x{run.height} frames, {run.num_frames} latent frames with {run.policy.name}"
    if mode == "auto" and device.type == "cuda":
        lead = f"no memory mode fits {what} on {name}: the leanest, {candidate.name},"
    elif mode == "auto":
        lead = f"{what}"
    else:
        lead = f"--memory-mode {candidate.name} with {what}"
    fix = "make the frames smaller (--height/--width), keep fewer frames (--policy window, "
    fix += "--window-frames) or use a larger device"
    if mode != "auto" and candidate is not MEMORY_MODES[-1] and device.type == "cuda":
        fix = f"use --memory-mode auto (or a leaner mode), {fix}"
    raise ValueError(
        f"{lead} needs about {estimate.total / GIB:.1f} GiB on {name} ({estimate.parts()}) but "
        f"{free / GIB:.1f} GiB are free; {fix}"
    )


def plan_run(
    preset: Preset,
    height: int,
    width: int,
    dtype: torch.dtype,
    policy: CachePolicy,
    num_frames: int,
    device: torch.device,
    *,
    real_weights: bool = False,
    switches: bool = False,
    switch_mode: str | None = None,
    mode: str = "auto",
    text_device: torch.device | None = None,
    keep_text_encoder: bool | None = None,
    text_shape=None,
    scale: int = 1,
) -> MemoryPlan:
    """:func:`plan_memory` of a run of ``preset`` (real weights: a umT5 encoder of
    ``text_shape``, default Wan's umT5-XXL, and the Wan VAE; else the preset's stand-ins);
    ``text_device``: the user's choice, else the mode's."""
    from headforcing.io.umt5 import UMT5_XXL, umt5_dtype
    from headforcing.speed import device_name

    if real_weights and text_shape is None:
        text_shape = UMT5_XXL

    run = RunShape(
        preset,
        height,
        width,
        dtype,
        policy,
        num_frames,
        switches=switches,
        switch_mode=switch_mode,
        text_shape=text_shape if real_weights else None,
        text_dtype=umt5_dtype(dtype, text_device or device),
        wan_vae=real_weights,
        scale=scale,
    )
    return plan_memory(
        run,
        device,
        mode,
        device_name=device_name(device),
        text_on_device=None if text_device is None else text_device == device,
        keep_text_encoder=keep_text_encoder,
    )
