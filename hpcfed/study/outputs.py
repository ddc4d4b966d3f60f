"""A cell's run folder: where it is, the files the study writes there, whether the cell is complete, and its
table row and accuracy curve read back from the run's own files.

Shared by :mod:`hpcfed.study.runner` (skip complete cells, record each attempt), :mod:`hpcfed.study.sweep`
(score sweep cells) and :mod:`hpcfed.study.report` (the table).
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any, Optional

from hpcfed.atomic import atomic_write_text
from hpcfed.config import Config
from hpcfed.runlog import read_metrics
from hpcfed.study.design import METRIC_COLUMNS, extra_metric_columns, rounds_to_acc_target
from hpcfed.study.spec import Cell, Study

RECORD_FILE = "study_cell.json"
"""Per-cell record of the study's last attempt (status, exit code, wall time, error, command)."""
LOG_FILE = "study.log"
"""Per-cell output of every attempt (appended)."""
SUPERSEDED_DIR = ".superseded"
"""Under the study's out_dir: earlier outputs of cells whose config has since changed (``<cell>-<old hash>/``)."""
SWEEP_FILE = "lr_sweep.json"
"""In the study folder: per swept arm, the sweep's settings, each value's score and the value picked."""


def run_dir(study: Study, cell: Cell) -> Path:
    """The cell's run folder, ``<study out_dir>/<cell id>`` (``hpcfed.main``'s ``<out_dir>/<name>``)."""
    return study.out_dir / cell.id


def read_json(path: Path) -> Optional[dict]:
    """A JSON object file, or None when it is missing, unreadable or not an object."""
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


@functools.lru_cache(maxsize=None)
def _config_yaml_hash(path: str, mtime_ns: int) -> Optional[str]:
    """The hash of a run's config.yaml as today's schema reads it (cached per file version), None if unreadable."""
    from hpcfed.config import ConfigError, load_config

    try:
        return load_config([f"config={path}"]).hash()
    except (ConfigError, OSError, ValueError):
        return None


def ran_with_config(cell: Cell, d: Path, recorded_hash: Optional[str]) -> bool:
    """The run in ``d`` was made with ``cell``'s config: its recorded hash (``run_info.json``) is the cell's, or
    its ``config.yaml`` (the effective config), read with today's schema, hashes to the cell's.

    The second test keeps a finished run valid when a config key was added after it ran and its default leaves the
    result unchanged but :data:`hpcfed.config.load.HASH_NEUTRAL_DEFAULTS` does not list it yet (the run recorded a
    hash with or without the key); a changed value of an existing key still differs, as its old value is in the
    file."""
    if recorded_hash is not None and recorded_hash == cell.config_hash():
        return True
    path = d / "config.yaml"
    try:
        mtime_ns = path.stat().st_mtime_ns
    except OSError:
        return False
    return _config_yaml_hash(str(path), mtime_ns) == cell.config_hash()


def is_complete(study: Study, cell: Cell) -> bool:
    """The cell's outputs are there and were written by this cell's config (:func:`ran_with_config`): federated and
    centralized: ``metrics.jsonl`` reaches ``fl.rounds`` and the run finished: ``final/`` exists, or the study's
    record (``study_cell.json``) says ``done`` (a folder of raw result files, as ``docs/results/<study>/cells/``
    keeps them, has no weights and so no ``final/``; the runner writes a ``running`` record before each attempt,
    so an old ``done`` never vouches for a newer, unfinished run); local_only: ``local_only.json`` exists. A
    blocked cell (its arm's sweep unresolved) is never complete."""
    if cell.blocked:
        return False
    return complete_in(cell, run_dir(study, cell))


def complete_in(cell: Cell, d: Path) -> bool:
    """:func:`is_complete` for the run folder ``d`` (the cell's own, or another study's, for reuse)."""
    info = read_json(d / "run_info.json")
    if info is None or not ran_with_config(cell, d, info.get("config_hash")):
        return False
    if cell.cfg.fl.mode == "local_only":
        return (d / "local_only.json").is_file()
    metrics = read_metrics(d)
    if not metrics or metrics[-1].get("round") != cell.cfg.fl.rounds:
        return False
    return (d / "final").is_dir() or (read_json(d / RECORD_FILE) or {}).get("status") == "done"


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (readers never see half a file)."""
    atomic_write_text(path, text)


def _select(cfg: Config, key: str) -> Any:
    obj: Any = cfg
    for part in key.split("."):
        if not hasattr(obj, part):
            return None
        obj = getattr(obj, part)
    return obj


def collect(study: Study, cell: Cell) -> tuple[dict, dict]:
    """One table row and the cell's curve, read from its run folder.

    Returns:
        (row, curve): ``row`` maps ``cell``, the axis columns and :data:`METRIC_COLUMNS` to values (None when
        absent; accuracies as fractions, bytes, seconds); ``curve`` has ``rounds``, ``acc`` and ``cum_bytes``
        (bytes up + down up to that round) at the evaluated rounds, and ``local_only`` (bool).
    """
    d = run_dir(study, cell)
    row: dict[str, Any] = {"cell": cell.id}
    for axis in study.axes:
        row[axis] = cell.labels[axis] if axis in cell.labels else _select(cell.cfg, axis)
    row.update({k: None for k in (*METRIC_COLUMNS, *extra_metric_columns(study.metrics))})
    local_only = cell.cfg.fl.mode == "local_only"
    curve: dict[str, Any] = {"rounds": [], "acc": [], "cum_bytes": [], "local_only": local_only}
    rec = read_json(d / RECORD_FILE) or {}
    row["wall_s"] = None if rec.get("wall_s") is None else round(float(rec["wall_s"]), 1)
    if not is_complete(study, cell):
        if rec.get("status") == "failed":
            row["status"], row["error"] = "failed", rec.get("error") or None
        else:
            row["status"], row["wall_s"] = "pending", None
        if cell.blocked:
            row.update({k: None for k in cell.chosen})  # the swept value is not known yet
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
    for col in extra_metric_columns(study.metrics):  # final_<key>: the last value the run reported
        if rounds_to_acc_target(col) is not None:  # rounds_to_acc_<x>: from the curve, below
            continue
        vals = [m[col[len("final_"):]] for m in metrics if isinstance(m.get(col[len("final_"):]), (int, float))]
        row[col] = round(float(vals[-1]), 4) if vals else None
    if local_only:
        row["bytes_per_round"] = 0  # nothing is communicated
        lta = metrics[-1].get("local_test_acc") if metrics else None
        row["local_test_acc"] = None if lta is None else round(float(lta), 4)
    else:
        row["bytes_per_round"] = round(sum(per_round) / len(per_round)) if per_round else None
        targets = {"rounds_to_target": study.target_acc,
                   **{c: rounds_to_acc_target(c) for c in extra_metric_columns(study.metrics)}}  # None: final_<key>
        for col, target in targets.items():
            if target is not None:
                row[col] = next((r for r, a in zip(curve["rounds"], curve["acc"]) if a >= target), None)
    return row, curve


def cell_text(v: Any) -> str:
    """A table value as text: empty for None, ``true``/``false``, short floats, JSON lists."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}" if abs(v) < 1e-3 or abs(v) >= 1e6 else repr(v)
    if isinstance(v, (list, tuple)):
        return json.dumps(v)
    return str(v)
