"""Head maps saved per model: profile once, reuse on every later run of the same weights.

Maps live in ``$HEADFORCING_CACHE_DIR`` (default ``~/.cache/headforcing``) under
``head_maps/<preset>-<weights id>.json``; the weights id is a fingerprint of the checkpoint
(size and the first and last MiB of each file, SHA-256), or a name for built-in weights.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from headforcing.heads.headmap import HeadMap

_CHUNK = 1 << 20


def cache_dir() -> Path:
    root = os.environ.get("HEADFORCING_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "headforcing"


def fingerprint(path: str | Path) -> str:
    """A short id of a weights file or folder that changes when the weights do."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}".encode())
        with file.open("rb") as handle:
            digest.update(handle.read(_CHUNK))
            if size > 2 * _CHUNK:
                handle.seek(size - _CHUNK)
                digest.update(handle.read(_CHUNK))
    return digest.hexdigest()[:16]


def stored_map_path(preset: str, weights_id: str) -> Path:
    return cache_dir() / "head_maps" / f"{preset}-{weights_id}.json"


def load_stored_map(preset: str, weights_id: str) -> HeadMap | None:
    path = stored_map_path(preset, weights_id)
    return HeadMap.load(path) if path.exists() else None


def store_map(head_map: HeadMap, weights_id: str) -> Path:
    return head_map.save(stored_map_path(head_map.preset, weights_id))
