"""The statistics of a study's table: per arm, mean ± 95% CI over seeds of each summarised metric; per claim,
the paired differences ``a - b`` by seed with their CI and the verdict (:mod:`hpcfed.study.stats`).

Written as ``arms.csv`` and ``claims.csv`` in the study folder and as sections of ``results.md``; only done
main cells with a finite value count, and the seeds of the others are listed as missing.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any, Optional

from hpcfed.study.design import SEED_AXIS
from hpcfed.study.outputs import atomic_write, cell_text
from hpcfed.study.spec import Study
from hpcfed.study.stats import LEVEL, Estimate, format_estimate, mean_ci, paired_differences, verdict

ARM_CSV_COLUMNS = ("metric", "n", "mean", "sd", "ci_low", "ci_high", "seeds", "missing_seeds")
"""``arms.csv`` columns after ``arm`` and its axis columns (one line per arm and metric)."""
CLAIM_CSV_COLUMNS = ("claim", "a", "b", "metric", "direction", "n", "mean_diff", "sd", "ci_low", "ci_high",
                     "seeds", "missing_a", "missing_b", "verdict")
"""``claims.csv`` columns (one line per claim)."""


def arm_values(study: Study, rows: dict[str, dict], arm: str, metric: str) -> dict[int, float]:
    """Seed -> ``metric`` of the arm's done main cells (finite values only), from ``rows`` (cell id -> row)."""
    out = {}
    for c in study.main_cells:
        v = rows[c.id].get(metric) if c.arm == arm and rows[c.id]["status"] == "done" else None
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[c.seed] = float(v)
    return out


def _side_values(study: Study, rows: dict[str, dict], arm: str, minus: Optional[str],
                 metric: str) -> dict[int, float]:
    """Seed -> ``metric(arm) - metric(minus)`` over the seeds both have (just ``metric(arm)`` without ``minus``)."""
    a = arm_values(study, rows, arm, metric)
    if minus is None:
        return a
    m = arm_values(study, rows, minus, metric)
    return {s: a[s] - m[s] for s in a if s in m}


def _arm_seeds(study: Study, arm: str) -> list[int]:
    return [c.seed for c in study.main_cells if c.arm == arm]


def shown(study: Study) -> bool:
    """Whether the study has anything to aggregate: an arm with several seeds, a claim or a sweep."""
    return bool(study.claims or study.sweeps or len(study.main_cells) > len(study.arms))


def arm_table(study: Study, rows: dict[str, dict]) -> list[dict]:
    """Per arm: ``arm``, ``labels`` (its axis labels and the value of each swept key), ``n`` (done cells),
    ``seeds`` (all), ``missing`` (seeds not done), ``values`` (metric -> seed -> value) and ``estimates``
    (metric -> :class:`~hpcfed.study.stats.Estimate`) for each metric in :attr:`Study.metrics`."""
    out = []
    swept = list(dict.fromkeys(sw.key for sw in study.sweeps))
    for arm, labels in study.arms.items():
        seeds = _arm_seeds(study, arm)
        done = [c.seed for c in study.main_cells if c.arm == arm and rows[c.id]["status"] == "done"]
        first = next(c for c in study.main_cells if c.arm == arm)
        entry: dict[str, Any] = {"arm": arm, "labels": {**labels, **{k: rows[first.id].get(k) for k in swept}},
                                 "n": len(done), "seeds": seeds, "missing": [s for s in seeds if s not in done],
                                 "values": {}, "estimates": {}}
        for m in study.metrics:
            entry["values"][m] = arm_values(study, rows, arm, m)
            entry["estimates"][m] = mean_ci(list(entry["values"][m].values()))
        out.append(entry)
    return out


def claim_table(study: Study, rows: dict[str, dict]) -> list[dict]:
    """Per claim: the claim, its :class:`~hpcfed.study.stats.Paired` differences and the verdict."""
    out = []
    for cl in study.claims:
        expected = set().union(*(_arm_seeds(study, arm) for arm, _ in cl.terms))
        p = paired_differences(_side_values(study, rows, cl.a, cl.a_minus, cl.metric),
                               _side_values(study, rows, cl.b, cl.b_minus, cl.metric), expected)
        out.append({"claim": cl, "paired": p, "verdict": verdict(p.estimate, cl.direction)})
    return out


def _num(v: Optional[float]) -> str:
    return "" if v is None else repr(round(v, 6))


def _est_fields(e: Estimate) -> list[str]:
    return [str(e.n), _num(e.mean), _num(e.sd), _num(e.lo), _num(e.hi)]


def _seeds_text(seeds) -> str:
    return " ".join(map(str, seeds))


def _csv(header: list[str], lines: list[list[str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(lines)
    return buf.getvalue()


def _label_columns(study: Study, arms: list[dict]) -> list[str]:
    return [a for a in study.axes if a != SEED_AXIS and any(a in e["labels"] for e in arms)]


def write_summary(study: Study, rows: list[dict]) -> list[str]:
    """Write ``arms.csv`` and ``claims.csv`` (when :func:`shown`) and return the ``results.md`` sections
    (empty when not shown)."""
    if not shown(study):
        return []
    by_id = {r["cell"]: r for r in rows}
    arms, claims = arm_table(study, by_id), claim_table(study, by_id)
    cols = _label_columns(study, arms)
    atomic_write(study.out_dir / "arms.csv", _csv(["arm", *cols, *ARM_CSV_COLUMNS], [
        [e["arm"], *(cell_text(e["labels"].get(c)) for c in cols), m, *_est_fields(est),
         _seeds_text(sorted(e["values"][m])), _seeds_text(e["missing"])]
        for e in arms for m, est in e["estimates"].items()]))
    atomic_write(study.out_dir / "claims.csv", _csv(list(CLAIM_CSV_COLUMNS), [
        [r["claim"].name, r["claim"].side_text("a"), r["claim"].side_text("b"), r["claim"].metric, r["claim"].direction,
         *_est_fields(r["paired"].estimate), _seeds_text(r["paired"].seeds), _seeds_text(r["paired"].missing_a),
         _seeds_text(r["paired"].missing_b), r["verdict"]] for r in claims]))

    pct = f"{LEVEL:.0%}"
    lines = [f"## Arms: mean ± {pct} CI over seeds", "",
             "Student t with n − 1 degrees of freedom over the seeds whose cell is done (`arms.csv`); n = 1: the "
             "value alone. An arm is a cell without its seed.", "",
             "| arm | " + "".join(f"{c} | " for c in cols) + "n | " + " | ".join(study.metrics) + " | missing seeds |",
             "|" + "---|" * (len(cols) + len(study.metrics) + 3)]
    for e in arms:
        vals = []
        for m in study.metrics:
            est = e["estimates"][m]
            vals.append(format_estimate(est) + (f" (n={est.n})" if est.n != e["n"] else ""))
        lines.append(f"| {e['arm']} | " + "".join(f"{cell_text(e['labels'].get(c))} | " for c in cols)
                     + f"{e['n']} | " + " | ".join(vals) + f" | {_seeds_text(e['missing'])} |")
    lines.append("")
    if claims:
        lines += [f"## Claims: paired differences a − b by seed, mean and {pct} CI", "",
                  "Verdict: *supported* if the CI excludes 0 in the claimed direction, *refuted* if it excludes 0 "
                  "in the other, *inconclusive* otherwise; fewer than 3 paired seeds: *anecdote (n<3)*, not a "
                  "verdict (`claims.csv`; docs/study.md).", "",
                  f"| claim | a | b | metric | claimed | n | a − b | {pct} CI | missing seeds | verdict |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in claims:
            cl, p = r["claim"], r["paired"]
            est = p.estimate
            diff = "" if est.mean is None else f"{est.mean:+.4g}"
            ci = "" if est.lo is None else f"[{est.lo:+.4g}, {est.hi:+.4g}]"
            missing = "; ".join(f"{side}: {_seeds_text(s)}" for side, s in (("a", p.missing_a), ("b", p.missing_b))
                                if s)
            sign = ">" if cl.direction == "greater" else "<"
            lines.append(f"| {cl.name} | {cl.side_text('a')} | {cl.side_text('b')} | {cl.metric} | a {sign} b | {est.n} | {diff} | {ci} | "
                         f"{missing} | **{r['verdict']}** |")
        lines.append("")
    return lines
