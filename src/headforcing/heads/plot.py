"""The picture of a head map: a layers x heads grid coloured by type, and the masses."""

from __future__ import annotations

from pathlib import Path

from headforcing.heads.headmap import HEAD_TYPES, REGIONS, HeadMap

COLOURS = {"local": "#4c9be8", "anchor": "#e8804c", "memory": "#58b86b"}


def plot_head_map(head_map: HeadMap, path: str | Path, overwrite: bool = True) -> Path:
    """Write a PNG: the label grid, then one heat map per attention region (beside, then
    renamed: :mod:`headforcing.io.files`)."""
    import matplotlib

    from headforcing.io.files import written_beside

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    regions = [region for region in REGIONS if region in head_map.stats]
    panels = 1 + len(regions)
    height = max(4.0, 0.22 * head_map.num_layers + 2.0)
    width = max(2.5, 0.28 * head_map.num_heads + 1.2)
    figure, axes = plt.subplots(1, panels, figsize=(width * panels, height), squeeze=False)
    axes = axes[0]

    codes = [[HEAD_TYPES.index(label) for label in row] for row in head_map.labels]
    axes[0].imshow(
        codes,
        cmap=ListedColormap([COLOURS[t] for t in HEAD_TYPES]),
        vmin=0,
        vmax=len(HEAD_TYPES) - 1,
        aspect="auto",
        interpolation="nearest",
    )
    counts = head_map.counts()
    axes[0].set_title("head type")
    figure.legend(
        handles=[Patch(color=COLOURS[t], label=f"{t} ({counts[t]})") for t in HEAD_TYPES],
        loc="lower left",
        ncol=len(HEAD_TYPES),
        fontsize=9,
        frameon=False,
    )
    for axis, region in zip(axes[1:], regions, strict=True):
        image = axis.imshow(
            head_map.stats[region],
            vmin=0,
            vmax=1,
            cmap="viridis",
            aspect="auto",
            interpolation="nearest",
        )
        axis.set_title(f"mass on {region}")
        figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
    for axis in axes:
        axis.set_xlabel("head")
        axis.set_ylabel("layer")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.yaxis.set_major_locator(MaxNLocator(integer=True))
    rule = head_map.rule.get("name", "?")
    figure.suptitle(f"{head_map.preset}: head map ({rule} rule)")
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    path = Path(path)
    with written_beside(path, overwrite) as written:
        figure.savefig(written, dpi=100, format="png")
    plt.close(figure)
    return path
