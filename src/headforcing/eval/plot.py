"""The plot of ``headforcing eval --plot``: one panel per measure over time, one line per video."""

from __future__ import annotations

import math
from pathlib import Path

from headforcing.eval.measures import MEASURES
from headforcing.eval.report import VideoEval
from headforcing.io.files import written_beside


def plot_over_time(results: list[VideoEval], path: Path, overwrite: bool = True) -> Path:
    """Each measure (and each toy-world truth metric, where videos have one) at the end frame
    of every segment; the videos overlaid, labelled by file and policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(MEASURES)
    truth_names = next((list(r.truth[0].as_dict()) for r in results if r.truth), [])
    panels = [*names, *(f"truth: {name}" for name in truth_names)]
    columns = 4
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False)
    for axis, panel in zip(axes.flat, panels, strict=False):
        for result in results:
            ends = [s.start + s.frames for s in result.segments]
            if panel.startswith("truth: "):
                if not result.truth:
                    continue
                name = panel.removeprefix("truth: ")
                values = [getattr(metrics, name) for metrics in result.truth]
            else:
                values = [getattr(segment, panel) for segment in result.segments]
            axis.plot(ends, values, marker=".", label=result.label)
        axis.set_title(panel)
        axis.set_xlabel("frame (segment end)")
    for axis in axes.flat[len(panels) :]:
        axis.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=min(len(labels), 3), fontsize=8)
    figure.suptitle("headforcing eval: measures per segment")
    figure.tight_layout(rect=(0, 0.08, 1, 0.96))
    with written_beside(path, overwrite) as written:  # never through a link, never half
        figure.savefig(written, dpi=90, format="png")
    plt.close(figure)
    return path
