"""Reading a user's text file with one-line errors that name it and the fix."""

from __future__ import annotations

from pathlib import Path


def read_text(path: str | Path, what: str) -> str:
    """The UTF-8 text of ``path``; ``what`` names it in errors (``--prompts``, ``PROMPTS``,
    ``the prompt schedule``). Raises ValueError for a file that cannot be read or is not UTF-8."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{what} {path} is not UTF-8 text (byte {error.object[error.start]:#04x} at offset "
            f"{error.start}); save it as UTF-8"
        ) from None
    except OSError as error:
        raise ValueError(f"{what} {path}: cannot read it ({error.strerror})") from None
