#!/usr/bin/env bash
# Strong and weak scaling sweep of hpcfed's round over node counts, inside ONE Slurm allocation; writes a CSV
# and fits/plots the scaling model (benchmarks/scaling.py).
#
#   sbatch --nodes=8 --gpus-per-node=4 --ntasks-per-node=4 slurm/scaling.sh [workload] [extra --set words]
#   sbatch --nodes=8 slurm/scaling.sh text-lora --set fl.local.client_group_size=8
#
# Rank counts swept: GPUS_PER_NODE x {1, 2, 4, ..., SLURM_NNODES} (plus 1 rank). Weak scaling gives every
# rank BASE_COHORT clients per round; strong scaling fixes the cohort at BASE_COHORT x the largest rank count.
# Outputs: runs/bench/scaling-<jobid>.csv, runs/bench/scaling-<jobid>.png and the fitted alpha/beta/t_client
# on stdout. Environment: BASE_COHORT (default 16), ROUNDS (default 4: round 1 is the warm-up),
# NCCL_ALPHA_US / NCCL_BUSBW_GBS (both set: the projection uses them, from nccl-tests all_reduce_perf; unset:
# it uses the all-reduce measured by this sweep on this allocation's ranks).
#SBATCH --job-name=hpcfed-scaling
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --time=01:00:00
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail

WORKLOAD=${1:-text-bitfit}
[ $# -gt 0 ] && shift
cd "${SLURM_SUBMIT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"

PY=${HPCFED_PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-${OMP_NUM_THREADS:-1}}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

NODES=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
GPN=${SLURM_GPUS_ON_NODE:-${SLURM_NTASKS_PER_NODE:-1}}
BASE_COHORT=${BASE_COHORT:-16}
ROUNDS=${ROUNDS:-4}
TAG=${SLURM_JOB_ID:-local}
OUT=runs/bench/scaling-${TAG}.csv

RANKS=(1)
n=1
while [ "$n" -le "$NODES" ]; do
  RANKS+=($(( n * GPN )))
  n=$(( n * 2 ))
done
# de-duplicate (GPN = 1 gives 1 twice)
RANKS=($(printf '%s\n' "${RANKS[@]}" | sort -n | uniq))
echo "hpcfed scaling: job ${TAG}, ${NODES} nodes x ${GPN} GPUs, ranks ${RANKS[*]}, workload ${WORKLOAD}" >&2

LAUNCHER=mpirun
DEVICE=cpu
command -v srun >/dev/null 2>&1 && [ -n "${SLURM_JOB_ID:-}" ] && LAUNCHER=srun
command -v nvidia-smi >/dev/null 2>&1 && DEVICE=cuda

"$PY" -m benchmarks.scaling --run --launcher "$LAUNCHER" --device "$DEVICE" --gpus-per-node "$GPN" \
  --ranks "${RANKS[@]}" --base-cohort "$BASE_COHORT" --rounds "$ROUNDS" --workload "$WORKLOAD" \
  --out "$OUT" "$@"
COLLECTIVE=(--collective measured)
if [ -n "${NCCL_ALPHA_US:-}" ] && [ -n "${NCCL_BUSBW_GBS:-}" ]; then
  COLLECTIVE=(--collective nccl --nccl-alpha-us "$NCCL_ALPHA_US" --nccl-busbw-gbs "$NCCL_BUSBW_GBS")
fi
"$PY" -m benchmarks.scaling --fit "$OUT" --plot "runs/bench/scaling-${TAG}.png" "${COLLECTIVE[@]}"
echo "hpcfed scaling: wrote $OUT" >&2
