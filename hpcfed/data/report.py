"""What a preparation looks like: the per-client label distribution as a stacked-bar PNG (as flwr-datasets'
``plot_label_distributions`` draws it) and a one-line summary for the log."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

log = logging.getLogger(__name__)

PLOT_NAME = "label_distribution.png"
"""File name of the plot beside the shards."""


def summary_line(hists: np.ndarray, class_names: Sequence[str]) -> str:
    """One line: clients, min / median / max client size, classes, mean (min..max) classes per client.

    Args:
        hists: int (num_clients, num_classes) examples per client and class.
        class_names: the class names (only their number is used).
    """
    sizes = hists.sum(axis=1)  # (K,)
    present = (hists > 0).sum(axis=1)  # (K,) classes a client holds
    return (f"{hists.shape[0]} clients, size min {int(sizes.min())} / median {float(np.median(sizes)):g} / max "
            f"{int(sizes.max())}, {len(class_names)} classes, classes per client mean {present.mean():.2f} "
            f"(min {int(present.min())}, max {int(present.max())})")


MAX_BARS = 20_000
"""Above this many (client, class) bars the plot is a heat map of class shares instead of stacked bars."""


def plot_label_distribution(path: Path, hists: np.ndarray, class_names: Sequence[str],
                            client_names: Optional[Sequence[str]] = None, title: str = "") -> Optional[Path]:
    """Write a stacked bar chart: one bar per client, one colour per class, height = examples.

    Args:
        path: the PNG to write.
        hists: int (num_clients, num_classes) examples per client and class.
        class_names: legend labels (the legend is left out above 20 classes).
        client_names: x tick labels (shown up to 50 clients); default the client ids.
        title: the figure title.

    Returns:
        ``path``, or None when matplotlib is not installed (a warning is logged; preparation goes on).
    """
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        log.warning("matplotlib is not installed; no %s", path.name)
        return None
    k, c = hists.shape
    fig = Figure(figsize=(min(max(6.0, 0.25 * k + 2.0), 40.0), 4.5))
    FigureCanvasAgg(fig)  # the Agg backend, without touching pyplot's global state
    ax = fig.add_subplot()
    x = np.arange(k)
    if k * c > MAX_BARS:  # bars narrower than a pixel say nothing: a heat map of the shares
        share = hists / np.maximum(hists.sum(axis=1, keepdims=True), 1)
        im = ax.imshow(share.T, aspect="auto", interpolation="nearest", origin="lower", cmap="viridis")
        fig.colorbar(im, ax=ax, label="share of the client's examples")
        ax.set_xlabel("client")
        ax.set_ylabel("class")
        ax.set_title(title or f"label distribution per client ({k} clients, {c} classes)")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        return path
    cmap = matplotlib.colormaps["tab20" if c <= 20 else "viridis"]
    # One PolyCollection of k rectangles per class, not ax.bar's one Rectangle artist per (client, class): the
    # same bars (width 0.85, stacked), but O(classes) artists, so 5,000 clients plot in well under a second
    # instead of ~20 s (issue #16, scale in clients).
    from matplotlib.collections import PolyCollection
    from matplotlib.patches import Patch

    left, right = x - 0.425, x + 0.425  # (k,)
    bottom = np.zeros(k)
    handles = []
    for j in range(c):
        colour = cmap(j % 20) if c <= 20 else cmap(j / max(c - 1, 1))
        top = bottom + hists[:, j]
        verts = np.stack([np.stack([left, bottom], 1), np.stack([left, top], 1), np.stack([right, top], 1),
                          np.stack([right, bottom], 1)], 1)  # (k, 4, 2) rectangle corners
        ax.add_collection(PolyCollection(verts, facecolors=[colour], edgecolors="none"))
        handles.append(Patch(facecolor=colour, label=str(class_names[j])))
        bottom = top
    span = k - 0.15  # ax.bar's limits: the bars' extent plus 5 % on each side; y from 0 (its sticky edge)
    ax.set_xlim(-0.425 - 0.05 * span, k - 0.575 + 0.05 * span)
    ax.set_ylim(0, max(float(bottom.max()) if k else 0.0, 1.0) * 1.05)
    ax.set_xlabel("client")
    ax.set_ylabel("examples")
    ax.set_title(title or f"label distribution per client ({k} clients, {c} classes)")
    if k <= 50:
        ax.set_xticks(x, [str(n) for n in (client_names if client_names is not None else x)],
                      rotation=90 if k > 20 else 0, fontsize=7)
    if c <= 20:
        ax.legend(handles=handles, title="class", fontsize=7, title_fontsize=8, loc="upper left",
                  bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
