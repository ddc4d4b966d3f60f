#!/bin/bash
# The comparison batch behind docs/benchmarks.md, issue #16: block a (each framework out of the box) and block b
# (bf16 autocast everywhere, each framework in 1 process x 2 threads and 2 processes x 1 thread), 6 rounds,
# text-bitfit and text-lora, one framework at a time, each under the CPU lock $LOCK (run_all takes it around
# every entry; a lock inherited from `flock $LOCK benchmarks/batch.sh` is used as it is). Writes
# $OUT.jsonl (raw rows, appended) and $OUT.md (summary); SCALING=1 also reruns the scaling sweep.
#   benchmarks/batch.sh [OUT]            # default OUT=runs/bench/compare3
set -u
cd "$(dirname "$0")/.."
source .venv/bin/activate
LOCK=/tmp/hpcfed_cpu.lock
OUT=${1:-runs/bench/compare3}
mkdir -p "$(dirname "$OUT")"
python -m benchmarks.compare.run_all --block both --rounds 6 --timeout 1800 --lock "$LOCK" \
  --out "$OUT.jsonl" --md "$OUT.md"
if [ "${SCALING:-0}" = 1 ]; then
  held=0  # is $LOCK already ours (inherited from a `flock $LOCK` caller)? then flock would wait on ourselves
  for fd in /proc/$$/fd/*; do [ "$(readlink -f "$fd")" = "$(readlink -f "$LOCK")" ] && held=1; done
  if [ $held = 1 ]; then python -m benchmarks.scaling --run --out runs/bench/scaling3.csv
  else flock "$LOCK" python -m benchmarks.scaling --run --out runs/bench/scaling3.csv; fi
fi
