"""Plot runs: ``python -m hpcfed.report runs/<name> [runs/<other> ...] [--out FILE.png]``.

Draws test accuracy and training loss (solid; the test loss dashed, same colour) against the round and against
the cumulative communicated bytes (``bytes_up`` + ``bytes_down`` of every round so far), one line per run, the
legend naming each run by its folder. Reads each run's ``metrics.jsonl`` with :func:`hpcfed.runlog.read_metrics`.
Default output: ``<run>/report.png`` for one run, ``report.png`` in the working directory for several.
Exit status 0, or 2 with one line on stderr when a folder has no metrics.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from hpcfed.runlog import METRICS_FILE, read_metrics


class ReportError(ValueError):
    """A run folder that cannot be plotted (one-line message naming it)."""


def curves(history: Sequence[dict]) -> dict[str, list]:
    """Plot series of one run's metrics lines (rounds ≥ 1; round 0 is placed at 0 bytes).

    Returns:
        ``round``, ``bytes`` (cumulative communicated bytes after that round), ``test_acc``, ``train_loss``,
        ``test_loss``: lists of equal length, None where a round lacks the value (no evaluation that round).
    """
    out: dict[str, list] = {k: [] for k in ("round", "bytes", "test_acc", "train_loss", "test_loss")}
    total = 0.0
    for m in sorted(history, key=lambda m: m.get("round", 0)):
        total += float(m.get("bytes_up") or 0) + float(m.get("bytes_down") or 0)
        out["round"].append(m.get("round", 0))
        out["bytes"].append(total)
        for k in ("test_acc", "train_loss", "test_loss"):
            v = m.get(k)
            out[k].append(float(v) if isinstance(v, (int, float)) else None)
    return out


def plot_runs(run_dirs: Sequence[Path], out: Path) -> Path:
    """Draw the 2×2 figure (rows: accuracy, loss; columns: against round, against cumulative bytes) of
    ``run_dirs`` into the PNG ``out``; returns ``out``.

    Raises:
        ReportError: a folder without a readable ``metrics.jsonl`` (or with no line in it).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = []
    for d in run_dirs:
        history = read_metrics(d)
        if not history:
            raise ReportError(f"{d}: no {METRICS_FILE} with metrics (is it a run folder?)")
        runs.append((Path(d).resolve().name, curves(history)))
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), squeeze=False)
    for i, (name, c) in enumerate(runs):
        color = f"C{i % 10}"
        for col, x_key in enumerate(("round", "bytes")):
            _line(axes[0][col], c[x_key], c["test_acc"], color, "-", name)
            _line(axes[1][col], c[x_key], c["train_loss"], color, "-", name)
            _line(axes[1][col], c[x_key], c["test_loss"], color, "--", None)
    for row, ylabel in enumerate(("test accuracy", "loss (train solid, test dashed)")):
        axes[row][0].set_ylabel(ylabel)
        for col, xlabel in enumerate(("round", "cumulative communicated bytes")):
            ax = axes[row][col]
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize="small")
    fig.suptitle(", ".join(n for n, _ in runs) if len(runs) <= 3 else f"{len(runs)} runs")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _line(ax, xs: list, ys: list, color: str, style: str, label: Optional[str]) -> None:
    pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=color, label=label, marker=".")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line; returns the exit status (0 ok, 2 a folder without metrics)."""
    p = argparse.ArgumentParser(prog="python -m hpcfed.report", description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders (<out_dir>/<name>) holding metrics.jsonl")
    p.add_argument("--out", type=Path, default=None, help="PNG to write (default: see the module's doc)")
    args = p.parse_args(argv)
    out = args.out or (args.runs[0] / "report.png" if len(args.runs) == 1 else Path("report.png"))
    try:
        path = plot_runs(args.runs, out)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
