"""Run the framework comparison one framework after another and write the raw rows and the summary table.

Usage (from the repository root)::

    python -m benchmarks.compare.run_all --block both --rounds 6 \
        --compare-python /work/compare-venv/bin/python --out runs/bench/compare3.jsonl   # + compare3.md
    python -m benchmarks.compare.run_all --table runs/bench/compare3.jsonl [--md out.md]  # tables only
    python -m benchmarks.compare.run_all --block b --dry-run                               # the commands

Two blocks (``--block a|b|both``), every framework on the same workload (hpcfed's shards, cohorts and
client seeds; every framework runs exactly ``fl.local.steps`` local steps per client, on the same batches):

* **a, out of the box**: each framework as it comes: its default precision (fp32 everywhere; hpcfed's
  ``fl.local.bf16`` is off by default) and its default process layout (one process, torch's default threads);
* **b, equal precision**: bf16 autocast in local training for every framework (hpcfed ``fl.local.bf16=true``,
  pfl's ``amp_dtype``, one ``torch.autocast`` in the plain loop and Flower's ClientApp), each framework in both
  process layouts of this node: one process × all cores' threads (``1xT``) and one process per core × one
  thread (``Tx1``: ``mpirun --bind-to none`` ranks, torchrun workers, Ray actors; the plain loop has no
  multi-process mode). The summary marks each framework's faster layout.

Each entry runs in its own process, never two at a time, each under an exclusive ``flock`` of ``--lock`` (the
machine's CPU lock, ``/tmp/hpcfed_cpu.lock``; a lock this process inherited from a ``flock LOCK ...`` caller
is used as it is). Every raw row gets the load average just before and after it, the block, layout and
precision, the local steps each round ran, and the hardware / versions record of the process that measured it
(:func:`benchmarks.throughput.hardware_record`). pfl-research and Flower run with ``--compare-python`` (an
environment with ``requirements-compare.txt``); hpcfed and the plain loop with this Python.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

WORKLOADS = ("text-bitfit", "text-lora")
BLOCKS = ("a", "b")
FAMILIES = ("hpcfed", "plain-pytorch", "pfl-research", "flower")
CPU_LOCK = "/tmp/hpcfed_cpu.lock"
BF16, FP32 = "bf16-autocast", "fp32"
GEMM_FRACTION_TARGET = 0.5
"""Issue #16: useful-token FLOP/s ≥ 50 % of the bf16 GEMM rate measured in the same run (issue #7 asked 25 %)."""


@dataclass(frozen=True)
class Entry:
    """One row to run: ``launcher`` is 'main' (this Python), 'compare' (the compare venv's Python), 'mpirun'
    (``processes`` ranks of this Python) or 'torchrun' (``processes`` workers of the compare Python)."""

    label: str
    framework: str
    block: str
    layout: str
    """Planned processes x torch threads per process, e.g. ``2x1``."""
    precision: str
    launcher: str
    processes: int
    args: tuple[str, ...]


def entries(workload: str, rounds: int, *, block: str = "both", cores: int | None = None,
            group_size: int | None = None, eval_every: int = 0, overrides: tuple[str, ...] = ()) -> list[Entry]:
    """The entries of one workload, in run order (block a first).

    Args:
        workload: a text workload of :data:`WORKLOADS`.
        rounds: rounds per entry, round 1 the warm-up.
        block: 'a', 'b' or 'both' (see the module docstring).
        cores: cores of this node (default ``os.cpu_count()``): block b's layouts are ``1xcores`` and
            ``coresx1`` (one layout when they coincide).
        group_size: also hpcfed with ``fl.local.client_group_size=G`` in block b (both layouts).
        eval_every: every entry also records the test accuracy after every K-th round.
        overrides: hpcfed config words given to every entry (``--set``; smoke tests: a smaller model or
            cohort; the comparison itself runs the workload unchanged).

    Raises:
        ValueError: an unknown ``block`` or ``workload``, or ``rounds < 2``.
    """
    if block not in (*BLOCKS, "both"):
        raise ValueError(f"block {block!r}: expected one of a, b, both")
    if workload not in WORKLOADS:
        raise ValueError(f"workload {workload!r}: the comparison implements {', '.join(WORKLOADS)}")
    if rounds < 2:
        raise ValueError(f"rounds={rounds}: need >= 2 (round 1 is the warm-up)")
    t = cores or os.cpu_count() or 1
    r = str(rounds)
    ev = ["--eval-every", str(eval_every)] if eval_every else []
    ev += [x for w in overrides for x in ("--set", w)]
    hp = ["-m", "benchmarks.throughput", "--workload", workload, "--rounds", r, "--eval", *ev]
    fw = ["--workload", workload, "--rounds", r, *ev]
    plain = ["-m", "benchmarks.compare.plain_torch", *fw]
    pfl = ["-m", "benchmarks.compare.pfl_bench", *fw]
    flower = ["-m", "benchmarks.compare.flower_bench", *fw]
    out: list[Entry] = []

    def add(fam, blk, procs, threads, launcher, args, precision):
        layout = f"{procs}x{threads}"
        out.append(Entry(f"{fam}-{blk}-{layout}", fam, blk, layout, precision, launcher, procs, tuple(args)))

    if block in ("a", "both"):  # each framework's defaults: fp32, one process, default threads
        add("hpcfed", "a", 1, t, "main", hp, FP32)
        add("plain-pytorch", "a", 1, t, "main", plain, FP32)
        add("pfl-research", "a", 1, t, "compare", pfl, FP32)
        add("flower", "a", 1, t, "compare", flower, FP32)
    if block in ("b", "both"):
        layouts = [(1, t)] + ([(t, 1)] if t > 1 else [])
        g = ["--set", f"fl.local.client_group_size={group_size}"] if group_size and group_size > 1 else []
        for procs, threads in layouts:
            words = hp + ["--set", "fl.local.bf16=true", "--set", f"dist.num_threads={threads}"]
            add("hpcfed", "b", procs, threads, "main" if procs == 1 else "mpirun", words, BF16)
            if g:
                out.append(Entry(f"hpcfed-G{group_size}-b-{procs}x{threads}", "hpcfed", "b", f"{procs}x{threads}",
                                 BF16, "main" if procs == 1 else "mpirun", procs, tuple(words + g)))
        add("plain-pytorch", "b", 1, t, "main", plain + ["--bf16", "--threads", str(t)], BF16)
        for procs, threads in layouts:
            add("pfl-research", "b", procs, threads, "compare" if procs == 1 else "torchrun",
                pfl + ["--bf16", "--threads", str(threads)], BF16)
        for procs, threads in layouts:
            add("flower", "b", procs, threads, "compare", flower + ["--bf16", "--cpus-per-client", str(threads)], BF16)
    return out


def command(entry: Entry, compare_python: str) -> list[str]:
    """The argv of ``entry``: mpirun rows through :func:`benchmarks.scaling.mpirun_cmd` (``--oversubscribe
    --bind-to none``, ``--allow-run-as-root`` when root), torchrun rows as ``torch.distributed.run
    --nproc_per_node P`` of the compare Python.

    Raises:
        ValueError: an unknown launcher.
    """
    if entry.launcher == "mpirun":
        from benchmarks.scaling import mpirun_cmd

        return mpirun_cmd(entry.processes, *entry.args)
    if entry.launcher == "torchrun":
        return [compare_python, "-m", "torch.distributed.run", "--nproc_per_node", str(entry.processes),
                *entry.args]
    if entry.launcher in ("main", "compare"):
        return [compare_python if entry.launcher == "compare" else sys.executable, *entry.args]
    raise ValueError(f"launcher {entry.launcher!r}")


def _inherited_lock_fd(path: str) -> int | None:
    """A descriptor this process inherited on ``path`` (a ``flock path cmd`` caller's), else None."""
    want = os.path.realpath(path)
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return None
    for name in fds:
        try:
            if os.path.realpath(os.readlink(f"/proc/self/fd/{name}")) == want:
                return int(name)
        except OSError:
            continue
    return None


@contextlib.contextmanager
def cpu_lock(path: str | None):
    """Hold an exclusive ``flock`` on ``path`` (created if absent) for the block; yields the seconds waited.

    A descriptor on ``path`` inherited from the caller (``flock path python -m ...``) is locked instead of a
    new one (the same open file description: no self-deadlock) and never unlocked here (the caller's lock).
    ``path`` None or empty: no lock.

    Raises:
        OSError: ``path`` cannot be opened.
    """
    if not path:
        yield 0.0
        return
    t0 = time.perf_counter()
    fd = _inherited_lock_fd(path)
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield time.perf_counter() - t0
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield time.perf_counter() - t0
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def run_entry(entry: Entry, argv: list[str], timeout_s: float, lock: str | None = CPU_LOCK) -> dict:
    """Run one entry under ``lock``; its last stdout line that parses as JSON is the result (else an error
    row). The row gets the entry's label, framework, block, planned layout and precision, the load average
    before and after, the wall time and the command; an error row gets this process's hardware record."""
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    with cpu_lock(lock) as waited:
        before = _uptime()
        t0 = time.perf_counter()
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, env=env)
            out, err, rc = p.stdout, p.stderr, p.returncode
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            err, rc = "timeout", 124
        wall = time.perf_counter() - t0
        after = _uptime()
    res = None
    for line in reversed(out.strip().splitlines()):
        try:
            res = json.loads(line)
            break
        except json.JSONDecodeError:
            continue
    if not isinstance(res, dict):
        from benchmarks.throughput import hardware_record

        res = {"error": f"rc={rc}: " + " | ".join(err.strip().splitlines()[-3:]), "hardware": hardware_record()}
    if "framework" in res:
        res["framework_label"] = res["framework"]
    res.update(label=entry.label, framework=entry.framework, block=entry.block,
               planned_layout=entry.layout, planned_precision=entry.precision, wall_s=wall,
               uptime_before=before, uptime_after=after, cmd=" ".join(argv), cpu_lock=lock or None,
               lock_wait_s=waited)
    res.setdefault("layout", entry.layout)
    res.setdefault("precision", entry.precision)
    res.pop("per_round", None)
    return res


# ------------------------------------------------------------------------------------------------- reading rows


def _fmt(x, spec=".2f"):
    return "—" if x is None or (isinstance(x, float) and x != x) else format(x, spec)


def family(label: str) -> str:
    """The framework a row label belongs to ('hpcfed-2r-G8' → 'hpcfed', 'pfl-research-b-2x1' →
    'pfl-research')."""
    return next((f for f in FAMILIES if label == f or label.startswith(f + "-")), label)


def _fam(r: dict) -> str:
    return r["framework"] if r.get("framework") in FAMILIES else family(r["label"])


def gemm_fraction(r: dict, dtype: str) -> float | None:
    """A row's useful FLOP/s as a fraction of the GEMM rate measured in its run (``gemm_fraction_<dtype>``;
    rows written before the rename call it ``mfu_<dtype>``), None if absent."""
    return r.get(f"gemm_fraction_{dtype}", r.get(f"mfu_{dtype}"))


def gemm_peak(r: dict, dtype: str) -> float | None:
    """The measured GEMM rate of a row in FLOP/s (``gemm_peak_<dtype>_flops``, formerly ``peak_<dtype>_flops``)."""
    return r.get(f"gemm_peak_{dtype}_flops", r.get(f"peak_{dtype}_flops"))


def _best(rows: list[dict], fam: str, *, exclude: tuple[str, ...] = ()) -> dict | None:
    """The fastest row (client updates/s) of framework ``fam``."""
    cand = [r for r in rows if _fam(r) == fam and r["label"] not in exclude]
    return max(cand, key=lambda r: r["client_updates_per_s"]) if cand else None


def _acc(r: dict) -> str:
    return f"{_fmt(100 * r['final_acc'] if r.get('final_acc') is not None else None, '.2f')}%"


def _steps(r: dict) -> str:
    xs = r.get("local_steps_per_round")
    if not xs:
        return "—"
    return str(xs[0]) if min(xs) == max(xs) else f"{min(xs)}–{max(xs)}"


def _round_spread(r: dict) -> str:
    lo, hi = r.get("round_s_min"), r.get("round_s_max")
    if lo is None and r.get("round_s_all"):
        timed = r["round_s_all"][1:] or r["round_s_all"]
        lo, hi = min(timed), max(timed)
    return f"{_fmt(r['round_s'])} ({_fmt(lo)}–{_fmt(hi)})"


def _setup_name(r: dict) -> str:
    """A row's setup without block and layout ('pfl-research-b-2x1' → 'pfl-research', 'hpcfed-G8-b-1x2' →
    'hpcfed-G8')."""
    blk = r.get("block")
    return r["label"].split(f"-{blk}-")[0] if blk and f"-{blk}-" in r["label"] else _fam(r)


def summary_table(results: list[dict]) -> str:
    """Markdown summary of the rows that carry a block, per workload: framework, block, layout (each
    framework's faster layout in a block marked), precision, s/round median (min–max) over rounds 2..R,
    real tokens/s, accuracy after the rounds, local steps per round (summed over the clients), and how many
    times faster the block's fastest hpcfed row is (this row's s/round / hpcfed's). Notes below each table
    say where the rows differ in rounds or in local steps; a hardware line ends it."""
    lines = []
    rows_all = [r for r in results if r.get("block") in BLOCKS]
    for wl in WORKLOADS:
        rows = [r for r in rows_all if r.get("workload") == wl and "error" not in r]
        if not rows:
            continue
        rounds = sorted({r.get("rounds") for r in rows})
        lines += [f"**{wl}** — s/round: median of rounds 2..R (min–max); tokens/s: real tokens per second; "
                  f"accuracy: SST-2 dev after round R = {', '.join(map(str, rounds))}", "",
                  "| framework | block | layout | precision | s/round median (min–max) | tokens/s | "
                  "accuracy after the rounds | local steps per round | hpcfed faster by |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for blk in BLOCKS:
            brows = [r for r in rows if r["block"] == blk]
            hp = [r for r in brows if _fam(r) == "hpcfed"]
            ref = min(hp, key=lambda r: r["round_s"]) if hp else None
            name = _setup_name
            faster = {}
            for r in brows:
                if name(r) not in faster or r["round_s"] < faster[name(r)]["round_s"]:
                    faster[name(r)] = r
            order = {f: i for i, f in enumerate(FAMILIES)}
            for r in sorted(brows, key=lambda r: (order.get(_fam(r), 9), r["label"])):
                several = sum(1 for x in brows if name(x) == name(r)) > 1
                mark = " (faster)" if several and faster[name(r)] is r else ""
                ratio = r["round_s"] / ref["round_s"] if ref else None
                lines.append(f"| {name(r)} | {blk} | {r.get('layout', '?')}{mark} | {r.get('precision', '?')} | "
                             f"{_round_spread(r)} | {_fmt(r.get('tokens_per_s'), '.0f')} | {_acc(r)} | "
                             f"{_steps(r)} | {_fmt(ratio)}× |")
        lines.append("")
        for blk in BLOCKS:
            steps = {r["label"]: _steps(r) for r in rows if r["block"] == blk}
            if len(set(steps.values())) > 1:
                lines.append(f"- {wl} block {blk}: the rows ran different local steps per round: "
                             + ", ".join(f"{k} {v}" for k, v in steps.items()))
        if len(rounds) > 1:
            lines.append(f"- {wl}: the rows ran different numbers of rounds ({rounds}): accuracies not comparable")
    errs = [r for r in rows_all if "error" in r]
    for r in errs:
        lines.append(f"- {r['label']} ({r.get('cmd', '')}): {r['error']}")
    hw = hardware_summary(rows_all)
    if hw:
        lines += ["", hw]
    return "\n".join(lines) + "\n"


def hardware_summary(results: list[dict]) -> str:
    """One markdown line per distinct CPU of ``results``' hardware records (model, flags, cores, nominal peak),
    then the library versions seen (a package with several versions lists them all)."""
    recs = [r["hardware"] for r in results if isinstance(r.get("hardware"), dict)]
    if not recs:
        return ""
    out, seen = [], set()
    for h in recs:
        flags = h.get("cpu_flags") or {}
        key = (h.get("cpu_model"), tuple(sorted(flags.items())), h.get("cores_physical"))
        if key in seen:
            continue
        seen.add(key)
        nom = h.get("nominal_peak") or {}
        peak = (f"nominal peak of {nom.get('cores')} core(s): {nom['bf16_flops'] / 1e9:.0f} GFLOP/s bf16, "
                f"{nom['fp32_flops'] / 1e9:.0f} fp32 ({nom.get('isa_bf16')}; {nom.get('isa_fp32')}; "
                f"{nom.get('clock_ghz'):.3g} GHz from {nom.get('clock_source')})" if nom.get("bf16_flops")
                else f"nominal peak not derived ({nom.get('reason', 'no record')})")
        out.append(f"Hardware: {h.get('cpu_model')}; flags "
                   + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in flags.items())
                   + f"; {h.get('cores_physical')} physical cores; torch CPU capability "
                   f"{h.get('torch_cpu_capability')}; {peak}.")
    versions: dict[str, set] = {}
    for h in recs:
        for k, v in (h.get("versions") or {}).items():
            if v is not None:
                versions.setdefault(k, set()).add(v)
    if versions:
        out.append("Versions: " + ", ".join(f"{k} {' / '.join(sorted(v))}" for k, v in sorted(versions.items()))
                   + ".")
    return "\n".join(out)


def table(results: list[dict]) -> str:
    """Markdown table per workload of rows without a block (the batches before the a/b blocks): s/round,
    client updates/s, the fastest hpcfed row's ratio over each row, accuracy; then the accuracy curves."""
    lines = []
    for wl in WORKLOADS:
        rows = [r for r in results if r.get("workload") == wl and "error" not in r and r.get("block") is None]
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
    lines += curves(results)
    errs = [r for r in results if "error" in r and r.get("block") is None]
    for r in errs:
        lines.append(f"- {r['label']} ({r.get('cmd', '')}): {r['error']}")
    return "\n".join(lines) + "\n"


def curves(results: list[dict]) -> list[str]:
    """Markdown lines: per workload (and block), the accuracy after every recorded round of the rows that
    recorded a curve."""
    lines = []
    for wl in WORKLOADS:
        for blk in (None, *BLOCKS):
            rows = [r for r in results if r.get("workload") == wl and r.get("block") == blk and r.get("acc_curve")
                    and "error" not in r]
            if not rows:
                continue
            rounds = sorted({c[0] for r in rows for c in r["acc_curve"]})
            lines += [f"{wl}{f' block {blk}' if blk else ''}: SST-2 dev accuracy (%) after round", "",
                      "| framework | " + " | ".join(str(x) for x in rounds) + " |",
                      "|---|" + "---|" * len(rounds)]
            for r in rows:
                got = {c[0]: c[1] for c in r["acc_curve"]}
                lines.append(f"| {r['label']} | " + " | ".join(
                    _fmt(100 * got[x] if x in got else None, '.2f') for x in rounds) + " |")
            lines.append("")
    return lines


def _gemm_line(wl: str, r: dict) -> str:
    f16, f32 = gemm_fraction(r, "bf16"), gemm_fraction(r, "fp32")
    verdict = "**met**" if f16 >= GEMM_FRACTION_TARGET else "**missed**"
    line = (f"- {wl} {r['label']}: useful-token FLOP/s = {100 * f16:.1f}% of the bf16 GEMM rate measured in the "
            f"same run ({gemm_peak(r, 'bf16') / 1e9:.0f} GFLOP/s) {verdict} "
            f"(target ≥ {100 * GEMM_FRACTION_TARGET:.0f}%, issue #16); {100 * f32:.1f}% of the measured fp32 GEMM rate")
    nominal = (r.get("hardware") or {}).get("nominal_peak") or {}
    if r.get("nominal_fraction_bf16") is not None:
        line += (f"; {100 * r['nominal_fraction_bf16']:.1f}% of the nominal bf16 peak "
                 f"({nominal.get('isa_bf16')}, {nominal.get('clock_ghz'):.3g} GHz from {nominal.get('clock_source')})")
    elif nominal.get("reason"):
        line += f"; nominal peak not derived ({nominal['reason']})"
    return line


def _overhead_line(wl: str, r: dict) -> str | None:
    if "overhead_inround_frac" in r:
        f = r["overhead_inround_frac"]
        return (f"- {wl} {r['label']}: framework overhead (round − the clients' compute timed inside it) "
                f"{r['overhead_inround_s']:.2f} s = {100 * f:.1f}% of the round (over the timed rounds "
                f"{100 * r['overhead_inround_frac_min']:.1f}..{100 * r['overhead_inround_frac_max']:.1f}%) "
                f"{'**met**' if f <= 0.05 else '**missed**'} (target ≤ 5%)")
    if "overhead_frac" in r:
        return (f"- {wl} {r['label']}: framework overhead (round − a bare loop timed after it) {r['overhead_s']:.2f} s = "
                f"{100 * r['overhead_frac']:.1f}% of the round "
                f"{'**met**' if r['overhead_frac'] <= 0.05 else '**missed**'} (target ≤ 5%)")
    return None


def targets(results: list[dict]) -> str:
    """Markdown list: each target of the issue met/missed with the measured numbers, per workload and block:
    the fastest hpcfed row against the fastest row of every other framework (each framework's best setup),
    accuracy differences, hpcfed's fraction of the measured GEMM rate and its overhead."""
    out = []
    for wl in WORKLOADS:
        for blk in (None, *BLOCKS):
            rows = [r for r in results if r.get("workload") == wl and "error" not in r and r.get("block") == blk]
            where = f"{wl}{f' block {blk}' if blk else ''}"
            best = _best(rows, "hpcfed", exclude=("hpcfed-fp32",))
            if best is None:
                continue
            hp = [r for r in rows if _fam(r) == "hpcfed" and r["label"] != "hpcfed-fp32"]
            for other in ("pfl-research", "flower", "plain-pytorch"):
                o = _best(rows, other)
                if o is None:
                    continue
                ratio = best["client_updates_per_s"] / o["client_updates_per_s"]
                # accuracy: against hpcfed's fastest row run for as many rounds as this one
                acc_ref = _best([r for r in hp if r["rounds"] == o["rounds"]], "hpcfed") or best
                dacc = 100 * ((acc_ref.get("final_acc") or float("nan")) - (o.get("final_acc") or float("nan")))
                need = other != "plain-pytorch"
                verdict = ("**met**" if ratio >= 3 else "**missed**") if need else "(reference)"
                curve = ""
                a_, b_ = (dict(map(tuple, r.get("acc_curve") or [])) for r in (acc_ref, o))
                common_r = sorted(set(a_) & set(b_))
                if common_r:
                    diffs = [100 * (a_[x] - b_[x]) for x in common_r]
                    curve = (f"; mean difference over rounds {', '.join(str(x) for x in common_r)}: "
                             f"{sum(diffs) / len(diffs):+.2f} points (max |·| {max(abs(d) for d in diffs):.2f})")
                out.append(f"- {where}: client updates/s {best['label']} / {o['label']} = {ratio:.2f}× {verdict} "
                           f"(target ≥ 3×); accuracy difference ({acc_ref['label']} − {o['label']}) {dacc:+.2f} "
                           f"points after {o['rounds']} rounds" + curve)
            for r in hp:
                if gemm_fraction(r, "bf16") is not None and gemm_peak(r, "bf16"):
                    out.append(_gemm_line(where, r))
                line = _overhead_line(where, r)
                if line:
                    out.append(line)
    return "\n".join(out) + "\n"


def details(results: list[dict]) -> str:
    """Markdown table of hpcfed's throughput metrics (rows of either format)."""
    lines = ["| workload | row | block | s/round | updates/s | samples/s | real tok/s | computed tok/s (padding) | "
             "useful TFLOP/s | measured-GEMM fraction bf16 / fp32 | nominal-peak fraction bf16 / fp32 | "
             "client compute s (in round) | overhead in round (min..max) | vs bare loop | peak mem MiB | dev acc |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if _fam(r) != "hpcfed" or "error" in r or "samples_per_s" not in r:
            continue
        g16, g32 = gemm_fraction(r, "bf16"), gemm_fraction(r, "fp32")
        gf = f"{100 * g16:.1f}% / {100 * g32:.1f}%" if g16 is not None else "—"
        n16, n32 = r.get("nominal_fraction_bf16"), r.get("nominal_fraction_fp32")
        nf = f"{100 * n16:.1f}% / {100 * n32:.1f}%" if n16 is not None else "—"
        oi = (f"{r['overhead_inround_s']:.2f} s ({100 * r['overhead_inround_frac']:.1f}%, "
              f"{100 * r['overhead_inround_frac_min']:.1f}..{100 * r['overhead_inround_frac_max']:.1f}%)"
              if "overhead_inround_s" in r else "—")
        ov = f"{r['overhead_s']:.2f} s ({100 * r['overhead_frac']:.1f}%)" if "overhead_s" in r else "—"
        lines.append(
            f"| {r['workload']} | {r['label']} | {r.get('block') or '—'} | {r['round_s']:.2f} | "
            f"{r['client_updates_per_s']:.3f} | {r['samples_per_s']:.0f} | {_fmt(r.get('tokens_per_s'), '.0f')} | "
            f"{_fmt(r.get('padded_tokens_per_s'), '.0f')} ({_fmt(100 * r.get('padding_frac', float('nan')), '.0f')}%) | "
            f"{r['useful_tflops_per_s']:.3f} | {gf} | {nf} | {_fmt(r.get('client_compute_s'))} | {oi} | {ov} | "
            f"{r['peak_mem_mb']:.0f} | {_fmt(100 * r['final_acc'] if r.get('final_acc') is not None else None)}% |")
    return "\n".join(lines) + "\n"


def report_md(results: list[dict]) -> str:
    """The whole markdown report of a results file: the a/b summary (or the earlier table), the accuracy
    curves of the a/b rows, the targets and hpcfed's own metrics."""
    parts = []
    if any(r.get("block") in BLOCKS for r in results):
        parts.append(summary_table(results))
        parts.append("\n".join(curves([r for r in results if r.get("block") in BLOCKS])))
    if any(r.get("block") is None for r in results):
        parts.append(table(results))
    parts += ["### Targets\n", targets(results), "### hpcfed's own metrics\n", details(results)]
    return "\n".join(p for p in parts if p.strip()) + "\n"


def fill_docs(doc: Path, results: list[dict], scaling_md: str = "", projection_md: str = "") -> None:
    """Replace the RESULTS_TABLE / TARGETS / SCALING / PROJECTION placeholders of ``doc`` (those present)."""
    text = doc.read_text()
    first = summary_table(results) if any(r.get("block") in BLOCKS for r in results) else table(results)
    reps = {"RESULTS_TABLE": first + "\nhpcfed's own metrics:\n\n" + details(results),
            "TARGETS": targets(results), "SCALING": scaling_md, "PROJECTION": projection_md}
    for k, v in reps.items():
        if v and f"\n{k}\n" in text:
            text = text.replace(f"\n{k}\n", "\n" + v.rstrip() + "\n")
    if results:  # the note saying the numbers are not in yet
        text = "\n".join(ln for ln in text.split("\n") if not ln.startswith("> **Pending:**"))
    doc.write_text(text)


def read_rows(path: str | Path) -> list[dict]:
    """The JSON rows of a results file (one object per non-empty line)."""
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--block", choices=["a", "b", "both"], default="both",
                   help="a: each framework's defaults; b: bf16 autocast everywhere, both process layouts")
    p.add_argument("--rounds", type=int, default=6, help="rounds per entry incl. the warm-up round 1 (≥ 6)")
    p.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    p.add_argument("--only", nargs="*", help="labels or frameworks to run (default: all)")
    p.add_argument("--compare-python", default=os.environ.get("HPCFED_COMPARE_PYTHON", "/work/compare-venv/bin/python"))
    p.add_argument("--group-size", type=int, default=None,
                   help="block b also runs hpcfed with fl.local.client_group_size=G")
    p.add_argument("--eval-every", type=int, default=0, metavar="K",
                   help="every row also records its test accuracy after every K-th round (acc_curve)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="hpcfed config word for every entry (smoke tests only: the comparison runs the workload)")
    p.add_argument("--out", default="runs/bench/compare3.jsonl", help="raw rows, appended")
    p.add_argument("--md", help="markdown summary of the whole --out file (default: --out with .md)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per entry")
    p.add_argument("--lock", default=CPU_LOCK, help="flock file held around each entry ('' = none)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--table", metavar="JSONL", help="only write the markdown of this results file")
    p.add_argument("--docs", metavar="MD", help="with --table: fill the placeholders of this markdown file")
    p.add_argument("--scaling-md", metavar="FILE", help="with --docs: markdown for the SCALING placeholder")
    p.add_argument("--projection-md", metavar="FILE", help="with --docs: markdown for the PROJECTION placeholder")
    a = p.parse_args(argv)
    if a.table:
        rows = read_rows(a.table)
        md = report_md(rows)
        print(md)
        if a.md:
            Path(a.md).write_text(md)
        if a.docs:
            rd = lambda f: Path(f).read_text() if f and Path(f).exists() else ""  # noqa: E731
            fill_docs(Path(a.docs), rows, rd(a.scaling_md), rd(a.projection_md))
        return 0
    if a.rounds < 6:
        print(f"[run_all] note: --rounds {a.rounds} < 6 (the comparison's minimum)", file=sys.stderr)
    todo = [e for wl in a.workloads
            for e in entries(wl, a.rounds, block=a.block, group_size=a.group_size, eval_every=a.eval_every,
                             overrides=tuple(a.overrides))
            if not a.only or e.label in a.only or e.framework in a.only]
    if a.dry_run:
        for e in todo:
            print(f"{e.block} {e.label}: {' '.join(command(e, a.compare_python))}")
        return 0
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for e in todo:
        argv_ = command(e, a.compare_python)
        wl = e.args[e.args.index("--workload") + 1]
        print(f"[run_all] {wl} {e.label}: {' '.join(argv_)}", file=sys.stderr, flush=True)
        res = run_entry(e, argv_, a.timeout, a.lock)
        res.setdefault("workload", wl)
        res["entry"] = asdict(e)
        with open(out, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(res) + "\n")
        steps = res.get("local_steps_per_round")
        print(f"[run_all]   -> {res.get('round_s', res.get('error'))} s/round, acc {res.get('final_acc')}, "
              f"local steps/round {statistics.median(steps) if steps else None}", file=sys.stderr, flush=True)
    md = report_md(read_rows(out))
    Path(a.md or out.with_suffix(".md")).write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
