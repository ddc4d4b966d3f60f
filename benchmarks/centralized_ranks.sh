#!/bin/bash
# Round time of a centralized cell (hpcfed.study.cell_ranks): 2 ranks x 1 thread (the study's ranks) vs 1 rank x 2
# threads (what the runner now starts) vs 1 rank x 1 thread. Full fine-tuning of MiniLM-L6 from random init, 80
# steps of 32 per round, 3 rounds, no evaluation; the config is a chen_minilm_v2 centralized cell's.
# Run it alone (flock on the lock file of benchmarks/batch.sh):
#   flock /tmp/hpcfed_cpu.lock benchmarks/centralized_ranks.sh CONFIG [OUT]
# CONFIG: e.g. runs/study/chen_minilm_v2/sweep-init-random_setting-central_lr-0.0003_seed-0/config.yaml
set -eu
cd "$(dirname "$0")/.."
source .venv/bin/activate
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
C=$1; OUT=${2:-runs/bench/centralized_ranks}
COMMON="config=$C progress=false fl.rounds=3 eval.every_rounds=100 checkpoint.every_rounds=0"
rm -rf "$OUT"; mkdir -p "$OUT"
.venv/bin/mpirun --oversubscribe --bind-to none --allow-run-as-root -n 2 \
  python -m hpcfed.main $COMMON name=r2t1 out_dir="$OUT" > "$OUT/r2t1.log" 2>&1
python -m hpcfed.main $COMMON name=r1t2 out_dir="$OUT" > "$OUT/r1t2.log" 2>&1
python -m hpcfed.main $COMMON dist.num_threads=1 name=r1t1 out_dir="$OUT" > "$OUT/r1t1.log" 2>&1
for a in r2t1 r1t2 r1t1; do
  echo "$a $(grep -o '"round_s": [0-9.]*' "$OUT/$a/metrics.jsonl" | cut -d' ' -f2 | tr '\n' ' ')"
done | tee "$OUT/round_s.txt"
