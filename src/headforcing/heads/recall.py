"""Attention recall: how much of a reference cache's attention the tokens a policy keeps hold.

A user tunes a policy's budgets by asking, head by head: of the attention mass the model puts
on the past (with a reference cache that keeps everything, or whatever the reference keeps),
which share lands on tokens the policy still holds? :func:`measure_recall` rolls a video out
once under the reference cache; every policy runs as a *shadow* cache fed the very same K/V at
every commit (so it selects from the same history, with its own importance and layout); at the
chosen chunks, the reference's first denoising pass is observed: sampled query rows' softmax
over the reference's keys, per head, and for every policy the share of the past mass on tokens
its group for that head keeps. The chunk itself is left out (every policy attends to it).

Recall only measures *which* tokens are kept, with the reference's attention. For a model that
breaks outside its trained range (Wan: 21 latent frames), a ``full`` reference attends at
positions it never saw; use the trained window as the reference (``--reference window``): then
recall asks which of the frames the model can still use well a policy keeps.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from headforcing.cache.kv import ChunkInfo, HeadGroup, KVCache, sample_rows, sampled_attention


class _Tee:
    """A cache-shaped driver for ``generate_chunks``: the reference makes the video, every
    shadow commits the same K/V."""

    def __init__(self, reference: KVCache, shadows: dict[str, KVCache]) -> None:
        self.reference, self.shadows = reference, shadows
        self.chunk_frames = reference.chunk_frames

    @property
    def frames_done(self) -> int:
        return self.reference.frames_done

    def begin_chunk(self, num_frames: int) -> ChunkInfo:
        for shadow in self.shadows.values():
            shadow.begin_chunk(num_frames)
        return self.reference.begin_chunk(num_frames)

    def attention(self, commit: bool = False) -> _TeePass:
        return _TeePass(self, commit)

    def end_chunk(self) -> None:
        self.reference.end_chunk()
        for shadow in self.shadows.values():
            shadow.end_chunk()


class _TeePass:
    def __init__(self, tee: _Tee, commit: bool) -> None:
        self.tee, self.commit = tee, commit

    def attend(self, layer: int, q, k, v):
        out = self.tee.reference.attend(layer, q, k, v, self.commit)
        if self.commit:  # only commits change what a cache holds
            for shadow in self.tee.shadows.values():
                shadow.attend(layer, q, k, v, True)
        return out


@dataclass
class RecallMeter:
    """An observer of the reference cache that records, at the chosen chunks, every head's past
    recall under every shadow policy: ``recall[policy][chunk]`` = ``[layers][heads]``."""

    shadows: dict[str, KVCache]
    chunks: Sequence[int]
    query_rows: int = 64
    recall: dict[str, dict[int, list[list[float]]]] = field(default_factory=dict)
    _seen: set = field(default_factory=set)

    def observe(self, layer: int, group: HeadGroup, q, chunk: ChunkInfo, commit: bool) -> None:
        step = chunk.first_frame // group.cache.chunk_frames
        key = (step, layer, group.heads)
        if commit or step not in self.chunks or key in self._seen:
            return  # the first denoising pass of a chosen chunk only
        self._seen.add(key)
        keys, _, valid = group.attended()
        tokens = group.slot_token[: keys.shape[2]].long()
        probs = sampled_attention(q, keys, sample_rows(q.shape[2], self.query_rows), valid)
        mass = probs.mean(dim=(0, 2))  # [Hg, N]
        past = (tokens >= 0) & (tokens < chunk.first_frame * chunk.tokens_per_frame)
        for name, shadow in self.shadows.items():
            table = self.recall.setdefault(name, {}).setdefault(
                step, [[float("nan")] * shadow.config.num_heads for _ in shadow.layers]
            )
            for shadow_group in shadow.layers[layer]:
                kept = torch.isin(tokens, shadow_group.token_ids.to(tokens.device)) & past
                for head in shadow_group.heads:
                    row = group.heads.index(head)
                    total = mass[row][past].sum()
                    table[layer][head] = float(mass[row][kept].sum() / total) if total > 0 else 1.0


@dataclass(frozen=True)
class RecallReport:
    """Recall per policy, chunk, layer and head; labels of the heads (a head map's or ``all``)."""

    recall: dict[str, dict[int, list[list[float]]]]
    labels: list[list[str]]
    reference: str

    def by_type(self) -> dict[str, dict[int, dict[str, float]]]:
        """Mean recall per policy, chunk and head type."""
        out: dict[str, dict[int, dict[str, float]]] = {}
        for name, chunks in self.recall.items():
            for step, table in chunks.items():
                sums: dict[str, list[float]] = {}
                for layer, row in enumerate(table):
                    for head, value in enumerate(row):
                        sums.setdefault(self.labels[layer][head], []).append(value)
                out.setdefault(name, {})[step] = {k: sum(v) / len(v) for k, v in sums.items()}
        return out

    def table(self, frames_per_chunk: int) -> str:
        types = sorted({label for row in self.labels for label in row})
        lines = [
            f"attention recall against a {self.reference} cache (share of each head's past "
            "attention mass on tokens the policy keeps; mean over heads of a type)",
            "",
            "| policy | chunk (frame) | " + " | ".join(types) + " |",
            "|---|---|" + "---|" * len(types),
        ]
        for name, chunks in self.by_type().items():
            for step, means in sorted(chunks.items()):
                cells = [f"{means.get(t, float('nan')):.3f}" for t in types]
                frame = step * frames_per_chunk
                lines.append(f"| {name} | {step} ({frame}) | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def save(self, path: str | Path, overwrite: bool = True) -> Path:
        """The recall per head as JSON, written beside and renamed."""
        from headforcing.io.files import write_text

        path = Path(path)
        data = {
            "reference": self.reference,
            "labels": self.labels,
            "recall": {
                name: {str(k): v for k, v in chunks.items()} for name, chunks in self.recall.items()
            },
            "by_type": {
                name: {str(k): v for k, v in chunks.items()}
                for name, chunks in self.by_type().items()
            },
        }
        return write_text(path, json.dumps(data, indent=1), overwrite)

    def plot(self, path: str | Path, overwrite: bool = True) -> Path:
        import matplotlib

        from headforcing.io.files import written_beside

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        by_type = self.by_type()
        types = sorted({label for row in self.labels for label in row})
        steps = sorted({step for chunks in by_type.values() for step in chunks})
        figure, axes = plt.subplots(1, len(steps), figsize=(4 * len(steps), 3.2), squeeze=False)
        width = 0.8 / max(1, len(by_type))
        for axis, step in zip(axes[0], steps, strict=True):
            for index, (name, chunks) in enumerate(by_type.items()):
                values = [chunks.get(step, {}).get(t, float("nan")) for t in types]
                positions = [i + index * width for i in range(len(types))]
                axis.bar(positions, values, width=width, label=name)
            axis.set_xticks([i + 0.4 - width / 2 for i in range(len(types))], types)
            axis.set_ylim(0, 1.05)
            axis.set_title(f"chunk {step}")
            axis.set_ylabel("recall of past attention")
        axes[0][-1].legend(fontsize="small")
        figure.tight_layout()
        with written_beside(path, overwrite) as written:
            figure.savefig(written, dpi=100, format="png")
        plt.close(figure)
        return Path(path)


def measure_recall(
    pipeline,
    prompt: str,
    policies: dict[str, object],
    frames: int,
    chunks: Sequence[int],
    reference: str = "full",
    seed: int = 0,
    labels: list[list[str]] | None = None,
    query_rows: int = 64,
) -> RecallReport:
    """One rollout under ``reference`` (``full`` or ``window``: the trained window), every
    policy as a shadow cache; recall at ``chunks`` (chunk indices)."""
    from headforcing.cache.policies import make_policy
    from headforcing.sampling import generate_chunks

    video = pipeline.preset.video
    if reference not in ("full", "window"):
        raise ValueError(f"reference must be full or window, got {reference!r}")
    last = max(chunks)
    if last * video.chunk_frames >= frames:
        raise ValueError(f"chunk {last} starts past the {frames} frames of the rollout")
    reference_policy = (
        make_policy("full")
        if reference == "full"
        else make_policy("window", window_frames=video.trained_frames)
    )
    model = pipeline.model
    # every cache sees the same q/k/v: none may permute the model's heads under the others
    reference_cache = pipeline.new_cache(reference_policy, permute=False)
    shadows = {name: pipeline.new_cache(policy, permute=False) for name, policy in policies.items()}
    meter = RecallMeter(shadows, tuple(chunks), query_rows)
    reference_cache.observers.append(meter)
    tee = _Tee(reference_cache, shadows)
    with torch.inference_mode():
        context = model.encode_text(pipeline.text_encoder.encode([prompt]))
        generator = torch.Generator().manual_seed(seed)
        for _ in generate_chunks(
            model, tee, context, frames, pipeline.latent_shape, generator, pipeline.schedule
        ):
            pass
    config = model.config
    labels = labels or [["all"] * config.num_heads for _ in range(config.num_layers)]
    return RecallReport(meter.recall, labels, reference)
