"""Study results: the cells' rows and curves (:func:`hpcfed.study.outputs.collect`) as ``results.csv`` and
``results.md`` (with the per-arm statistics, the claims' verdicts and the sweeps' picks), and the plots
``acc_vs_round.png`` and ``acc_vs_bytes.png``, in the study folder.

Everything here is rebuilt from what is on disk (``python -m hpcfed.study STUDY.yaml --report``).
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
from typing import Any

from hpcfed.atomic import atomic_path
from hpcfed.study.design import METRIC_COLUMNS, extra_metric_columns
from hpcfed.study.outputs import atomic_write, cell_text, collect
from hpcfed.study.spec import Study, cell_ranks
from hpcfed.study.summary import write_summary
from hpcfed.study.sweep import resolve_sweeps, sweep_markdown

__all__ = ["METRIC_COLUMNS", "collect", "columns", "report", "write_plots", "write_table"]


def columns(study: Study) -> list[str]:
    """``results.csv`` columns: ``cell``, the axis columns, then :data:`METRIC_COLUMNS`."""
    return ["cell", *study.axes, *METRIC_COLUMNS, *extra_metric_columns(study.metrics)]


def write_table(study: Study, rows: list[dict]) -> None:
    """``results.csv`` (plain values) and ``results.md`` (dated, with the command; then the arms, claims and
    sweep sections), atomically; also ``arms.csv`` and ``claims.csv`` (:func:`hpcfed.study.summary.write_summary`).
    """
    cols = columns(study)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow([cell_text(r.get(c)) for c in cols])
    atomic_write(study.out_dir / "results.csv", buf.getvalue())

    def md(v: Any, col: str) -> str:
        if col in ("trainable_params", "bytes_per_round") and isinstance(v, (int, float)):
            return f"{int(v):,}"
        return cell_text(v).replace("|", "\\|").replace("\n", " ")

    done = sum(r["status"] == "done" for r in rows)
    failed = sum(r["status"] == "failed" for r in rows)
    central = " (centralized cells: 1)" if any(cell_ranks(study, c) != study.ranks for c in study.cells) else ""
    lines = [
        f"# Study `{study.name}`",
        "",
        f"{_dt.date.today().isoformat()} · {len(rows)} cells: {done} done, {failed} failed, "
        f"{len(rows) - done - failed} pending · {study.ranks} rank(s) per cell{central} · "
        f"target_acc = {'' if study.target_acc is None else study.target_acc}",
        "",
        "```",
        study.command or f"python -m hpcfed.study {study.path}",
        "```",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
    ]
    lines += ["| " + " | ".join(md(r.get(c), c) for c in cols) + " |" for r in rows]
    lines += ["", "Columns: see docs/study.md. Plots: `acc_vs_round.png`, `acc_vs_bytes.png`.", ""]
    lines += write_summary(study, rows) + sweep_markdown(study)
    atomic_write(study.out_dir / "results.md", "\n".join(lines))


def write_plots(study: Study, curves: list[tuple[str, dict]]) -> None:
    """``acc_vs_round.png`` and ``acc_vs_bytes.png`` (log x); local_only cells as dashed horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    cmap = plt.get_cmap("tab20" if len(curves) > 10 else "tab10")
    for fname, xkey, xlabel, logx in (("acc_vs_round.png", "rounds", "round", False),
                                      ("acc_vs_bytes.png", "cum_bytes", "cumulative bytes (up + down)", True)):
        fig, ax = plt.subplots(figsize=(8, 5))
        any_x = False
        for i, (cid, c) in enumerate(curves):
            color = cmap(i % cmap.N)
            if not c["acc"]:
                continue
            if c["local_only"]:
                ax.axhline(c["acc"][-1], ls="--", lw=1.2, color=color, label=f"{cid} (local only)")
                continue
            pts = [(x, a) for x, a in zip(c[xkey], c["acc"]) if x is not None and (x > 0 or not logx)]
            if pts:
                any_x = True
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, lw=1.3, color=color,
                        label=cid)
        if study.target_acc is not None:
            ax.axhline(study.target_acc, ls=":", lw=0.8, color="0.5", label=f"target {study.target_acc:g}")
        if logx and any_x:
            ax.set_xscale("log")
        elif not logx:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{study.name}: test accuracy vs {xlabel}")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        else:
            ax.text(0.5, 0.5, "no finished cells yet", ha="center", va="center", transform=ax.transAxes)
        with atomic_path(study.out_dir / fname) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)


def report(study: Study) -> list[dict]:
    """Rebuild the table, the statistics and the plots from what is on disk (resolving lr sweeps first);
    returns the rows (one per cell, sweep cells first).

    Raises:
        StudyError: a sweep's picked value makes a main cell's config invalid.
    """
    resolve_sweeps(study)
    collected = [collect(study, c) for c in study.cells]
    rows = [r for r, _ in collected]
    write_table(study, rows)
    write_plots(study, [(r["cell"], c) for r, c in collected])
    return rows

