"""Studies: ``python -m hpcfed.study [run | report | list] configs/study/NAME.yaml [key=value ...]
[--cells I,J-K] [--only NAME] [--dry-run]``.

A study is a grid of runs of :mod:`hpcfed.main` (method × model × partition × init, any config keys),
repeated over seeds, summarised in one table with mean ± 95% CI per arm and a verdict per declared claim.
The study YAML (docs/study.md has every key)::

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
    seeds: [0, 1, 2]                    # every cell once per seed (an arm = a cell without its seed)
    lr_sweep: {values: [1.0e-3, 3.0e-3], seeds: [0], rounds: 3, arms: [{method: lora}]}
    claims:                             # paired differences a - b by seed, with a verdict
      - {name: lora beats full, a: {method: lora, data.alpha: 0.1}, b: {method: full, data.alpha: 0.1},
         metric: final_test_acc, direction: greater}
    target_acc: 0.75                    # for rounds_to_target (null: no column values)
    ranks: 1                            # MPI ranks per cell (> 1: the venv's mpirun)
    timeout_s: null                     # per-cell wall-clock limit (SIGTERM, then SIGKILL)

Each cell runs ``python -m hpcfed.main config=<base_config> progress=false <base> <cell> <swept value>
<command-line words> name=<cell id> out_dir=<study out_dir>`` in a subprocess (its output appended to
``<cell>/study.log``), so a crashing cell is recorded as failed and the study goes on; ``--cells`` /
``--only`` run a subset (one Slurm array task per cell). Every cell's config is validated before anything
runs. A complete cell is skipped, so re-running resumes a study cell by cell.

Outputs in the study folder (each written atomically): ``results.csv`` and ``results.md`` (one row per cell,
then the arms, claims and sweeps), ``arms.csv``, ``claims.csv``, ``lr_sweep.json``, ``acc_vs_round.png`` and
``acc_vs_bytes.png``.

Modules: :mod:`~hpcfed.study.spec` (the study file, its cells and arms, validation; helpers in
:mod:`~hpcfed.study.expand` and :mod:`~hpcfed.study.design`), :mod:`~hpcfed.study.runner` (running cells),
:mod:`~hpcfed.study.cli` (the command line), :mod:`~hpcfed.study.outputs` (a cell's run folder and row),
:mod:`~hpcfed.study.sweep` (learning-rate sweeps), :mod:`~hpcfed.study.stats` (mean ± t-CI, paired
differences, the verdict rule), :mod:`~hpcfed.study.summary` (per-arm and per-claim tables) and
:mod:`~hpcfed.study.report` (the table and plots). Everything public is re-exported here.
"""

from __future__ import annotations

from hpcfed.runlog import METRICS_FILE, read_metrics
from hpcfed.study.cli import COMMANDS, cli, list_cells, parse_cells, select_cells
from hpcfed.study.design import METRIC_COLUMNS, NUMERIC_METRICS, Claim, LrSweep
from hpcfed.study.errors import StudyError
from hpcfed.study.outputs import (
    LOG_FILE,
    RECORD_FILE,
    SWEEP_FILE,
    atomic_write,
    collect,
    is_complete,
    read_json,
    run_dir,
)
from hpcfed.study.report import columns, report, write_plots, write_table
from hpcfed.study.runner import (STOP_GRACE_S, SUPERSEDED_DIR, adopt_reusable, cell_command, error_tail,
                                 find_reusable, mpirun_path, run_cell, run_study, set_aside_superseded)
from hpcfed.study.spec import (
    CLI_STUDY_KEYS,
    MAX_ID_CHARS,
    RESERVED_CONFIG_KEYS,
    STUDY_KEYS,
    Cell,
    Study,
    cell_argv,
    cell_ranks,
    load_study,
)
from hpcfed.study.stats import Estimate, Paired, mean_ci, paired_differences, t_quantile, verdict
from hpcfed.study.summary import arm_table, claim_table
from hpcfed.study.sweep import resolve_sweeps

__all__ = [
    "CLI_STUDY_KEYS", "COMMANDS", "Claim", "Estimate", "LOG_FILE", "LrSweep", "MAX_ID_CHARS", "METRICS_FILE",
    "METRIC_COLUMNS", "NUMERIC_METRICS", "Paired", "RECORD_FILE", "RESERVED_CONFIG_KEYS", "STOP_GRACE_S",
    "STUDY_KEYS", "SWEEP_FILE", "Cell", "Study", "StudyError", "adopt_reusable", "arm_table", "atomic_write",
    "cell_argv", "cell_command", "cell_ranks", "claim_table", "cli", "collect", "columns", "error_tail",
    "find_reusable", "is_complete", "list_cells",
    "load_study", "mean_ci", "mpirun_path", "paired_differences", "parse_cells", "read_json", "read_metrics",
    "report", "resolve_sweeps", "run_cell", "run_dir", "run_study", "select_cells", "SUPERSEDED_DIR",
    "set_aside_superseded", "t_quantile", "verdict",
    "write_plots", "write_table",
]
