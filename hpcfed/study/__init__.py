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

Modules: :mod:`~hpcfed.study.spec` (the study file, its grid and cells, validation),
:mod:`~hpcfed.study.runner` (cell commands, running cells, the command line),
:mod:`~hpcfed.study.report` (rows and curves read back from the runs, the table, the plots) and
:mod:`~hpcfed.study.outputs` (a cell's run folder and whether it is complete); ``metrics.jsonl`` is read by
:func:`hpcfed.runlog.read_metrics`. Everything public is re-exported here.
"""

from __future__ import annotations

import re  # noqa: F401  (kept reachable as hpcfed.study.re, as when this was one module; tests use it)

from hpcfed.runlog import METRICS_FILE, read_metrics
from hpcfed.study.outputs import LOG_FILE, RECORD_FILE, atomic_write, is_complete, read_json, run_dir
from hpcfed.study.report import METRIC_COLUMNS, collect, columns, report, write_plots, write_table
from hpcfed.study.runner import STOP_GRACE_S, cell_command, cli, error_tail, mpirun_path, run_cell, run_study
from hpcfed.study.spec import (
    CLI_STUDY_KEYS,
    MAX_ID_CHARS,
    RESERVED_CONFIG_KEYS,
    STUDY_KEYS,
    Cell,
    Study,
    StudyError,
    cell_argv,
    load_study,
)

__all__ = [
    "CLI_STUDY_KEYS", "LOG_FILE", "MAX_ID_CHARS", "METRICS_FILE", "METRIC_COLUMNS", "RECORD_FILE",
    "RESERVED_CONFIG_KEYS", "STOP_GRACE_S", "STUDY_KEYS", "Cell", "Study", "StudyError", "atomic_write",
    "cell_argv", "cell_command", "cli", "collect", "columns", "error_tail", "is_complete", "load_study",
    "mpirun_path", "read_json", "read_metrics", "report", "run_cell", "run_dir", "run_study", "write_plots",
    "write_table",
]
