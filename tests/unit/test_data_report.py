"""The label-distribution plot of a preparation (hpcfed/data/report.py): O(classes) artists, so thousands of
clients plot quickly (issue #16, scale in clients), with the same stacked bars as before."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from matplotlib.figure import Figure  # noqa: E402

from hpcfed.data import report  # noqa: E402


@pytest.fixture
def captured(monkeypatch):
    """The figures plot_label_distribution saves (savefig still writes the file)."""
    figs = []
    orig = Figure.savefig

    def savefig(self, *a, **kw):
        figs.append(self)
        return orig(self, *a, **kw)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return figs


@pytest.mark.parametrize("k, c", [(1, 1), (7, 3), (5000, 2), (300, 25)])
def test_stacked_bars_one_collection_per_class(tmp_path, captured, k, c):
    rng = np.random.default_rng(k)
    hists = rng.integers(0, 20, size=(k, c))
    hists[0] = 0  # an empty bar is fine
    out = report.plot_label_distribution(tmp_path / "p.png", hists, [f"c{j}" for j in range(c)], title="t")
    assert out == tmp_path / "p.png" and out.stat().st_size > 0
    (ax,) = [a for a in captured[0].axes]
    assert len(ax.patches) == 0 and len(ax.collections) == c  # O(classes) artists, not k * c rectangles
    bottom = np.zeros(k)
    for j, coll in enumerate(ax.collections):
        verts = np.array([p.vertices[:4] for p in coll.get_paths()])  # (k, 4, 2)
        assert verts.shape == (k, 4, 2)
        np.testing.assert_allclose(verts[:, 0, 0], np.arange(k) - 0.425)        # left edge, width 0.85
        np.testing.assert_allclose(verts[:, 2, 0], np.arange(k) + 0.425)
        np.testing.assert_allclose(verts[:, 0, 1], bottom)                       # stacked on the classes below
        np.testing.assert_allclose(verts[:, 1, 1], bottom + hists[:, j])
        bottom = bottom + hists[:, j]
    lo, hi = ax.get_ylim()
    assert lo == 0 and hi >= bottom.max()
    legend = ax.get_legend()
    assert (legend is not None) == (c <= 20)
    if legend is not None:
        assert [t.get_text() for t in legend.get_texts()] == [f"c{j}" for j in range(c)]


def test_heat_map_above_max_bars(tmp_path, captured):
    hists = np.ones((report.MAX_BARS // 4 + 1, 4), dtype=np.int64)
    report.plot_label_distribution(tmp_path / "h.png", hists, list("abcd"))
    ax = captured[0].axes[0]
    assert len(ax.images) == 1 and len(ax.collections) == 0
