"""Round-time overhead of client-level DP and of the robust aggregators against FedAvg (issue #17, deliverable 4c).

Runs the same federated job once per arm, one after another (run it alone: ``flock /tmp/hpcfed_cpu.lock``), and
reports the median round time over rounds 2..R (round 1 holds warm-up) with its min-max spread::

    python -m benchmarks.dp_robust_overhead [--rounds 5] [--ranks 2] [--out docs/results/privacy_robustness/overhead]

Job: SST-2, all-MiniLM-L6-v2 BitFit, fp32, 100 clients at Dirichlet(0.5), cohort 20, 8 local steps of 32, no
evaluation until the last round, ``mpirun --bind-to none -n RANKS``, 1 torch thread per rank. Arms: fedavg; DP
(z = 1, C = 0.1, fixed-size cohorts, RDP accounting every round); median; trimmed mean (β = 0.1); Krum (f = 8).
Writes ``overhead.csv`` (one row per arm and round) and ``overhead.md`` (the table) under ``--out``, plus each
arm's ``metrics.jsonl``. Timings on a shared 2-core machine are fragile: compare arms of one batch only.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

BASE = ["config=configs/sst2_minilm_bitfit.yaml", "data.num_clients=100", "data.num_shards=4", "data.alpha=0.5",
        "fl.cohort_size=20", "fl.local.steps=8", "fl.local.bf16=false", "eval.every_rounds=1000",
        "checkpoint.every_rounds=0", "checkpoint.export_model=false", "progress=false", "dist.num_threads=1"]
ARMS = {
    "fedavg": [],
    "dp": ["fl.dp.enabled=true", "fl.dp.noise_multiplier=1.0", "fl.dp.clip_norm=0.1"],
    "median": ["fl.aggregator=median"],
    "trimmed_mean": ["fl.aggregator=trimmed_mean", "fl.aggregator_params.trim_fraction=0.1"],
    "krum": ["fl.aggregator=krum", "fl.aggregator_params.num_byzantine=8"],
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("docs/results/privacy_robustness/overhead"))
    ap.add_argument("--runs", type=Path, default=Path("runs/bench/dp_robust_overhead"))
    args = ap.parse_args(argv)
    mpirun = shutil.which("mpirun") or sys.exit("mpirun not found: make install (the mpi extra)")
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    args.out.mkdir(parents=True, exist_ok=True)
    rows, table = [], []
    for arm, words in ARMS.items():
        cmd = [mpirun, *root, "--oversubscribe", "--bind-to", "none", "-n", str(args.ranks), sys.executable, "-m",
               "hpcfed.main", *BASE, f"fl.rounds={args.rounds}", *words, f"out_dir={args.runs}", f"name={arm}",
               "checkpoint.resume=none"]
        print("$", " ".join(cmd[cmd.index(sys.executable):]), flush=True)
        subprocess.run(cmd, check=True)
        metrics = [json.loads(x) for x in (args.runs / arm / "metrics.jsonl").read_text().splitlines() if x.strip()]
        shutil.copy(args.runs / arm / "metrics.jsonl", args.out / f"{arm}.metrics.jsonl")
        times = [m["round_s"] for m in metrics if m.get("round", 0) >= 2]
        for m in metrics:
            rows.append({"arm": arm, "round": m["round"], "round_s": m["round_s"], "clients": m.get("clients")})
        table.append((arm, statistics.median(times), min(times), max(times), len(times)))
    with open(args.out / "overhead.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["arm", "round", "round_s", "clients"])
        w.writeheader()
        w.writerows(rows)
    base = table[0][1]
    lines = ["| arm | median s/round (rounds 2..R) | min-max | rounds | vs FedAvg |", "|---|---|---|---|---|"]
    lines += [f"| {a} | {med:.2f} | {lo:.2f}-{hi:.2f} | {n} | {med / base:.3f}x |" for a, med, lo, hi, n in table]
    (args.out / "overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
