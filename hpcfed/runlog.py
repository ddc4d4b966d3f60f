"""A run's on-disk log: reading ``<run_dir>/metrics.jsonl`` (written by :mod:`hpcfed.main`, a JSON object per line).

Imports nothing from hpcfed, so any module (the study, a demo, an evaluation script) can read a run's
metrics the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

METRICS_FILE = "metrics.jsonl"
"""A run's metrics, one JSON object per line (per round), in ``<out_dir>/<name>/``."""


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The lines of a run's ``metrics.jsonl``, in order.

    Args:
        run_dir: the run's folder (``<out_dir>/<name>``), which holds :data:`METRICS_FILE`.

    Returns:
        One dict per line that parses as a JSON object. A line that does not (a torn last line of a run
        killed mid-write, an empty line) is skipped; a missing or unreadable file gives ``[]``.
    """
    out: list[dict] = []
    try:
        text = (Path(run_dir) / METRICS_FILE).read_text(encoding="utf-8")
    except OSError:
        return out
    for line in text.splitlines():
        try:
            m = json.loads(line)
        except ValueError:
            continue
        if isinstance(m, dict):
            out.append(m)
    return out
