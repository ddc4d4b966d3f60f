#!/usr/bin/env bash
# One cell of a study per Slurm array task (submitted by slurm/study.sh, which sets --ntasks to the cell's ranks:
# the study's, 1 for a centralized cell):
#
#   sbatch --array=0-5 --ntasks=2 slurm/study_cell.sh configs/study/fedtune_grid.yaml [key=value ...]
#
# The study runner starts the cell (mpirun -n <ranks> for several ranks, inside this allocation), skips it when it
# is already complete, and passes SIGTERM at the time limit on to the cell, which checkpoints; submitting the same
# array again continues it.
#SBATCH --job-name=hpcfed-cell
#SBATCH --ntasks=2
#SBATCH --cpus-per-task=1
#SBATCH --time=01:00:00
#SBATCH --output=slurm-%x-%A_%a.out
set -euo pipefail

STUDY=${1:?usage: sbatch --array=I-J slurm/study_cell.sh configs/study/NAME.yaml [key=value ...]}
shift
: "${SLURM_ARRAY_TASK_ID:?not an array task: submit with sbatch --array=... (slurm/study.sh does)}"
cd "${SLURM_SUBMIT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"

source slurm/env.sh   # PY, OMP_NUM_THREADS, offline hub access
exec "$PY" -m hpcfed.study run "$STUDY" "$@" --cells "$SLURM_ARRAY_TASK_ID"
