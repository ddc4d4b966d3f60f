#!/usr/bin/env bash
# Launch hpcfed on a Slurm cluster: one rank per GPU, each hosting its share of every round's cohort.
#
#   sbatch slurm/run.sh configs/sst2_minilm_bitfit.yaml [key=value ...]
#   sbatch --nodes=4 --gpus-per-node=8 --ntasks-per-node=8 slurm/run.sh configs/my.yaml fl.rounds=500
#
# Tasks per node = GPUs per node. The script only sets the environment and calls srun (or, where srun is
# absent, mpirun with the same number of ranks); all logic lives in `python -m hpcfed.main`.
#
# Preemption and time limits: Slurm sends SIGUSR1 to this script 120 s before the end (--signal); the
# script passes it to the ranks, which finish the current round, write a checkpoint and exit with status 75;
# the script then requeues the job (--requeue), and the requeued job resumes from the newest checkpoint
# (checkpoint.resume=auto is the default).
#SBATCH --job-name=hpcfed
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --output=slurm-%x-%j.out
#SBATCH --requeue
#SBATCH --signal=B:USR1@120
set -euo pipefail

CONFIG=${1:-configs/sst2_minilm_bitfit.yaml}
[ $# -gt 0 ] && shift
cd "${SLURM_SUBMIT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"

source slurm/env.sh   # PY, OMP_NUM_THREADS, offline hub access

NTASKS=${SLURM_NTASKS:-$(( ${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}} * ${SLURM_NTASKS_PER_NODE:-1} ))}
echo "hpcfed: job ${SLURM_JOB_ID:-none}, ${NTASKS} ranks, config ${CONFIG}" >&2

if command -v srun >/dev/null 2>&1; then
  LAUNCH=(srun --kill-on-bad-exit=1 --cpu-bind=cores)
else
  # No srun (a login node, a container, a test): mpirun with the same rank count. Open MPI must not try
  # to use Slurm to start its daemons then.
  MPIRUN=$(dirname "$PY")/mpirun
  command -v "$MPIRUN" >/dev/null 2>&1 || MPIRUN=mpirun
  LAUNCH=("$MPIRUN" --oversubscribe --bind-to none -n "$NTASKS")
  [ "$(id -u)" = 0 ] && LAUNCH+=(--allow-run-as-root)
  export PRTE_MCA_ras=^slurm PRTE_MCA_plm=^slurm OMPI_MCA_ras=^slurm OMPI_MCA_plm=^slurm
fi

"${LAUNCH[@]}" "$PY" -m hpcfed.main config="$CONFIG" "$@" &
child=$!
# srun and mpirun both pass SIGUSR1 on to the ranks.
trap 'echo "hpcfed: stop signal: ranks checkpoint after this round" >&2; kill -USR1 "$child" 2>/dev/null' USR1 TERM
rc=0
while true; do
  wait "$child" && rc=0 || rc=$?
  kill -0 "$child" 2>/dev/null || break   # wait returned for a trapped signal: keep waiting
done
if [ "$rc" = 75 ] && [ -n "${SLURM_JOB_ID:-}" ] && command -v scontrol >/dev/null 2>&1; then
  echo "hpcfed: checkpointed; requeueing job $SLURM_JOB_ID" >&2
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$rc"
