"""Linear mode connectivity over a study's cells: ``python -m hpcfed.study basin STUDY.yaml [key=value ...]``.

Chen et al. (ICLR 2023, "On the Importance and Applicability of Pre-Training for Federated Learning", Sec. 5)
argue that FL runs started from a pre-trained model end in one loss basin even when their clients' data differ,
while runs from random init do not. This command measures that on a study's finished cells. The study YAML's
``basin`` key::

    basin:
      pair: {setting: [fed_iid, fed_dir]}  # an axis and two of its labels: the two ends of every segment
      k: 11                                # points on each segment (>= 2)
      max_test: null                       # evaluate on the first N test examples only (null: all)
      claims:                              # paired by seed, as the study's own claims
        - {name: random init has the higher barrier, a: {init: random}, b: {init: pretrained},
           metric: barrier, direction: greater}

For every seed and every combination of the other labels (a *group*, e.g. ``init=random``), the two main cells
that differ only in the pair axis must be done; then ``python -m hpcfed.analysis.basin run_a=<first>
run_b=<second> k=K out=<out_dir>/basin/<first>__<second>.json`` runs in a subprocess (a file already there is
reused, so the command resumes). Both ends start from the same initial model whenever the cells share ``seed``
(the backbone draw of a random init, the head's init) and differ in the data they were trained on.

Outputs in the study folder: ``basin/*.json`` (one per segment: losses and accuracies along it, ``barrier`` on
the loss, ``error_barrier`` on 1 − accuracy, ``distance``), ``basin.csv`` (one row per segment) and
``basin.md`` (per group mean ± 95% CI over seeds; per claim the paired difference and its verdict, by the rule
of :mod:`hpcfed.study.stats`).
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from hpcfed.study.design import DIRECTIONS
from hpcfed.study.errors import StudyError
from hpcfed.study.outputs import atomic_write, is_complete, read_json, run_dir
from hpcfed.study.spec import Cell, Study
from hpcfed.study.stats import format_estimate, mean_ci, paired_differences, verdict
from hpcfed.study.sweep import resolve_sweeps

BASIN_KEYS = ("pair", "k", "max_test", "claims")
BASIN_METRICS = ("barrier", "error_barrier", "distance", "acc_a", "acc_b", "min_acc")
"""Per-segment numbers: the two barriers, ‖θ_b − θ_a‖₂, the end points' accuracies, the lowest on the path."""
SEGMENT_DIR = "basin"


@dataclass(frozen=True)
class BasinSpec:
    """The study's ``basin`` key, parsed."""

    axis: str
    labels: tuple[str, str]
    k: int
    max_test: Optional[int]
    claims: tuple[dict, ...]


def parse_basin(raw: Any, study: Study) -> BasinSpec:
    """Check the ``basin`` mapping against the study's axes and labels.

    Raises:
        StudyError: one line naming ``basin.<key>``.
    """
    where = f"{study.path}: basin"
    if not isinstance(raw, dict):
        raise StudyError(f"{where}: missing or not a mapping {{pair, k, max_test, claims}}")
    unknown = sorted(set(raw) - set(BASIN_KEYS))
    if unknown:
        raise StudyError(f"{where}: unknown key {unknown[0]!r}; valid: {', '.join(BASIN_KEYS)}")
    pair = raw.get("pair")
    if not (isinstance(pair, dict) and len(pair) == 1):
        raise StudyError(f"{where}.pair must be one axis and two of its labels, e.g. {{setting: [a, b]}}")
    ((axis, labels),) = pair.items()
    present = {str(c.labels.get(axis)) for c in study.main_cells if axis in c.labels}
    if not present:
        raise StudyError(f"{where}.pair: {axis!r} is not an axis of the study ({', '.join(study.axes)})")
    if not (isinstance(labels, list) and len(labels) == 2 and labels[0] != labels[1]):
        raise StudyError(f"{where}.pair.{axis} must list two different labels")
    for lab in labels:
        if str(lab) not in present:
            raise StudyError(f"{where}.pair.{axis}: no cell has label {lab!r} (labels: {', '.join(sorted(present))})")
    k = raw.get("k", 11)
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise StudyError(f"{where}.k={k!r} must be an integer >= 2")
    max_test = raw.get("max_test")
    if max_test is not None and (isinstance(max_test, bool) or not isinstance(max_test, int) or max_test < 1):
        raise StudyError(f"{where}.max_test={max_test!r} must be null or an integer >= 1")
    claims = raw.get("claims") or []
    if not isinstance(claims, list):
        raise StudyError(f"{where}.claims must be a list of {{name, a, b, metric, direction}}")
    for i, c in enumerate(claims):
        here = f"{where}.claims[{i}]"
        if not isinstance(c, dict) or not {"a", "b"} <= set(c) or set(c) - {"name", "a", "b", "metric", "direction"}:
            raise StudyError(f"{here} must be {{name, a, b, metric, direction}} with a and b label mappings")
        if c.get("metric", "barrier") not in BASIN_METRICS:
            raise StudyError(f"{here}.metric={c.get('metric')!r} is not one of {', '.join(BASIN_METRICS)}")
        if c.get("direction", "greater") not in DIRECTIONS:
            raise StudyError(f"{here}.direction={c.get('direction')!r} is not one of {', '.join(DIRECTIONS)}")
    return BasinSpec(str(axis), (str(labels[0]), str(labels[1])), k, max_test, tuple(claims))


def _group_key(cell: Cell, axis: str) -> tuple:
    return tuple(sorted((a, str(v)) for a, v in cell.labels.items() if a not in (axis, "seed")))


def segments(study: Study, spec: BasinSpec) -> list[tuple[tuple, int, Cell, Cell]]:
    """``(group, seed, cell_a, cell_b)`` for every group and seed with both ends in the study, in study order."""
    ends: dict[tuple, dict[str, Cell]] = {}
    for c in study.main_cells:
        lab = str(c.labels.get(spec.axis))
        if lab in spec.labels:
            ends.setdefault((_group_key(c, spec.axis), c.seed), {})[lab] = c
    return [(g, s, d[spec.labels[0]], d[spec.labels[1]]) for (g, s), d in ends.items() if len(d) == 2]


def _segment_file(study: Study, a: Cell, b: Cell) -> Path:
    return study.out_dir / SEGMENT_DIR / f"{a.id}__{b.id}.json"


def run_segments(study: Study, spec: BasinSpec, log=print) -> list[dict]:
    """Measure every segment whose two cells are done (reusing segment files already written); one row each.

    A failed measurement is logged and left out (its file is not written), so a re-run retries it.
    """
    rows = []
    for group, seed, a, b in segments(study, spec):
        out = _segment_file(study, a, b)
        if not out.is_file():
            missing = [c.id for c in (a, b) if not is_complete(study, c)]
            if missing:
                log(f"basin: {a.id} vs {b.id}: waiting for {', '.join(missing)}")
                continue
            no_weights = [c.id for c in (a, b) if not (run_dir(study, c) / "final" / "peft.safetensors").is_file()]
            if no_weights:  # e.g. taken from raw result files (reuse_from), which keep no weights
                log(f"basin: {a.id} vs {b.id}: no final/peft.safetensors in {', '.join(no_weights)}; delete that "
                    f"cell's folder and run the study again to measure")
                continue
            cmd = [sys.executable, "-m", "hpcfed.analysis.basin", f"run_a={run_dir(study, a)}",
                   f"run_b={run_dir(study, b)}", f"k={spec.k}", f"out={out}", "dist.device=cpu"]
            if spec.max_test:
                cmd.append(f"max_test={spec.max_test}")
            log(f"basin: {a.id} vs {b.id}: measuring ({spec.k} points)")
            out.parent.mkdir(parents=True, exist_ok=True)
            proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if proc.returncode != 0:
                tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
                log(f"basin: {a.id} vs {b.id}: failed (exit {proc.returncode}): {tail}")
                continue
        res = read_json(out)
        if res is None:
            log(f"basin: {out}: unreadable, skipped (delete it to measure again)")
            continue
        accs = res.get("accuracies") or [float("nan")]
        rows.append({"group": group, "seed": seed, "cell_a": a.id, "cell_b": b.id,
                     "barrier": res["barrier"], "error_barrier": res["error_barrier"], "distance": res["distance"],
                     "acc_a": accs[0], "acc_b": accs[-1], "min_acc": min(accs)})
    return rows


def _group_text(group: tuple) -> str:
    return ", ".join(f"{a}={v}" for a, v in group) or "(all)"


def _match_group(rows: list[dict], labels: dict, where: str) -> tuple:
    want = {(str(a), str(v)) for a, v in labels.items()}
    groups = sorted({r["group"] for r in rows if want <= set(r["group"])})
    if len(groups) != 1:
        raise StudyError(f"{where}: {labels!r} matches {len(groups)} measured groups "
                         f"({'; '.join(_group_text(g) for g in groups) or 'none'})")
    return groups[0]


def summarise(study: Study, spec: BasinSpec, rows: list[dict]) -> str:
    """Write ``basin.csv`` and ``basin.md``; returns the markdown."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["group", "seed", "cell_a", "cell_b", *BASIN_METRICS])
    for r in rows:
        w.writerow([_group_text(r["group"]), r["seed"], r["cell_a"], r["cell_b"],
                    *(repr(round(r[m], 6)) for m in BASIN_METRICS)])
    atomic_write(study.out_dir / "basin.csv", buf.getvalue())
    a_lab, b_lab = spec.labels
    lines = [f"# {study.name}: loss basin between `{spec.axis}={a_lab}` and `{spec.axis}={b_lab}`", "",
             f"Command: `python -m hpcfed.study basin {study.path}`; {spec.k} points per segment; raw: "
             f"`{SEGMENT_DIR}/*.json`, `basin.csv`.", "",
             "## Per group: mean ± 95% CI over seeds", "",
             "| group | n | " + " | ".join(BASIN_METRICS) + " |", "|---|---|" + "---|" * len(BASIN_METRICS)]
    for g in sorted({r["group"] for r in rows}):
        sel = [r for r in rows if r["group"] == g]
        lines.append(f"| {_group_text(g)} | {len(sel)} | "
                     + " | ".join(format_estimate(mean_ci([r[m] for r in sel])) for m in BASIN_METRICS) + " |")
    if spec.claims:
        lines += ["", "## Claims: paired differences a − b by seed, mean and 95% CI", "",
                  "| claim | a | b | metric | claimed | n | a − b | 95% CI | verdict |", "|---|---|---|---|---|---|---|---|---|"]
        for i, c in enumerate(spec.claims):
            where = f"{study.path}: basin.claims[{i}]"
            metric, direction = c.get("metric", "barrier"), c.get("direction", "greater")
            ga, gb = _match_group(rows, c["a"], f"{where}.a"), _match_group(rows, c["b"], f"{where}.b")
            va = {r["seed"]: r[metric] for r in rows if r["group"] == ga}
            vb = {r["seed"]: r[metric] for r in rows if r["group"] == gb}
            p = paired_differences(va, vb)
            est = p.estimate
            ci = "" if est.lo is None else f"[{est.lo:+.4g}, {est.hi:+.4g}]"
            sign = ">" if direction == "greater" else "<"
            lines.append(f"| {c.get('name', f'{_group_text(ga)} vs {_group_text(gb)}')} | {_group_text(ga)} | "
                         f"{_group_text(gb)} | {metric} | a {sign} b | {est.n} | "
                         f"{'' if est.mean is None else f'{est.mean:+.4g}'} | {ci} | **{verdict(est, direction)}** |")
    text = "\n".join(lines) + "\n"
    atomic_write(study.out_dir / "basin.md", text)
    return text


def basin(study: Study, raw: Any, log=print) -> str:
    """Parse the ``basin`` key, measure every ready segment and write the summary; returns ``basin.md``.

    The study's lr sweeps are resolved first (:func:`hpcfed.study.sweep.resolve_sweeps`), as ``run`` does: until
    then a swept arm's main cells are blocked, never complete, and their segments would wait forever."""
    spec = parse_basin(raw, study)
    resolve_sweeps(study)
    return summarise(study, spec, run_segments(study, spec, log))
