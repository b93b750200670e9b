"""The user's files: reading a text file, and the one rule every output file follows.

Reading: :func:`read_text`, one-line errors that name the file and the fix.

Writing (every command: videos, head maps, JSON, pictures, reports, manifests):

- :func:`check_output_path`, before any work: a wrong suffix, a symbolic link (live or
  dangling: never written through, even with ``--overwrite``), a folder, an existing file
  unless ``overwrite``, and a folder this process cannot create files in are refused with one
  line naming the option and the fix. It creates nothing.
- :func:`written_beside` (or :func:`write_bytes`), when the file is written: the bytes go to
  a new hidden file beside the target (created with ``O_EXCL | O_NOFOLLOW``) and are renamed
  onto the target only once whole (:func:`publish`), so a stop or an error never leaves an
  empty or half-written target, and a link that appears at the target meanwhile is replaced,
  never followed.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
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


def check_output_path(
    path: str | Path,
    *,
    option: str,
    overwrite: bool = False,
    suffixes: tuple[str, ...] = (),
    overwrite_option: str | None = "--overwrite",
) -> Path:
    """Refuse an output path before anything is computed; returns it as a Path.

    ``option`` names the path in errors (``--out``, ``--json``); ``suffixes``: the endings
    allowed (``(".mp4",)``; none: any); ``overwrite_option``: the flag that allows replacing
    an existing file, named in the refusal (``None``: the command has none). Creates nothing.
    """
    path = Path(path)
    if suffixes and path.suffix.lower() not in suffixes:
        kind = suffixes[0].removeprefix(".").upper()
        raise ValueError(
            f"{option} {path}: this is written as {kind}; give a name ending in {suffixes[0]} "
            f"(e.g. {path.with_suffix(suffixes[0]).name})"
        )
    if path.is_symlink():  # live or dangling
        raise ValueError(
            f"{option} {path} is a symbolic link; headforcing never writes through a link: "
            f"give the path of a regular file, or remove the link"
        )
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder; give a file name")
    if path.exists() and not overwrite:
        fix = f"pass {overwrite_option} to replace it, or " if overwrite_option else ""
        raise ValueError(f"{option} {path} already exists; {fix}choose another {option}")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"{option} {path}: {folder} is not a folder; choose another {option}")
    refusal = _cannot_create_in(folder)
    if refusal is not None:
        raise ValueError(
            f"{option} {path}: cannot create files in {folder} ({refusal}); choose another {option}"
        )
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{option} {path} is read-only; choose another {option}")
    return path


def _cannot_create_in(folder: Path) -> str | None:
    """Why no file can be created in ``folder``, or None: a real probe (permissions,
    read-only mounts, ACLs) that creates and removes a file."""
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        return error.strerror or type(error).__name__
    return None


def beside(path: Path) -> Path:
    """A fresh hidden file next to ``path`` (same folder, same suffix), created empty with
    ``O_EXCL | O_NOFOLLOW``: nobody else's file, and no link, is ever written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        candidate = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.part{path.suffix}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        try:
            os.close(os.open(candidate, flags, 0o644))
        except FileExistsError:
            continue
        return candidate


def publish(written: Path, path: Path, overwrite: bool) -> None:
    """Rename the whole file ``written`` onto ``path``. Without ``overwrite`` a file that
    appeared at ``path`` meanwhile is kept (a hard link never replaces one); with it, a rename
    replaces a regular file or a link itself, never what a link points to."""
    if overwrite:
        os.replace(written, path)
        return
    try:
        os.link(written, path)
    except FileExistsError:
        written.unlink(missing_ok=True)
        raise ValueError(
            f"{path} appeared while it was being written; pass --overwrite to replace it, or "
            "choose another path"
        ) from None
    except OSError:  # a file system without hard links: check, then rename
        if os.path.lexists(path):
            written.unlink(missing_ok=True)
            raise ValueError(f"{path} appeared while it was being written") from None
        os.replace(written, path)
        return
    written.unlink()


@contextmanager
def written_beside(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh file beside ``path`` to write; once the block ends normally it replaces
    ``path`` (:func:`publish`); if it raises (a stop, an error), it is removed."""
    path = Path(path)
    written = beside(path)
    try:
        yield written
    except BaseException:
        written.unlink(missing_ok=True)
        raise
    publish(written, path, overwrite)


def write_bytes(path: str | Path, data: bytes, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` beside and rename (:func:`written_beside`)."""
    path = Path(path)
    with written_beside(path, overwrite) as written:
        written.write_bytes(data)
    return path


def write_text(path: str | Path, text: str, overwrite: bool = False) -> Path:
    """Write UTF-8 ``text`` to ``path`` beside and rename (:func:`written_beside`)."""
    return write_bytes(path, text.encode("utf-8"), overwrite)
