"""Head maps: per-head attention statistics, the labels a rule derived from them, and the rule.

A head map is a JSON file that policies consume::

    {"format": "headforcing.head_map/1", "preset": "wan2.1-t2v-1.3b",
     "num_layers": 30, "num_heads": 12,
     "labels": [["memory", "anchor", ...], ...],                  # [layer][head]
     "stats": {"sink": [[...]], "middle": ..., "recent": ..., "current": ...},
     "rule": {"name": "percentile", "anchor_fraction": 0.25, "local_fraction": 0.2},
     "calibration": {...}}                                         # how the stats were measured

``stats`` are mean attention probability masses of sampled query rows of the current chunk on
four key regions: the sink (first chunk), the middle history, the recent frames before the
chunk, and the current chunk itself; they sum to 1 per head.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

FORMAT = "headforcing.head_map/1"
HEAD_TYPES = ("local", "anchor", "memory")
REGIONS = ("sink", "middle", "recent", "current")


@dataclass(frozen=True)
class HeadMap:
    """Labels (and the statistics behind them) for every head of every layer."""

    preset: str
    labels: tuple[tuple[str, ...], ...]
    stats: dict[str, list[list[float]]] = field(default_factory=dict)
    rule: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        widths = {len(row) for row in self.labels}
        if not self.labels or len(widths) != 1:
            raise ValueError("head map: labels must be a non-empty [layer][head] grid")
        unknown = sorted({label for row in self.labels for label in row} - set(HEAD_TYPES))
        if unknown:
            raise ValueError(
                f"head map: unknown head label(s) {unknown}; valid labels: {', '.join(HEAD_TYPES)}"
            )

    @property
    def num_layers(self) -> int:
        return len(self.labels)

    @property
    def num_heads(self) -> int:
        return len(self.labels[0])

    def heads_of(self, layer: int, label: str) -> tuple[int, ...]:
        return tuple(head for head, kind in enumerate(self.labels[layer]) if kind == label)

    def counts(self) -> dict[str, int]:
        flat = [label for row in self.labels for label in row]
        return {label: flat.count(label) for label in HEAD_TYPES}

    def check(self, preset: str, num_layers: int, num_heads: int) -> None:
        """Raise ValueError unless this map was made for ``preset`` of this shape."""
        if (self.num_layers, self.num_heads) != (num_layers, num_heads):
            raise ValueError(
                f"head map has {self.num_layers} layers x {self.num_heads} heads, the model "
                f"{num_layers} x {num_heads}; profile this model (headforcing profile)"
            )
        if self.preset != preset:
            raise ValueError(
                f"head map was made for preset {self.preset!r}, not {preset!r}; "
                "profile this model (headforcing profile) or pass the right --head-map"
            )

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "preset": self.preset,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "labels": [list(row) for row in self.labels],
            "stats": self.stats,
            "rule": self.rule,
            "calibration": self.calibration,
        }

    def save(self, path: str | Path, overwrite: bool = True) -> Path:
        """Write the map as JSON, beside and renamed (:mod:`headforcing.io.files`): never
        through a link; an existing file is replaced only with ``overwrite``."""
        from headforcing.io.files import write_text

        return write_text(path, json.dumps(self.to_json(), indent=1), overwrite)

    @classmethod
    def load(cls, path: str | Path) -> HeadMap:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"head map {path} does not exist") from None
        except IsADirectoryError:
            raise ValueError(
                f"head map {path} is a folder; give the head map's JSON file"
            ) from None
        except OSError as error:
            raise ValueError(f"head map {path}: cannot read it ({error.strerror})") from None
        except UnicodeDecodeError:
            raise ValueError(f"head map {path} is not UTF-8 text; give a head map JSON") from None
        except json.JSONDecodeError as error:
            raise ValueError(f"head map {path} is not valid JSON: {error}") from None
        except RecursionError:
            raise ValueError(
                f"head map {path} is nested too deeply to be a head map; give a file written "
                "by headforcing profile"
            ) from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f'{path} is not a head map (expected "format": "{FORMAT}")')
        try:
            head_map = cls(
                preset=data["preset"],
                labels=tuple(tuple(row) for row in data["labels"]),
                stats=data.get("stats", {}),
                rule=data.get("rule", {}),
                calibration=data.get("calibration", {}),
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"head map {path} is malformed: {error!r}") from None
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
        if (data.get("num_layers"), data.get("num_heads")) != (
            head_map.num_layers,
            head_map.num_heads,
        ):
            raise ValueError(f"head map {path}: num_layers/num_heads disagree with its labels")
        return head_map


def _grid(stats: dict[str, list[list[float]]], region: str) -> torch.Tensor:
    if region not in stats:
        raise ValueError(f"head statistics lack the {region!r} region")
    return torch.tensor(stats[region], dtype=torch.float64)


def _labels_from(anchor: torch.Tensor, local: torch.Tensor) -> tuple[tuple[str, ...], ...]:
    rows = []
    for layer in range(anchor.shape[0]):
        row = []
        for head in range(anchor.shape[1]):
            if anchor[layer, head]:
                row.append("anchor")
            elif local[layer, head]:
                row.append("local")
            else:
                row.append("memory")
        rows.append(tuple(row))
    return tuple(rows)


def classify_percentile(
    stats: dict[str, list[list[float]]], anchor_fraction: float = 0.25, local_fraction: float = 0.2
) -> tuple[tuple[tuple[str, ...], ...], dict]:
    """Over all heads: the top ``anchor_fraction`` by sink mass are anchor; of the rest, the top
    ``local_fraction`` by current-chunk mass are local; the others memory (REFERENCE.md 1)."""
    for name, value in (("anchor_fraction", anchor_fraction), ("local_fraction", local_fraction)):
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must lie in [0, 1], got {value}")
    sink, current = _grid(stats, "sink"), _grid(stats, "current")
    total = sink.numel()
    anchor = torch.zeros(total, dtype=torch.bool)
    anchor[
        torch.argsort(sink.flatten(), descending=True, stable=True)[
            : round(anchor_fraction * total)
        ]
    ] = True
    rest = (~anchor).nonzero().squeeze(1)
    order = torch.argsort(current.flatten()[rest], descending=True, stable=True)
    local = torch.zeros(total, dtype=torch.bool)
    local[rest[order[: round(local_fraction * rest.numel())]]] = True
    rule = {
        "name": "percentile",
        "anchor_fraction": anchor_fraction,
        "local_fraction": local_fraction,
    }
    return _labels_from(anchor.view_as(sink), local.view_as(sink)), rule


def classify_threshold(
    stats: dict[str, list[list[float]]], anchor_threshold: float = 0.3, local_threshold: float = 0.5
) -> tuple[tuple[tuple[str, ...], ...], dict]:
    """Sink mass >= ``anchor_threshold``: anchor; else current-chunk mass >= ``local_threshold``:
    local; else memory."""
    for name, value in (
        ("anchor_threshold", anchor_threshold),
        ("local_threshold", local_threshold),
    ):
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must lie in [0, 1], got {value}")
    sink, current = _grid(stats, "sink"), _grid(stats, "current")
    anchor = sink >= anchor_threshold
    local = ~anchor & (current >= local_threshold)
    rule = {
        "name": "threshold",
        "anchor_threshold": anchor_threshold,
        "local_threshold": local_threshold,
    }
    return _labels_from(anchor, local), rule


RULES = {"percentile": classify_percentile, "threshold": classify_threshold}
