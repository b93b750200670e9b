"""Reading torch pickles safely: tensors and plain containers only, never arbitrary objects."""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

_CAUSE = re.compile(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n|$)", re.DOTALL)


def load_weights_file(path: str | Path, expected: str) -> object:
    """``torch.load(weights_only=True)``, memory-mapped when the file is torch's zip format.

    ``expected`` describes the format for error messages. A file that would need arbitrary
    unpickling (which can run code) is refused with a ValueError, nothing executed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; expected {expected}")
    try:
        # mmap needs torch's zip format; legacy files still load with weights_only=True
        return torch.load(
            path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path)
        )
    except pickle.UnpicklingError as error:
        cause = _CAUSE.search(str(error))
        reason = " ".join(cause.group(1).split()) if cause else "not a torch weights file"
        raise ValueError(
            f"{path} is not a plain weights file: torch.load(weights_only=True) refused it "
            f"({reason}). We never unpickle arbitrary objects, since that can run code from the "
            f"file. Expected {expected}; if you trust the file, re-save just its tensors "
            "(torch.save of the state dict, or safetensors) and load that."
        ) from error


def load_state_dict_file(path: str | Path, expected: str) -> dict[str, torch.Tensor]:
    """A weights file that must hold a flat mapping of names to tensors."""
    state_dict = load_weights_file(path, expected)
    if not isinstance(state_dict, Mapping) or not all(
        isinstance(name, str) and isinstance(tensor, torch.Tensor)
        for name, tensor in state_dict.items()
    ):
        raise ValueError(
            f"{path} holds a {type(state_dict).__name__}, not a mapping of names to tensors; "
            f"expected {expected}"
        )
    return dict(state_dict)
