"""The manifest of a ``batch`` folder: one JSON row per finished video.

Every rank appends to its own file, ``manifest.rank{r}.jsonl`` (each row written whole,
flushed and fsynced, after the video was renamed into place), so ranks never share a file; at
the end rank 0 merges every row into ``manifest.jsonl`` (written aside, then renamed) and
removes the rank files. A video counts as done when its file exists and some manifest row names
it: a crash between the rename and the row leaves a video without a row, never a wrong row; a
rerun refuses that file like any existing output (remove it, or ``--overwrite``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from headforcing.io.files import written_beside

MANIFEST = "manifest.jsonl"
PARTIAL = ".partial"  # videos being written; a crash leaves them here, outside every policy folder


def rank_manifest(out_dir: Path, rank: int) -> Path:
    return out_dir / f"manifest.rank{rank}.jsonl"


def manifest_files(out_dir: Path) -> list[Path]:
    return sorted(out_dir.glob("manifest*.jsonl"))


def read_rows(out_dir: Path) -> dict[str, dict]:
    """Every row of every manifest file of ``out_dir``, by video file (a later row wins). A
    line that is not a JSON object (a row cut by a crash) is skipped."""
    rows: dict[str, dict] = {}
    for path in manifest_files(out_dir):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("file"), str):
                rows[row["file"]] = row
    return rows


def finished(out_dir: Path, files: list[str]) -> set[str]:
    """Which of ``files`` are done: the video exists and a manifest row names it."""
    rows = read_rows(out_dir)
    return {file for file in files if file in rows and (out_dir / file).is_file()}


def append_row(path: Path, row: dict) -> None:
    """Append one row, whole, and make it durable before the next video starts (never
    through a symbolic link)."""
    line = json.dumps(row, ensure_ascii=False) + "\n"
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
    with os.fdopen(os.open(path, flags, 0o644), "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def merge(out_dir: Path, order: list[str]) -> Path:
    """Merge every manifest file into ``manifest.jsonl``: rows of ``order`` first, in that
    order, then any others (earlier runs' items); remove the rank files."""
    rows = read_rows(out_dir)
    place = {file: index for index, file in enumerate(order)}
    files = sorted(rows, key=lambda file: (place.get(file, len(place)), file))
    target = out_dir / MANIFEST
    with (
        written_beside(target, overwrite=True) as aside,
        open(aside, "w", encoding="utf-8") as handle,
    ):
        for file in files:
            handle.write(json.dumps(rows[file], ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    for path in manifest_files(out_dir):
        if path != target:
            path.unlink(missing_ok=True)
    return target
