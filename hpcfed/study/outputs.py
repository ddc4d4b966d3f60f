"""A cell's run folder: where it is, the files the study writes there, and whether the cell is complete.

Shared by :mod:`hpcfed.study.runner` (skip complete cells, record each attempt) and
:mod:`hpcfed.study.report` (read the outputs back into a table).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from hpcfed.atomic import atomic_write_text
from hpcfed.runlog import read_metrics
from hpcfed.study.spec import Cell, Study

RECORD_FILE = "study_cell.json"
"""Per-cell record of the study's last attempt (status, exit code, wall time, error, command)."""
LOG_FILE = "study.log"
"""Per-cell output of every attempt (appended)."""


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


def is_complete(study: Study, cell: Cell) -> bool:
    """The cell's outputs are there and were written by this cell's config (same hash): federated and
    centralized: ``metrics.jsonl`` reaches ``fl.rounds`` and ``final/`` exists; local_only:
    ``local_only.json`` exists."""
    d = run_dir(study, cell)
    info = read_json(d / "run_info.json")
    if info is None or info.get("config_hash") != cell.cfg.hash():
        return False
    if cell.cfg.fl.mode == "local_only":
        return (d / "local_only.json").is_file()
    metrics = read_metrics(d)
    return bool(metrics) and metrics[-1].get("round") == cell.cfg.fl.rounds and (d / "final").is_dir()


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (readers never see half a file)."""
    atomic_write_text(path, text)
