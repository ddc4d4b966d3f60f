"""Learning-rate sweeps: score each swept arm's sweep cells, pick the best value, record it in
``<out_dir>/lr_sweep.json`` and give it to the arm's main cells.

The pick is sticky: once ``lr_sweep.json`` holds a value for an arm whose sweep settings and sweep-cell
configs (hashes) are unchanged, that value is reused, even if a failed sweep cell later succeeds. Delete the
file (or the arm's entry) to pick again; change the sweep and it is picked again from the new sweep cells.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from typing import Any, Optional

from hpcfed.study.design import LrSweep
from hpcfed.study.outputs import RECORD_FILE, SWEEP_FILE, atomic_write, collect, is_complete, read_json, run_dir
from hpcfed.study.spec import Cell, Study, validate_cell

FINGERPRINT_KEYS = ("key", "values", "metric", "goal", "seeds", "rounds", "cells")
"""The entry fields that must match the current sweep for a recorded pick to be reused."""


def _fingerprint(sw: LrSweep, cells: list[Cell]) -> dict[str, Any]:
    return {"key": sw.key, "values": list(sw.values), "metric": sw.metric, "goal": sw.goal,
            "seeds": None if sw.seeds is None else list(sw.seeds), "rounds": sw.rounds,
            "cells": {c.id: c.config_hash() for c in cells}}


def _failed(study: Study, cell: Cell) -> bool:
    """The cell's last attempt, with its current config, failed (an older config's failure does not count)."""
    rec = read_json(run_dir(study, cell) / RECORD_FILE) or {}
    return rec.get("status") == "failed" and rec.get("config_hash") == cell.config_hash()


def _score(study: Study, sw: LrSweep, cells: list[Cell]) -> tuple[Optional[list[dict]], str]:
    """Per value: mean metric over its finished sweep cells; None (and why) while a sweep cell has not run."""
    scores, waiting = [], []
    for v in sw.values:
        vals, failed = [], []
        for c in (c for c in cells if c.labels[sw.key] == v):
            if is_complete(study, c):
                m = collect(study, c)[0].get(sw.metric)
                if m is not None and math.isfinite(m):
                    vals.append(float(m))
                else:
                    failed.append(c.id)
            elif _failed(study, c):
                failed.append(c.id)
            else:
                waiting.append(c.id)
        scores.append({"value": v, "mean": sum(vals) / len(vals) if vals else None, "n": len(vals),
                       "failed": failed})
    if waiting:
        more = f" and {len(waiting) - 2} more" if len(waiting) > 2 else ""
        return None, f"waiting for sweep cells {', '.join(waiting[:2])}{more}"
    return scores, ""


def _pick(sw: LrSweep, scores: list[dict]) -> Any:
    ok = [s for s in scores if s["mean"] is not None]
    if not ok:
        return None
    best = (max if sw.goal == "max" else min)(ok, key=lambda s: s["mean"])  # ties: the first listed value
    return best["value"]


def _apply(study: Study, sw: LrSweep, arm: str, chosen: Any, reason: str) -> None:
    for c in study.main_cells:
        if c.arm != arm:
            continue
        if chosen is None:
            c.blocked = reason
        elif c.blocked or c.chosen != {sw.key: chosen}:
            c.chosen, c.blocked = {sw.key: chosen}, ""
            validate_cell(study, c)


def resolve_sweeps(study: Study) -> None:
    """Pick each swept arm's value where possible and give it to the arm's main cells (re-validated), filling
    :attr:`Study.chosen` and :attr:`Study.sweep_entries`; new picks are written to ``lr_sweep.json``.

    An arm is resolved from its recorded pick (same fingerprint), else once every one of its sweep cells has
    finished (complete, or failed in its last attempt with its current config): the value with the best mean ``metric`` (``goal``)
    over its complete cells; values whose cells all failed are skipped. Unresolved arms' main cells stay
    :attr:`Cell.blocked`, with the reason.

    Raises:
        StudyError: the picked value makes a main cell's config invalid.
    """
    if not study.sweeps:
        return
    path = study.out_dir / SWEEP_FILE
    record = read_json(path) or {}
    arms_rec = record.get("arms") if isinstance(record.get("arms"), dict) else {}
    changed = False
    for sw in study.sweeps:
        for arm in sw.arms:
            cells = [c for c in study.cells if c.kind == "sweep" and c.arm == arm]
            fp = _fingerprint(sw, cells)
            entry = arms_rec.get(arm)
            reused = (isinstance(entry, dict) and entry.get("chosen") is not None
                      and {k: entry.get(k) for k in FINGERPRINT_KEYS} == json.loads(json.dumps(fp)))
            reason = ""
            if not reused:
                scores, reason = _score(study, sw, cells)
                entry = None
                if scores is not None:
                    chosen = _pick(sw, scores)
                    entry = {**fp, "scores": scores, "chosen": chosen}
                    old = arms_rec.get(arm)
                    if isinstance(old, dict) and {k: v for k, v in old.items() if k != "resolved"} == \
                            json.loads(json.dumps(entry)):
                        entry = old  # the same outcome again (all failed): not rewritten
                    else:
                        entry["resolved"] = _dt.datetime.now().isoformat(timespec="seconds")
                        arms_rec[arm], changed = entry, True
                    if chosen is None:
                        reason = f"every sweep cell of arm {arm} failed or has no {sw.metric}"
            if entry is not None:
                study.sweep_entries[arm] = entry
            chosen = None if entry is None else entry.get("chosen")
            if chosen is not None:
                study.chosen[arm] = chosen
            _apply(study, sw, arm, chosen, f"the lr sweep of arm {arm} is not resolved: {reason}")
    if changed:
        atomic_write(path, json.dumps({"study": study.name, "arms": arms_rec}, indent=1) + "\n")


def sweep_markdown(study: Study) -> list[str]:
    """The ``results.md`` section on the sweeps: per swept arm, each value's mean score and the pick."""
    if not study.sweeps:
        return []
    lines = ["## Learning-rate sweeps", "",
             f"Each swept arm's main cells use the value picked here (recorded in `{SWEEP_FILE}`): the best mean "
             "`metric` over the sweep's seeds; a value whose sweep cells all failed is skipped.", "",
             "| arm | key | metric (goal) | seeds | rounds | value: mean (n) | picked |",
             "|---|---|---|---|---|---|---|"]
    for sw in study.sweeps:
        for arm in sw.arms:
            entry = study.sweep_entries.get(arm)
            seeds = "config" if sw.seeds is None else ", ".join(map(str, sw.seeds))
            rounds = "as main" if sw.rounds is None else str(sw.rounds)
            if entry is None:
                tried = ", ".join(map(str, sw.values))
                why = next((c.blocked for c in study.main_cells if c.arm == arm and c.blocked), "")
                picked = "not yet" + (f" ({why.split(': ', 1)[-1]})" if why else "")
            else:
                tried = "; ".join(f"{s['value']}: " + ("failed" if s["mean"] is None else
                                                        f"{s['mean']:.4g} ({s['n']})") for s in entry["scores"])
                picked = "none" if entry.get("chosen") is None else f"**{entry['chosen']}**"
            lines.append(f"| {arm} | {sw.key} | {sw.metric} ({sw.goal}) | {seeds} | {rounds} | {tried} | {picked} |")
    return lines + [""]
