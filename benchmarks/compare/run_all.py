"""Run the framework comparison one framework after another and write the results table.

Usage (from the repository root; hold the machine's CPU lock for the whole batch so nothing else runs)::

    flock /tmp/hpcfed_cpu.lock python -m benchmarks.compare.run_all --rounds 5 \
        --compare-python /work/compare-venv/bin/python --out runs/bench/compare.jsonl
    python -m benchmarks.compare.run_all --table runs/bench/compare.jsonl     # markdown table only

Each entry runs in its own process (never two at a time); every result line gets the ``uptime`` load
average read just before and after it. pfl-research and Flower run with ``--compare-python`` (the Python of
an environment with ``requirements-compare.txt`` installed); hpcfed and the plain loop with this Python.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

WORKLOADS = ("text-bitfit", "text-lora")


MPIRUN = ["mpirun", "-n", "2", "--oversubscribe"]
TORCHRUN = ["-m", "torch.distributed.run", "--nproc_per_node", "2"]


def entries(workload: str, rounds: int, group_size: int | None, eval_every: int = 0
            ) -> list[tuple[str, str, list[str]]]:
    """(label, launcher, arguments after ``python``) of one workload's rows, in run order.

    launcher: 'main' (this Python), 'compare' (the compare venv's Python), 'mpirun' (``mpirun -n 2`` of this
    Python), 'torchrun' (``torch.distributed.run --nproc_per_node 2`` of the compare Python). Rows ending in
    ``-2r``/``-2p``/``-2w`` use two processes (ranks / torchrun workers / Ray actors) of one thread each: on a
    2-core machine every framework gets the same two cores, one process per core.
    """
    r = str(rounds)
    ev = ["--eval-every", str(eval_every)] if eval_every else []
    hp = ["-m", "benchmarks.throughput", "--workload", workload, "--rounds", r, "--eval", *ev,
          "--set", "fl.local.bf16=true"]
    one_thread = ["--set", "dist.num_threads=1"]
    fw = ["--workload", workload, "--rounds", r, *ev]
    rows = [
        ("hpcfed", "main", hp),
        ("hpcfed-2r", "mpirun", hp + one_thread),
        ("plain-pytorch", "main", ["-m", "benchmarks.compare.plain_torch", *fw]),
        ("pfl-research", "compare", ["-m", "benchmarks.compare.pfl_bench", *fw]),
        ("pfl-research-2p", "torchrun", ["-m", "benchmarks.compare.pfl_bench", *fw, "--threads", "1"]),
        ("flower", "compare", ["-m", "benchmarks.compare.flower_bench", *fw]),
        ("flower-2w", "compare", ["-m", "benchmarks.compare.flower_bench", *fw, "--cpus-per-client", "1"]),
        ("hpcfed-fp32", "main", ["-m", "benchmarks.throughput", "--workload", workload, "--rounds", r, "--eval",
                                 "--no-compute-baseline", "--set", "fl.local.bf16=false"]),
    ]
    if group_size and group_size > 1:
        g = ["--set", f"fl.local.client_group_size={group_size}"]
        rows.insert(2, (f"hpcfed-2r-G{group_size}", "mpirun", hp + one_thread + g))
        rows.insert(1, (f"hpcfed-G{group_size}", "main", hp + g))
    return rows


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def command(launcher: str, args: list[str], compare_python: str) -> list[str]:
    """The argv of one entry (see :func:`entries`)."""
    if launcher == "mpirun":
        return [*MPIRUN, sys.executable, *args]
    if launcher == "torchrun":
        return [compare_python, *TORCHRUN, *args]
    return [compare_python if launcher == "compare" else sys.executable, *args]


def run_entry(label: str, argv: list[str], timeout_s: float) -> dict:
    """Run one entry; its last stdout line that parses as JSON is the result (or an error record)."""
    before = _uptime()
    t0 = time.perf_counter()
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, env=env)
        out, err, rc = p.stdout, p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        out, err, rc = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), \
            "timeout", 124
    wall = time.perf_counter() - t0
    res = None
    for line in reversed(out.strip().splitlines()):
        try:
            res = json.loads(line)
            break
        except json.JSONDecodeError:
            continue
    if res is None:
        res = {"error": f"rc={rc}: " + " | ".join(err.strip().splitlines()[-3:])}
    res.update(label=label, wall_s=wall, uptime_before=before, uptime_after=_uptime(), cmd=" ".join(argv))
    res.pop("per_round", None)
    return res


def _fmt(x, spec=".2f"):
    return "—" if x is None or (isinstance(x, float) and x != x) else format(x, spec)


FAMILIES = ("hpcfed", "plain-pytorch", "pfl-research", "flower")


def family(label: str) -> str:
    """The framework a row label belongs to ('hpcfed-2r-G8' → 'hpcfed')."""
    return next((f for f in FAMILIES if label == f or label.startswith(f + "-")), label)


def _best(rows: list[dict], fam: str, *, exclude: tuple[str, ...] = ()) -> dict | None:
    """The fastest row (client updates/s) of framework ``fam``."""
    cand = [r for r in rows if family(r["label"]) == fam and r["label"] not in exclude]
    return max(cand, key=lambda r: r["client_updates_per_s"]) if cand else None


def _acc(r: dict) -> str:
    return f"{_fmt(100 * r['final_acc'] if r.get('final_acc') is not None else None, '.2f')}%"


def table(results: list[dict]) -> str:
    """Markdown table per workload: s/round, client updates/s, the fastest hpcfed row's ratio over each row,
    accuracy; then the accuracy curves of the rows that recorded one."""
    lines = []
    for wl in WORKLOADS:
        rows = [r for r in results if r.get("workload") == wl and "error" not in r]
        if not rows:
            continue
        ref = _best(rows, "hpcfed", exclude=("hpcfed-fp32",))
        lines += [f"**{wl}**", "",
                  "| framework | processes × threads | s/round (median r2..R) | client updates/s | "
                  f"{ref['label'] if ref else 'hpcfed'} × faster | dev acc after R | start-up s "
                  "| load avg (1 min, before→after) |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            ratio = ref["client_updates_per_s"] / r["client_updates_per_s"] if ref else None
            la = [u.split("load average:")[-1].split(",")[0].strip() for u in (r["uptime_before"], r["uptime_after"])]
            startup = r.get("startup_s", r.get("build_s"))
            procs = r.get("processes", r.get("world_size", 1))
            lines.append(f"| {r['label']} | {procs} × {r.get('threads', '?')} | {_fmt(r['round_s'])} | "
                         f"{_fmt(r['client_updates_per_s'], '.3f')} | {_fmt(ratio)} | {_acc(r)} "
                         f"| {_fmt(startup, '.1f')} | {la[0]}→{la[1]} |")
        lines.append("")
        curves = [r for r in rows if r.get("acc_curve")]
        if curves:
            rounds = sorted({c[0] for r in curves for c in r["acc_curve"]})
            lines += [f"{wl}: SST-2 dev accuracy (%) after round", "",
                      "| framework | " + " | ".join(str(x) for x in rounds) + " |",
                      "|---|" + "---|" * len(rounds)]
            for r in curves:
                got = {c[0]: c[1] for c in r["acc_curve"]}
                lines.append(f"| {r['label']} | " + " | ".join(
                    _fmt(100 * got[x] if x in got else None, '.2f') for x in rounds) + " |")
            lines.append("")
    errs = [r for r in results if "error" in r]
    for r in errs:
        lines.append(f"- {r['label']} ({r.get('cmd', '')}): {r['error']}")
    return "\n".join(lines) + "\n"


def targets(results: list[dict]) -> str:
    """Markdown list: each target of the issue met/missed with the measured numbers: the fastest hpcfed row
    against the fastest row of every other framework (each framework's best setup)."""
    out = []
    for wl in WORKLOADS:
        rows = [r for r in results if r.get("workload") == wl and "error" not in r]
        best = _best(rows, "hpcfed", exclude=("hpcfed-fp32",))
        if best is None:
            continue
        hp = [r for r in rows if family(r["label"]) == "hpcfed" and r["label"] != "hpcfed-fp32"]
        for other in ("pfl-research", "flower", "plain-pytorch"):
            o = _best(rows, other)
            if o is not None:
                ratio = best["client_updates_per_s"] / o["client_updates_per_s"]
                # accuracy: against hpcfed's fastest row run for as many rounds as this one
                acc_ref = _best([r for r in hp if r["rounds"] == o["rounds"]], "hpcfed") or best
                dacc = 100 * (acc_ref.get("final_acc", float("nan")) - o.get("final_acc", float("nan")))
                need = other != "plain-pytorch"
                verdict = ("**met**" if ratio >= 3 else "**missed**") if need else "(reference)"
                curve = ""
                a_, b_ = (dict(map(tuple, r.get("acc_curve") or [])) for r in (acc_ref, o))
                common_r = sorted(set(a_) & set(b_))
                if common_r:
                    diffs = [100 * (a_[x] - b_[x]) for x in common_r]
                    curve = (f"; mean difference over rounds {', '.join(str(x) for x in common_r)}: "
                             f"{sum(diffs) / len(diffs):+.2f} points (max |·| {max(abs(d) for d in diffs):.2f})")
                out.append(f"- {wl}: client updates/s {best['label']} / {o['label']} = {ratio:.2f}× {verdict} "
                           f"(target ≥ 3×); accuracy difference ({acc_ref['label']} − {o['label']}) {dacc:+.2f} "
                           f"points after {o['rounds']} rounds" + curve)
        for r in hp:
            if "mfu_bf16" in r:
                out.append(f"- {wl} {r['label']}: MFU on useful tokens {100 * r['mfu_bf16']:.1f}% of the measured "
                           f"bf16 matmul peak ({r['peak_bf16_flops'] / 1e9:.0f} GFLOP/s) "
                           f"{'**met**' if r['mfu_bf16'] >= 0.25 else '**missed**'} (target ≥ 25%); "
                           f"{100 * r['mfu_fp32']:.1f}% of the fp32 peak")
            if "overhead_frac" in r:
                out.append(f"- {wl} {r['label']}: framework overhead {r['overhead_s']:.2f} s = "
                           f"{100 * r['overhead_frac']:.1f}% of the round "
                           f"{'**met**' if r['overhead_frac'] <= 0.05 else '**missed**'} (target ≤ 5%)")
    return "\n".join(out) + "\n"


def details(results: list[dict]) -> str:
    """Markdown table of hpcfed's throughput metrics."""
    lines = ["| workload | row | s/round | updates/s | samples/s | real tok/s | computed tok/s (padding) | "
             "useful TFLOP/s | MFU bf16 / fp32 | compute s | overhead | peak mem MiB | dev acc |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r.get("framework") != "hpcfed" or "error" in r:
            continue
        mf = (f"{100 * r['mfu_bf16']:.1f}% / {100 * r['mfu_fp32']:.1f}%" if "mfu_bf16" in r else "—")
        ov = (f"{r['overhead_s']:.2f} s ({100 * r['overhead_frac']:.1f}%)" if "overhead_s" in r else "—")
        lines.append(
            f"| {r['workload']} | {r['label']} | {r['round_s']:.2f} | {r['client_updates_per_s']:.3f} | "
            f"{r['samples_per_s']:.0f} | {_fmt(r.get('tokens_per_s'), '.0f')} | "
            f"{_fmt(r.get('padded_tokens_per_s'), '.0f')} ({_fmt(100 * r.get('padding_frac', float('nan')), '.0f')}%) | "
            f"{r['useful_tflops_per_s']:.3f} | {mf} | {_fmt(r.get('compute_s'))} | {ov} | {r['peak_mem_mb']:.0f} | "
            f"{_fmt(100 * r['final_acc'] if r.get('final_acc') is not None else None)}% |")
    return "\n".join(lines) + "\n"


def fill_docs(doc: Path, results: list[dict], scaling_md: str = "", projection_md: str = "") -> None:
    """Replace the RESULTS_TABLE / TARGETS / SCALING / PROJECTION placeholders of ``doc`` (those present)."""
    text = doc.read_text()
    reps = {"RESULTS_TABLE": table(results) + "\nhpcfed's own metrics:\n\n" + details(results),
            "TARGETS": targets(results), "SCALING": scaling_md, "PROJECTION": projection_md}
    for k, v in reps.items():
        if v and f"\n{k}\n" in text:
            text = text.replace(f"\n{k}\n", "\n" + v.rstrip() + "\n")
    if results:  # the note saying the numbers are not in yet
        text = "\n".join(ln for ln in text.split("\n") if not ln.startswith("> **Pending:**"))
    doc.write_text(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    p.add_argument("--only", nargs="*", help="labels to run (default: all)")
    p.add_argument("--compare-python", default=os.environ.get("HPCFED_COMPARE_PYTHON", "/work/compare-venv/bin/python"))
    p.add_argument("--group-size", type=int, default=None,
                   help="also run hpcfed with fl.local.client_group_size=G (needs the client-parallel path)")
    p.add_argument("--eval-every", type=int, default=0, metavar="K",
                   help="every row also records its test accuracy after every K-th round (acc_curve)")
    p.add_argument("--out", default="runs/bench/compare.jsonl")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per entry")
    p.add_argument("--table", metavar="JSONL", help="only print the markdown table of this results file")
    p.add_argument("--docs", metavar="MD", help="with --table: fill the placeholders of this markdown file")
    p.add_argument("--scaling-md", metavar="FILE", help="with --docs: markdown for the SCALING placeholder")
    p.add_argument("--projection-md", metavar="FILE", help="with --docs: markdown for the PROJECTION placeholder")
    a = p.parse_args(argv)
    if a.table:
        rows = [json.loads(x) for x in Path(a.table).read_text().splitlines() if x.strip()]
        print(table(rows))
        print(targets(rows))
        if a.docs:
            rd = lambda f: Path(f).read_text() if f and Path(f).exists() else ""  # noqa: E731
            fill_docs(Path(a.docs), rows, rd(a.scaling_md), rd(a.projection_md))
        return 0
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    done = []
    for wl in a.workloads:
        for label, launcher, args in entries(wl, a.rounds, a.group_size, a.eval_every):
            if a.only and label not in a.only:
                continue
            argv = command(launcher, args, a.compare_python)
            print(f"[run_all] {wl} {label}: {' '.join(argv)}", file=sys.stderr, flush=True)
            res = run_entry(label, argv, a.timeout)
            res.setdefault("workload", wl)
            done.append(res)
            with open(a.out, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(res) + "\n")
            print(f"[run_all]   -> {res.get('round_s', res.get('error'))} s/round, acc {res.get('final_acc')}",
                  file=sys.stderr, flush=True)
    print(table(done))
    return 0


if __name__ == "__main__":
    sys.exit(main())
