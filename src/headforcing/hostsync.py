"""Counting what a GPU pays for, below Python: ATen ops and host reads.

A GPU pays for every kernel launch (host time, and device time even inside a CUDA graph) and
stalls on every read of device data by the host. :class:`DispatchCounter` counts both at the
ATen dispatch level (a ``TorchDispatchMode``), on any device, so a CPU measures exactly what a
GPU would pay:

- **host reads**: ``aten::_local_scalar_dense`` (what ``.item()``, ``bool()``, ``int()`` and
  indexing with a 0-dim tensor call), ``nonzero``, ``equal``, ``masked_select``, ``unique``,
  boolean-mask indexing and ``repeat_interleave`` with tensor repeats (their output size is
  data), and copies to the CPU. ``tolist()``, ``numpy()`` and ``cpu()`` of a CPU tensor never
  reach the dispatcher, so they are counted where Python calls them (on a GPU each is a copy to
  the host). A ``TorchFunctionMode`` alone misses the reads inside indexing; this sees them.
- **backend ops**: every op that reaches a backend kernel, the way the backend sees it:
  composite ops are decomposed into the ops they run (so the count is the same under
  ``no_grad`` and ``inference_mode``), views and conversions that return their input are left
  out (they launch nothing).

The engine's rule (STYLE.md, "the hot path"): no host read per chunk once memories are full,
at most one before, whatever the number of layers.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
# ops whose every call makes the host wait for the device
_READ_OPS = {
    "aten::_local_scalar_dense",
    "aten::nonzero",
    "aten::equal",
    "aten::masked_select",
    "aten::_unique",
    "aten::_unique2",
    "aten::unique_dim",
    "aten::unique_consecutive",
    "aten::unique_dim_consecutive",
}
# ops that change a tensor's metadata only: no kernel, no count
_METADATA_OPS = {"aten::detach_", "aten::lift_fresh", "aten::_unsafe_view"}
# Python calls that copy to the host without reaching the dispatcher for a CPU tensor
_PYTHON_READS = {torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu}


def _reads(name: str, args, kwargs, out) -> bool:
    """Whether this backend op reads device data on the host."""
    if name in _READ_OPS:
        return True
    if name in ("aten::index", "aten::index_put_", "aten::index_put"):
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        return any(
            isinstance(index, torch.Tensor) and index.dtype == torch.bool for index in indices
        )
    if name == "aten::repeat_interleave":
        return kwargs.get("output_size") is None and isinstance(args[0], torch.Tensor)
    if name == "aten::_to_copy":
        source = args[0]
        return source.device.type != "cpu" and isinstance(out, torch.Tensor) and out.is_cpu
    if name == "aten::copy_":
        target, source = args[0], args[1]
        return target.is_cpu and isinstance(source, torch.Tensor) and not source.is_cpu
    return False


def _no_op(func, args, out) -> bool:
    """A conversion that returned its input (an in-place op returns it too, and counts)."""
    if func._schema.is_mutable:
        return False
    return any(out is arg for arg in args if isinstance(arg, torch.Tensor))


class _Dispatch(TorchDispatchMode):
    def __init__(self, owner: DispatchCounter) -> None:
        super().__init__()
        self.owner = owner

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), "CompositeImplicitAutograd"):
            with self:  # inside its handler a mode is off: its parts come back through it
                decomposed = func.decompose(*args, **kwargs)
            if decomposed is not NotImplemented:
                return decomposed
        out = func(*args, **kwargs)
        owner = self.owner
        if owner.inside_python_read or func.is_view or _no_op(func, args, out):
            return out
        name = func._schema.name
        if name in _METADATA_OPS:
            return out
        owner.ops += 1
        owner.op_calls[name] += 1
        if _reads(name, args, kwargs, out):
            owner.count += 1
            owner.calls[name] += 1
        return out


class _Python(TorchFunctionMode):
    def __init__(self, owner: DispatchCounter) -> None:
        super().__init__()
        self.owner = owner

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        owner = self.owner
        if func not in _PYTHON_READS or owner.inside_python_read:
            return func(*args, **kwargs)
        owner.count += 1
        owner.calls[func.__name__] += 1
        owner.inside_python_read = True  # its own dispatch (a GPU's copy) is this one read
        try:
            return func(*args, **kwargs)
        finally:
            owner.inside_python_read = False


class DispatchCounter:
    """``with DispatchCounter() as counter: ...``: ``counter.count`` host reads (by op in
    ``counter.calls``) and ``counter.ops`` backend ops (by op in ``counter.op_calls``)."""

    def __init__(self) -> None:
        self.count = 0
        self.ops = 0
        self.calls: Counter[str] = Counter()
        self.op_calls: Counter[str] = Counter()
        self.inside_python_read = False
        self._modes = (_Python(self), _Dispatch(self))

    def __enter__(self) -> DispatchCounter:
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
