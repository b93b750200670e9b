"""Reading torch pickles safely: tensors and plain containers only, never arbitrary objects."""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

_CAUSE = re.compile(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n|$)", re.DOTALL)
_GLOBAL = re.compile(r"GLOBAL\s+([\w.]+)")
# a safetensors header larger than this is not one (the format caps it at 100 MB)
_MAX_HEADER_BYTES = 100_000_000


def refusal_reason(error: pickle.UnpicklingError) -> str:
    """What ``torch.load(weights_only=True)`` refused, in a few words: the global a pickle
    wanted to call (``posix.system``) when it names one."""
    text = str(error)
    found = _GLOBAL.search(text)
    if found:
        return f"it would call {found.group(1)}, which a weights file never needs"
    cause = _CAUSE.search(text)
    if cause and " ".join(cause.group(1).split()):
        return " ".join(cause.group(1).split())
    return "not a torch weights file"


def truncated(path: Path, expected: str, detail: str) -> ValueError:
    return ValueError(
        f"{path} is empty, truncated or not a weights file ({detail}); expected {expected}: "
        "download or copy it again"
    )


def check_safetensors_file(path: str | Path, expected: str) -> None:
    """Refuse an empty or truncated ``.safetensors`` file from its header, reading no tensor:
    the header gives every tensor's byte range, so the file size it implies is known."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as file:
        prefix = file.read(8)
        header_bytes = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if not 0 < header_bytes <= min(size - 8, _MAX_HEADER_BYTES):
            raise truncated(path, expected, f"{size} bytes, no complete safetensors header")
        try:
            header = json.loads(file.read(header_bytes))
            ends = [
                int(entry["data_offsets"][1])
                for name, entry in header.items()
                if name != "__metadata__"
            ]
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError):
            raise truncated(path, expected, "its safetensors header is unreadable") from None
    needed = 8 + header_bytes + max(ends, default=0)
    if size < needed:
        raise truncated(path, expected, f"{size} bytes of the {needed} its header describes")


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
        if not str(error).startswith("Weights only load failed"):
            raise truncated(path, expected, str(error).splitlines()[0]) from None
        reason = refusal_reason(error)
        raise ValueError(
            f"{path} is not a plain weights file: torch.load(weights_only=True) refused it "
            f"({reason}). We never unpickle arbitrary objects, since that can run code from the "
            f"file. Expected {expected}; if you trust the file, re-save just its tensors "
            "(torch.save of the state dict, or safetensors) and load that."
        ) from None
    except (EOFError, RuntimeError) as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise truncated(path, expected, detail.split(". ")[0]) from None
    except OSError as error:
        raise ValueError(
            f"{path}: cannot read it ({error.strerror}); expected {expected}"
        ) from None


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


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_diffusers_folder(folder: str | Path, expected: str) -> list[Path]:
    """The ``.safetensors`` weight files of a diffusers/transformers model folder, each checked
    whole (:func:`check_safetensors_file`); pickle weights are refused, never read.

    Raises ValueError naming the folder, what it holds and the fix.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder; expected {expected}")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        pickles = sorted(path.name for path in folder.iterdir() if path.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise ValueError(
                f"{folder} holds pickle weights ({', '.join(pickles[:4])}) and no .safetensors: "
                "a pickle can run code, so model folders load from safetensors only; get the "
                "folder's .safetensors files (the Diffusers repositories ship them)"
            )
        raise ValueError(f"{folder} holds no .safetensors weights; expected {expected}")
    for path in weights:
        check_safetensors_file(path, expected)
    return weights


def first_line(error: BaseException) -> str:
    """An exception's message in one line, for a one-line error."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
