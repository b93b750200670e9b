"""Counting the bytes a computation allocates without a GPU: run it on the meta device (shapes
and dtypes, no data) under a dispatch mode that follows every tensor storage an op creates
until the last reference to it dies, and keeps the peak."""

import gc
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


def tensor_bytes(tensors) -> int:
    """Bytes of distinct storages among ``tensors`` (views and tied weights counted once)."""
    storages = {t.untyped_storage()._cdata: t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def module_bytes(module: torch.nn.Module) -> int:
    return tensor_bytes([*module.parameters(), *module.buffers()])


def live_storages() -> set[int]:
    """Every storage some Python object holds now."""
    # type(), not isinstance(): the latter asks objects for their __class__, which deprecated
    # module aliases answer with a warning
    objects = gc.get_objects()
    return {o.untyped_storage()._cdata for o in objects if issubclass(type(o), torch.Tensor)}


class PeakBytes(TorchDispatchMode):
    """Peak bytes of the storages created under this mode, plus those of ``tracked`` (tensors
    that exist before and may be freed during it, e.g. a decoder's cache). Storages that exist
    before and are not tracked (weights, buffers written in place) are not counted."""

    def __init__(self, tracked=()):
        super().__init__()
        tracked = list(tracked)
        self.known = live_storages() - {t.untyped_storage()._cdata for t in tracked}
        self.live = self.peak = 0
        self.alive: set[int] = set()
        for tensor in tracked:
            self._follow(tensor.untyped_storage())
        self.peak = self.live

    def _follow(self, storage) -> None:
        key = storage._cdata
        if key in self.known or key in self.alive:
            return
        size = storage.nbytes()
        self.alive.add(key)
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._freed, key, size)

    def _freed(self, key: int, size: int) -> None:
        self.alive.discard(key)
        self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self._follow(tensor.untyped_storage())
        return out
