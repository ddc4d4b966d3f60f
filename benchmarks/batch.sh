#!/bin/bash
# The comparison batch behind docs/benchmarks.md (run under the CPU lock): 20 rounds with accuracy every 5 rounds for each
# framework's fastest setup on this 2-core machine, then 5-round timing of the one-process setups.
set -u
cd "$(dirname "$0")/.."
source .venv/bin/activate
mkdir -p runs/bench
OUT=runs/bench/compare2.jsonl
R20="hpcfed-2r plain-pytorch pfl-research-2p flower-2w"
R5="hpcfed pfl-research flower hpcfed-fp32"
for wl in text-bitfit text-lora; do
  python -m benchmarks.compare.run_all --rounds 20 --eval-every 5 --timeout 1500 --workloads $wl --only $R20 --out $OUT
  python -m benchmarks.compare.run_all --rounds 5 --timeout 900 --workloads $wl --only $R5 --out $OUT
done
python -m benchmarks.scaling --run --out runs/bench/scaling2.csv
