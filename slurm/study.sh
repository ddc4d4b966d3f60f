#!/usr/bin/env bash
# Submit a study (configs/study/*.yaml) to Slurm: one array task per cell. Run it on the login node:
#
#   slurm/study.sh configs/study/fedtune_grid.yaml
#   slurm/study.sh configs/study/fedtune_mpnet.yaml --parallel 4 --time 02:00:00 -- --partition=cpu --account=me
#   slurm/study.sh configs/study/fedyolo_epochs.yaml --dry-run          # print the sbatch commands only
#
# It submits, each only if it has cells left to run:
#   1. the lr-sweep cells that are not complete, as an array (slurm/study_cell.sh, --ntasks = the cell's ranks);
#   2. the main cells that are not complete, as an array that starts when the sweep arrays have ended (afterany: a
#      failed sweep value is skipped, docs/study.md);
#   3. one job that rebuilds the tables and plots (python -m hpcfed.study report) when the main arrays have ended.
# A cell's ranks are the study's `ranks`, except 1 for a centralized cell (hpcfed.study.spec.cell_ranks), so a
# kind with both gets one array per rank count. Each array runs at most --parallel tasks at once (default 8).
# Complete cells are left out, so running the script again resumes a study. Options after `--` go to every sbatch.
# Prepare the data shards first (docs/study.md, "Running a subset, and Slurm arrays"): a cell builds missing shards
# itself, and many tasks starting at once would each build the same ones.
set -euo pipefail

usage() { echo "usage: slurm/study.sh STUDY.yaml [--parallel N] [--time HH:MM:SS] [--dry-run] [-- sbatch options]" >&2; exit 2; }
[ $# -ge 1 ] || usage
STUDY=$1; shift
PARALLEL=8 TIME=01:00:00 DRY=0 EXTRA=()
while [ $# -gt 0 ]; do
  case $1 in
    --parallel) [ $# -ge 2 ] || usage; PARALLEL=$2; shift 2 ;;
    --time) [ $# -ge 2 ] || usage; TIME=$2; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    *) usage ;;
  esac
done
case $PARALLEL in ''|*[!0-9]*|0) echo "error: --parallel $PARALLEL: must be a positive integer" >&2; exit 2 ;; esac
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
source slurm/env.sh   # PY

# One line per (kind, ranks) with cells that are not complete: "kind ranks indices" (Slurm array ranges).
PLAN=$("$PY" - "$STUDY" <<'EOF'
import sys
from hpcfed.study.errors import StudyError
from hpcfed.study.outputs import collect
from hpcfed.study.spec import cell_ranks, load_study
from hpcfed.study.sweep import resolve_sweeps

def ranges(ix):  # [0, 1, 2, 5] -> "0-2,5" (cli._ranges prints only first-last)
    out, i = [], 0
    while i < len(ix):
        j = i
        while j + 1 < len(ix) and ix[j + 1] == ix[j] + 1:
            j += 1
        out.append(str(ix[i]) if i == j else f"{ix[i]}-{ix[j]}")
        i = j + 1
    return ",".join(out)

try:
    study = load_study(sys.argv[1])
    resolve_sweeps(study)  # main cells carry their picked lr, so a finished one matches its config hash
except StudyError as e:
    sys.exit(f"error: {e}")
todo = {}
for i, c in enumerate(study.cells):
    if collect(study, c)[0]["status"] != "done":
        todo.setdefault((c.kind, cell_ranks(study, c)), []).append(i)
for kind in ("sweep", "main"):
    for (k, ranks), ix in sorted(todo.items(), key=lambda kv: -kv[0][1]):
        if k == kind:
            print(kind, ranks, ranges(ix))
EOF
)

submit() {  # prints the job id (the command, with --dry-run)
  if [ "$DRY" = 1 ]; then echo "sbatch $*" >&2; echo "DRYRUN"; else sbatch --parsable "$@" </dev/null | cut -d';' -f1; fi
}
CELL=(--time="$TIME" ${EXTRA[@]+"${EXTRA[@]}"})
SWEEP_JOBS="" MAIN_JOBS=""
while read -r KIND RANKS IX; do
  [ -n "$KIND" ] || continue
  DEP=()
  if [ "$KIND" = sweep ]; then
    job=$(submit --ntasks="$RANKS" "${CELL[@]}" --array="$IX%$PARALLEL" slurm/study_cell.sh "$STUDY")
    echo "hpcfed: $STUDY: lr-sweep cells $IX ($RANKS ranks): job $job" >&2
    SWEEP_JOBS+=":$job"
  else
    [ -z "$SWEEP_JOBS" ] || DEP=(--dependency=afterany"$SWEEP_JOBS")
    job=$(submit --ntasks="$RANKS" "${CELL[@]}" ${DEP[@]+"${DEP[@]}"} --array="$IX%$PARALLEL" \
      slurm/study_cell.sh "$STUDY")
    echo "hpcfed: $STUDY: main cells $IX ($RANKS ranks): job $job" >&2
    MAIN_JOBS+=":$job"
  fi
done <<<"$PLAN"
if [ -z "$SWEEP_JOBS$MAIN_JOBS" ]; then
  echo "hpcfed: $STUDY: every cell is complete; nothing submitted (tables: $PY -m hpcfed.study report $STUDY)" >&2
  exit 0
fi
DEP=(--dependency=afterany"${MAIN_JOBS:-$SWEEP_JOBS}")
report=$(submit --ntasks=1 --time=00:15:00 ${EXTRA[@]+"${EXTRA[@]}"} ${DEP[@]+"${DEP[@]}"} --job-name=hpcfed-report \
  --output="slurm-%x-%j.out" --wrap "$PY -m hpcfed.study report $STUDY")
echo "hpcfed: $STUDY: report: job $report" >&2
