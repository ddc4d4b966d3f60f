"""Study results: each cell's table row and accuracy curve read back from its run folder, then
``results.csv``, ``results.md``, ``acc_vs_round.png`` and ``acc_vs_bytes.png`` in the study folder.

Everything here is rebuilt from what is on disk (``python -m hpcfed.study STUDY.yaml --report``).
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import math
from typing import Any

from hpcfed.atomic import atomic_path
from hpcfed.config import Config
from hpcfed.runlog import read_metrics
from hpcfed.study.outputs import RECORD_FILE, atomic_write, is_complete, read_json, run_dir
from hpcfed.study.spec import Cell, Study

METRIC_COLUMNS = ("status", "final_test_acc", "best_test_acc", "trainable_params", "bytes_per_round",
                  "rounds_to_target", "wall_s", "local_test_acc", "error")
"""Table columns after ``cell`` and the axis columns."""


def _select(cfg: Config, key: str) -> Any:
    obj: Any = cfg
    for part in key.split("."):
        if not hasattr(obj, part):
            return None
        obj = getattr(obj, part)
    return obj


def collect(study: Study, cell: Cell) -> tuple[dict, dict]:
    """One table row and the cell's curve.

    Returns:
        (row, curve): ``row`` maps ``cell``, the axis columns and :data:`METRIC_COLUMNS` to values (None when
        absent); ``curve`` has ``rounds``, ``acc`` and ``cum_bytes`` (bytes up + down up to that round) at the
        evaluated rounds, and ``local_only`` (bool).
    """
    d = run_dir(study, cell)
    row: dict[str, Any] = {"cell": cell.id}
    for axis in study.axes:
        row[axis] = cell.labels[axis] if axis in cell.labels else _select(cell.cfg, axis)
    row.update({k: None for k in METRIC_COLUMNS})
    local_only = cell.cfg.fl.mode == "local_only"
    curve: dict[str, Any] = {"rounds": [], "acc": [], "cum_bytes": [], "local_only": local_only}
    rec = read_json(d / RECORD_FILE) or {}
    row["wall_s"] = None if rec.get("wall_s") is None else round(float(rec["wall_s"]), 1)
    if not is_complete(study, cell):
        if rec.get("status") == "failed":
            row["status"], row["error"] = "failed", rec.get("error") or None
        else:
            row["status"], row["wall_s"] = "pending", None
        return row, curve
    row["status"] = "done"
    info = read_json(d / "run_info.json") or {}
    row["trainable_params"] = info.get("trainable_params")
    metrics = read_metrics(d)
    cum = 0
    per_round = []
    for m in metrics:
        b = (m.get("bytes_up") or 0) + (m.get("bytes_down") or 0)
        if "bytes_up" in m or "bytes_down" in m:
            per_round.append(b)
        cum += b
        acc = m.get("test_acc")
        if acc is not None and math.isfinite(acc):
            curve["rounds"].append(m.get("round"))
            curve["acc"].append(float(acc))
            curve["cum_bytes"].append(cum)
    if curve["acc"]:
        row["final_test_acc"] = round(curve["acc"][-1], 4)
        row["best_test_acc"] = round(max(curve["acc"]), 4)
    if local_only:
        row["bytes_per_round"] = 0  # nothing is communicated
        lta = metrics[-1].get("local_test_acc") if metrics else None
        row["local_test_acc"] = None if lta is None else round(float(lta), 4)
    else:
        row["bytes_per_round"] = round(sum(per_round) / len(per_round)) if per_round else None
        if study.target_acc is not None:
            row["rounds_to_target"] = next(
                (r for r, a in zip(curve["rounds"], curve["acc"]) if a >= study.target_acc), None)
    return row, curve


def columns(study: Study) -> list[str]:
    return ["cell", *study.axes, *METRIC_COLUMNS]


def _cell_text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}" if abs(v) < 1e-3 or abs(v) >= 1e6 else repr(v)
    if isinstance(v, (list, tuple)):
        return json.dumps(v)
    return str(v)


def write_table(study: Study, rows: list[dict]) -> None:
    """``results.csv`` (plain values) and ``results.md`` (dated, with the command), atomically."""
    cols = columns(study)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow([_cell_text(r.get(c)) for c in cols])
    atomic_write(study.out_dir / "results.csv", buf.getvalue())

    def md(v: Any, col: str) -> str:
        if col in ("trainable_params", "bytes_per_round") and isinstance(v, (int, float)):
            return f"{int(v):,}"
        return _cell_text(v).replace("|", "\\|").replace("\n", " ")

    done = sum(r["status"] == "done" for r in rows)
    failed = sum(r["status"] == "failed" for r in rows)
    lines = [
        f"# Study `{study.name}`",
        "",
        f"{_dt.date.today().isoformat()} · {len(rows)} cells: {done} done, {failed} failed, "
        f"{len(rows) - done - failed} pending · {study.ranks} rank(s) per cell · "
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
    """Rebuild the table and plots from what is on disk; returns the rows."""
    collected = [collect(study, c) for c in study.cells]
    rows = [r for r, _ in collected]
    write_table(study, rows)
    write_plots(study, [(r["cell"], c) for r, c in collected])
    return rows

