"""The FedYolo demo: ``python -m hpcfed.fedyolo_demo [--np N] [--only NAME ...] [key=value ...]`` runs the joint,
sequential and shared-full-update variants of configs/algo/fedyolo.yaml one after the other and prints the
accuracy / bytes table (docs/results/fedyolo.md). The method itself is :mod:`hpcfed.algorithms.fedyolo`.
"""

from __future__ import annotations

from typing import Optional

from hpcfed.compose import load_run_config
from hpcfed.runlog import read_metrics

DEMO_VARIANTS = {
    "fedyolo_joint": [],
    "fedyolo_sequential": ["fl.algo.schedule=sequential", "eval.every_rounds=1000"],
    "full_sequential": ["config=configs/algo/fedyolo_full.yaml", "fl.algo.schedule=sequential",
                        "eval.every_rounds=1000"],
}
"""Runs of ``python -m hpcfed.fedyolo_demo``: name → config words over ``configs/algo/fedyolo.yaml``."""


def summarize_demo(histories: dict[str, list[dict]]) -> tuple[dict, str]:
    """Per run: per-task accuracy at the end (and after phase 1 for sequential runs), bytes per round and in
    total (up + down) against full-model FL. Returns (summary dict, markdown table)."""
    summary = {}
    rows = [("| run | task 0 (sentiment) acc after phase 1 | task 0 acc at end | task 1 (word order) acc at end "
             "| bytes/round up+down | total bytes | full-model FL total | ratio |"), "|---" * 8 + "|"]
    for name, hist in histories.items():
        rounds = [m for m in hist if m.get("round", 0) > 0]
        last = rounds[-1]
        up = sum(m["bytes_up"] for m in rounds)
        down = sum(m["bytes_down_modules"] for m in rounds)
        full = sum(m["bytes_full_model_fl"] for m in rounds)
        phase = next((m["phase1_test_acc_task0"] for m in rounds if "phase1_test_acc_task0" in m), None)
        s = {"rounds": len(rounds), "acc_task0_end": last.get("test_acc_task0"),
             "acc_task1_end": last.get("test_acc_task1"), "acc_task0_after_phase1": phase,
             "bytes_up": up, "bytes_down": down, "bytes_total": up + down, "bytes_full_model_fl": full,
             "ratio_full_over_run": full / max(up + down, 1), "wall_s": last.get("wall_s")}
        summary[name] = s
        pct = (lambda v: "—" if v is None else f"{100 * v:.1f}")
        rows.append(f"| {name} | {pct(phase)} | {pct(s['acc_task0_end'])} | {pct(s['acc_task1_end'])} | "
                    f"{(up + down) / len(rounds) / 1e6:.2f} MB | {(up + down) / 1e6:.1f} MB | {full / 1e9:.2f} GB | "
                    f"{s['ratio_full_over_run']:.0f}× |")
    return summary, "\n".join(rows)


def demo(argv: Optional[list[str]] = None) -> int:
    """``python -m hpcfed.fedyolo_demo [--np N] [--only NAME ...] [key=value ...]``: run the variants of
    :data:`DEMO_VARIANTS` one after the other (each ``python -m hpcfed.main``; under ``mpirun -n N`` when
    N > 1), then print the accuracy/bytes table and write ``<out_dir>/fedyolo_demo.json``.

    Extra ``key=value`` words go to every run (e.g. ``fl.rounds=4`` for a quicker look).
    """
    import argparse
    import json
    import shutil
    import subprocess
    import sys
    import time
    from pathlib import Path

    ap = argparse.ArgumentParser(prog="python -m hpcfed.fedyolo_demo", description=demo.__doc__)
    ap.add_argument("--np", type=int, default=1, help="MPI ranks per run (1: a plain process)")
    ap.add_argument("--only", nargs="*", default=None, help="subset of: " + ", ".join(DEMO_VARIANTS))
    ap.add_argument("--config", default="configs/algo/fedyolo.yaml")
    args, words = ap.parse_known_args(argv)
    base = load_run_config([f"config={args.config}", *words])
    histories = {}
    for name, extra in DEMO_VARIANTS.items():
        if args.only and name not in args.only:
            continue
        cmd = [sys.executable, "-m", "hpcfed.main", f"config={args.config}", *extra, *words, f"name={name}",
               "checkpoint.resume=none", "progress=false"]
        if args.np > 1:
            cmd = [shutil.which("mpirun") or "mpirun", "--oversubscribe", "--bind-to", "none", "-n", str(args.np),
                   *cmd, "dist.num_threads=1"]
        t0 = time.perf_counter()
        print(f"== {name}: {' '.join(cmd[cmd.index('-m') + 1:])}", flush=True)
        r = subprocess.run(cmd, check=False)
        if r.returncode != 0:
            print(f"{name} failed with exit status {r.returncode}", file=sys.stderr)
            return r.returncode
        hist = read_metrics(Path(base.out_dir) / name)
        hist[-1]["wall_s"] = time.perf_counter() - t0
        histories[name] = hist
    out = Path(base.out_dir) / "fedyolo_demo.json"
    if args.only and out.is_file():  # a partial rerun adds to / replaces entries of the previous summary
        histories = {**json.loads(out.read_text())["histories"], **histories}
    summary, table = summarize_demo(histories)
    out.write_text(json.dumps({"summary": summary, "histories": histories}, indent=1) + "\n")
    print(table)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(demo())
