"""Counting host reads: the calls that make the host wait for the device.

On a GPU every one of these blocks until the device has caught up: ``item``, ``tolist``,
``cpu``/``numpy``/``.to("cpu")``, ``bool``/``int``/``float`` of a tensor, ``nonzero`` and
everything whose output size depends on data (boolean-mask indexing, ``unique``,
``masked_select``, one-argument ``where``, ``repeat_interleave`` with tensor repeats).
:class:`HostSyncCounter` counts those calls, on any device: the CPU measures what a GPU would
pay. The engine's rule (STYLE.md, "the hot path"): at most one per chunk.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.overrides import TorchFunctionMode

Tensor = torch.Tensor
_ALWAYS = {
    Tensor.item,
    Tensor.tolist,
    Tensor.cpu,
    Tensor.numpy,
    Tensor.__bool__,
    Tensor.__int__,
    Tensor.__float__,
    Tensor.__index__,
    Tensor.nonzero,
    torch.nonzero,
    Tensor.unique,
    torch.unique,
    Tensor.unique_consecutive,
    torch.unique_consecutive,
    Tensor.masked_select,
    torch.masked_select,
    Tensor.argwhere,
    torch.argwhere,
}


def _is_bool_tensor(index) -> bool:
    if isinstance(index, tuple):
        return any(_is_bool_tensor(part) for part in index)
    return isinstance(index, Tensor) and index.dtype == torch.bool


def _to_cpu(args, kwargs) -> bool:
    """A copy of a device tensor to the CPU (a CPU tensor's ``.to("cpu")`` is no read)."""
    if args[0].device.type == "cpu":
        return False
    targets = [*args[1:], kwargs.get("device")]
    return any(
        (isinstance(target, str) and target.startswith("cpu"))
        or (isinstance(target, torch.device) and target.type == "cpu")
        for target in targets
    )


def is_host_read(func, args, kwargs) -> bool:
    """Whether calling ``func(*args, **kwargs)`` reads device data on the host."""
    if func in _ALWAYS:
        return True
    if func in (Tensor.__getitem__, Tensor.__setitem__):
        return _is_bool_tensor(args[1])
    if func is Tensor.to:
        return _to_cpu(args, kwargs)
    if func is torch.where:
        return len(args) + len(kwargs) == 1
    if func in (torch.repeat_interleave, Tensor.repeat_interleave):
        repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
        return isinstance(repeats, Tensor) and repeats.numel() > 1
    return False


class HostSyncCounter(TorchFunctionMode):
    """``with HostSyncCounter() as counter: ...``: ``counter.count`` host reads, by function
    in ``counter.calls``."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.calls: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if is_host_read(func, args, kwargs):
            self.count += 1
            self.calls[getattr(func, "__name__", str(func))] += 1
        return func(*args, **kwargs)
