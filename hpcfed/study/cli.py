"""The command line, ``python -m hpcfed.study [run | report | list] STUDY.yaml [key=value ...] [options]``.

``run`` (the default when the first word is the study file) runs the study, or only the cells chosen with
``--cells`` (indices as ``list`` prints them, e.g. a Slurm array's ``$SLURM_ARRAY_TASK_ID``) and/or ``--only``
(cell ids, arm ids or shell patterns); ``report`` rebuilds the table, statistics and plots from disk;
``list`` prints each cell's index, kind, id and status; ``basin`` measures the loss barrier between pairs of
finished cells named by the study's ``basin`` key (:mod:`hpcfed.study.basin`).
"""

from __future__ import annotations

import argparse
import fnmatch
import logging
import shlex
import signal
import sys
from typing import Optional, Sequence

from hpcfed.study.errors import StudyError
from hpcfed.study.outputs import collect
from hpcfed.study.report import report
from hpcfed.study.runner import effective_cell_command, log, run_study
from hpcfed.study.spec import Cell, Study, load_study
from hpcfed.study.sweep import resolve_sweeps

COMMANDS = ("run", "report", "list", "basin")


def parse_cells(spec: str, n: int) -> list[int]:
    """Cell indices from ``--cells``: comma-separated indices and inclusive ranges (``3``, ``3-5``, ``0,2,7-9``),
    0-based as ``list`` prints them; sorted, without repeats.

    Raises:
        StudyError: a part is not an index or range, a range is reversed, or an index is not in ``0..n-1``.
    """
    out: set[int] = set()
    for part in str(spec).split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise StudyError(f"--cells {spec!r}: {part.strip()!r} is not an index or a range like 3-5") from None
        if a < 0 or b < a:
            raise StudyError(f"--cells {spec!r}: {part.strip()!r} is not an index or an increasing range")
        if b >= n:
            raise StudyError(f"--cells {spec!r}: index {b} is out of range; this study's cells are 0-{n - 1}")
        out.update(range(a, b + 1))
    return sorted(out)


def select_cells(study: Study, cells: Optional[str] = None, only: Sequence[str] = ()) -> list[Cell]:
    """The cells chosen by ``--cells`` (indices) and ``--only`` (names: a cell id, an arm id, meaning all its
    cells, sweep cells included, or a shell pattern on cell ids); both given: the cells both choose. In the
    study's order.

    Raises:
        StudyError: a bad ``--cells``, or an ``--only`` name that matches no cell.
    """
    chosen = list(study.cells)
    if cells is not None:
        keep = set(parse_cells(cells, len(study.cells)))
        chosen = [c for i, c in enumerate(study.cells) if i in keep]
    names = [n.strip() for item in only for n in item.split(",") if n.strip()]
    if names:
        hit = set()
        for name in names:
            found = {c.id for c in study.cells if c.id == name or c.arm == name or fnmatch.fnmatchcase(c.id, name)}
            if not found:
                raise StudyError(f"--only {name!r} matches no cell or arm (see: python -m hpcfed.study list FILE)")
            hit |= found
        chosen = [c for c in chosen if c.id in hit]
    return chosen


def _ranges(idx: list[int]) -> str:
    return f"{idx[0]}-{idx[-1]}" if len(idx) > 1 else str(idx[0])


def list_cells(study: Study) -> list[str]:
    """``list``'s lines: a header with the index ranges of sweep and main cells, then ``index kind id status``."""
    resolve_sweeps(study)
    sweep = [i for i, c in enumerate(study.cells) if c.kind == "sweep"]
    main = [i for i, c in enumerate(study.cells) if c.kind == "main"]
    head = f"# {study.name}: {len(study.cells)} cells, {len(study.arms)} arms; main cells {_ranges(main)}"
    if sweep:
        head += f"; lr sweep cells {_ranges(sweep)} (run them first)"
    lines = [head]
    for i, c in enumerate(study.cells):
        status = collect(study, c)[0]["status"]
        lines.append(f"{i}\t{c.kind}\t{c.id}\t{status}" + ("\t(waiting for its arm's lr sweep)" if c.blocked else ""))
    return lines


def _parser(command: str) -> argparse.ArgumentParser:
    description = sys.modules[__package__].__doc__.split("\n\n")[0]  # the package docstring's first paragraph
    p = argparse.ArgumentParser(prog=f"python -m hpcfed.study {command}", description=description,
                                allow_abbrev=False)
    p.add_argument("study", help="study YAML (configs/study/*.yaml)")
    p.add_argument("words", nargs="*", help="study keys (name, out_dir, ranks, target_acc, timeout_s, seeds, "
                                            "base_config, reuse_from) or config overrides for every cell, key=value")
    if command == "run":
        p.add_argument("--cells", metavar="I,J-K", help="only these cells, by index as 'list' prints them "
                                                         "(e.g. --cells $SLURM_ARRAY_TASK_ID)")
        p.add_argument("--only", metavar="NAME", action="append", default=[],
                       help="only cells with this id, of this arm, or matching this pattern (repeatable)")
        mode = p.add_mutually_exclusive_group()
        mode.add_argument("--dry-run", action="store_true", help="validate and print each chosen cell's command")
        mode.add_argument("--report", action="store_true", help="only rebuild the table and plots from disk")
    return p


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry; returns the exit status: 0 every chosen cell done, 1 some chosen cell failed (or
    could not run), 2 bad input (nothing has run), 130 interrupted."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in COMMANDS else "run"
    rest = argv[1:] if argv and argv[0] in COMMANDS else argv
    args = _parser(command).parse_intermixed_args(rest)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    old_term = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, _interrupt)  # a scheduler's kill stops the running cell cleanly too
    except ValueError:  # not the main thread
        old_term = None
    try:
        return _cli(command, args, argv)
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


def _cli(command: str, args: argparse.Namespace, argv: list[str]) -> int:
    try:
        study = load_study(args.study, args.words)
        study.command = shlex.join(["python", "-m", "hpcfed.study", *argv])
        if command == "list":
            print("\n".join(list_cells(study)))
            return 0
        if command == "basin":
            from hpcfed.study.basin import basin

            print(basin(study, study.basin, log=log.info), end="")
            return 0
        if command == "report" or args.report:
            rows = report(study)
            selected = {c.id for c in study.cells}
        else:
            cells = select_cells(study, args.cells, args.only)
            if args.dry_run:
                resolve_sweeps(study)
                index = {c.id: i for i, c in enumerate(study.cells)}
                for cell in cells:
                    note = "\t# lr sweep not resolved: shows its first value" if cell.blocked else ""
                    print(f"{index[cell.id]}\t{cell.id}\t{shlex.join(effective_cell_command(study, cell))}{note}")
                return 0
            rows = run_study(study, cells)
            selected = {c.id for c in cells}
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hpcfed.study: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    failed = [r["cell"] for r in rows if r["status"] == "failed" and r["cell"] in selected]
    log.info("results: %s (%d cells, %d chosen, %d of them failed)", study.out_dir / "results.md", len(rows),
             len(selected), len(failed))
    return 1 if failed else 0
