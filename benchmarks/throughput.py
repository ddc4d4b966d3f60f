"""Throughput of hpcfed's federated round on a standard workload (see :mod:`benchmarks.workloads`).

Usage (from the repository root)::

    python -m benchmarks.throughput --workload text-bitfit --rounds 5 [--eval] [--json out.json]
    python -m benchmarks.throughput --workload text-lora --set fl.local.bf16=false --set fl.local.length_buckets=1
    python -m benchmarks.throughput --workload text-bitfit --set fl.local.client_group_size=8
    python -m benchmarks.throughput --workload vit-cifar --device cuda          # on a GPU node
    mpirun -n 2 python -m benchmarks.throughput --workload text-bitfit --set dist.num_threads=1   # ranks

Round 1 is the warm-up (it trains: the model after ``--rounds`` rounds is the same as ``hpcfed.main``'s);
rounds 2..R are timed and every metric is the median over them:

* ``round_s``: wall time of ``FederatedLoop.run_round`` (local training of the cohort, aggregation, the
  all-reduce, the server step), max over ranks;
* ``client_updates_per_s`` = cohort / round_s; ``samples_per_s``; ``tokens_per_s`` (real, non-padding
  tokens = sum of the sequence lengths the local steps consumed) and ``padded_tokens_per_s`` (tokens computed:
  each length-bucket micro-batch padded to its own longest sequence);
* ``compute_s``: the same clients' local steps (the same batches, micro-batches, autocast and fused optimizer
  step) timed in a bare loop right after the round, with no FL machinery; ``overhead_s = round_s - compute_s``
  and ``overhead_frac = overhead_s / round_s`` (negative when the framework trains faster than the bare
  per-client loop, e.g. with client groups);
* ``mfu_bf16`` / ``mfu_fp32``: model FLOPs on *useful* tokens per second / the matmul peak measured in this
  run (timed large ``torch.matmul`` in bf16 and fp32 on every rank at once, summed over the ranks). Useful FLOPs per sequence of length L are
  ``c + a·L + b·L²``, fitted exactly to the FLOPs autograd executes for one forward+backward of single
  unpadded sequences (``torch.utils.flop_counter``), so frozen weights without weight gradients are not
  counted and padding never is;
* ``peak_mem_mb``: peak resident set size of the process (CPU) or ``torch.cuda.max_memory_allocated`` (CUDA).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------- pure arithmetic


def mfu(useful_flops: float, seconds: float, peak_flops_per_s: float) -> float:
    """Model FLOPs utilisation: ``useful_flops / seconds / peak_flops_per_s`` (a fraction, not %).

    Raises:
        ValueError: non-positive ``seconds`` or ``peak_flops_per_s``.
    """
    if seconds <= 0 or peak_flops_per_s <= 0:
        raise ValueError(f"seconds={seconds} and peak_flops_per_s={peak_flops_per_s} must be > 0")
    return useful_flops / seconds / peak_flops_per_s


def matmul_flops(n: int, m: int | None = None, k: int | None = None) -> int:
    """FLOPs of an (n × k) @ (k × m) matmul: 2·n·m·k (a multiply and an add per term)."""
    m = n if m is None else m
    k = n if k is None else k
    return 2 * n * m * k


def fit_seq_flops(lengths: Sequence[int], flops: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares (c, a, b) of ``flops(L) = c + a·L + b·L²`` (exact for 3 distinct lengths).

    Linear layers cost ∝ L, attention scores and their weighted sum ∝ L², the pooled head a constant.
    """
    A = torch.tensor([[1.0, float(L), float(L) ** 2] for L in lengths], dtype=torch.float64)
    y = torch.tensor([float(f) for f in flops], dtype=torch.float64)[:, None]
    sol = torch.linalg.lstsq(A, y).solution[:, 0]
    return float(sol[0]), float(sol[1]), float(sol[2])


def seq_flops(coef: tuple[float, float, float], lengths: torch.Tensor) -> float:
    """Sum over sequences of ``c + a·L + b·L²`` for integer ``lengths`` (any shape)."""
    c, a, b = coef
    L = lengths.to(torch.float64)
    return float((c + a * L + b * L * L).sum())


def token_counts(lengths: torch.Tensor | None, batches: Sequence[torch.Tensor], buckets: int,
                 packing: bool = False) -> tuple[int, int, int]:
    """(samples, real tokens, computed tokens) of local ``batches`` (index tensors): packed into rows no
    longer than the batch's longest sequence (``packing``, as :func:`hpcfed.models.packing.pack_sequences`),
    or split into ``buckets`` length-sorted micro-batches, each padded to its own longest sequence (as
    :func:`hpcfed.fl.client.length_buckets` + ``batch_to`` do). Images (``lengths`` None): tokens are 0."""
    from hpcfed.models.packing import pack_rows

    samples = sum(len(b) for b in batches)
    if lengths is None:
        return samples, 0, 0
    real = padded = 0
    for idx in batches:
        ls = lengths[idx]
        real += int(ls.sum())
        if packing:
            lst = [int(v) for v in ls.tolist()]
            rows = pack_rows(lst, max(lst))
            padded += len(rows) * max(sum(lst[i] for i in r) for r in rows)
            continue
        if buckets <= 1 or len(idx) <= 1:
            padded += int(ls.max()) * len(idx)
            continue
        srt = torch.sort(ls, stable=True).values
        for part in srt.tensor_split(min(buckets, len(idx))):
            if len(part):
                padded += int(part.max()) * len(part)
    return samples, real, padded


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


# ------------------------------------------------------------------------------------------------- measurements


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, sizes: Sequence[int] = (1024, 2048),
                min_time_s: float = 0.5) -> float:
    """Best FLOP/s of square ``torch.matmul`` in ``dtype`` on ``device`` over ``sizes`` (each timed for at
    least ``min_time_s`` after a warm-up call). On CUDA larger sizes are used (4096, 8192)."""
    if device.type == "cuda":
        sizes = tuple(max(s, 4096) for s in sizes) + (8192,)
    best = 0.0
    g = torch.Generator(device=device).manual_seed(0)
    for n in sizes:
        a = torch.randn(n, n, device=device, generator=g).to(dtype)
        b = torch.randn(n, n, device=device, generator=g).to(dtype)
        out = torch.empty(n, n, device=device, dtype=dtype)
        torch.matmul(a, b, out=out)
        _sync(device)
        reps, t0 = 0, time.perf_counter()
        while True:
            torch.matmul(a, b, out=out)
            reps += 1
            _sync(device)
            dt = time.perf_counter() - t0
            if dt >= min_time_s:
                break
        best = max(best, matmul_flops(n) * reps / dt)
        del a, b, out
    return best


def _cpu_sdpa_flop_formulas() -> dict:
    """FLOP formulas for the CPU fused-attention ops that ``torch.utils.flop_counter`` does not cover.

    PyTorch's SDPA dispatches to ``aten._scaled_dot_product_flash_attention_for_cpu`` (and its backward) on
    CPU; torch 2.14's ``FlopCounterMode`` has formulas for the CUDA flash / efficient / cuDNN kernels only,
    so it silently counted attention as 0 FLOPs on CPU. The CPU ops take (query, key, value, ...) and
    (grad_out, query, key, value, ...) like the CUDA flash ops, so the library's own SDPA formulas apply.
    Ops already in the library's registry (a later torch) are left to it.
    """
    from torch.utils import flop_counter as fc

    ops = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None), \
        getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    fwd, bwd = ops
    out = {}
    if fwd is not None and fwd not in fc.flop_registry:
        out[fwd] = lambda q, k, v, *args, out_shape=None, **kwargs: fc.sdpa_flop_count(q, k, v)
    if bwd is not None and bwd not in fc.flop_registry:
        out[bwd] = lambda g, q, k, v, *args, out_shape=None, **kwargs: fc.sdpa_backward_flop_count(g, q, k, v)
    return out


def flop_counter():
    """A ``torch.utils.flop_counter.FlopCounterMode`` (no display) that also counts CPU fused attention
    (:func:`_cpu_sdpa_flop_formulas`)."""
    from torch.utils.flop_counter import FlopCounterMode

    return FlopCounterMode(display=False, custom_mapping=_cpu_sdpa_flop_formulas())


def measure_seq_flops(model, device: torch.device, *, kind: str, example: torch.Tensor | None = None,
                      lengths: Sequence[int] = (8, 16, 32)) -> tuple[float, float, float]:
    """FLOPs autograd executes for forward + backward of one example, as ``(c, a, b)`` of c + a·L + b·L².

    Text: single unpadded sequences of ``lengths`` (token ids 5..94; the count does not depend on the ids).
    Images: one ``example`` (H, W, C) uint8 gives c; a = b = 0.
    """
    was_training = model.training
    model.eval()  # no dropout randomness; the FLOPs are the same

    def count(x, ln):
        with flop_counter() as fc:
            logits = model(x, ln)
            loss = F.cross_entropy(logits.float(), torch.zeros(len(x), dtype=torch.long, device=device))
            loss.backward()
        model.zero_grad(set_to_none=True)
        return fc.get_total_flops()

    try:
        if kind == "image":
            assert example is not None
            return float(count(example[None].to(device), None)), 0.0, 0.0
        vals = []
        for L in lengths:
            x = (torch.arange(L, dtype=torch.int32) % 90 + 5)[None].to(device)
            vals.append(count(x, torch.tensor([L], dtype=torch.int32, device=device)))
        return fit_seq_flops(lengths, vals)
    finally:
        model.train(was_training)


def peak_mem_mb(device: torch.device) -> float:
    """Peak memory of this process in MiB: max RSS (CPU) or max CUDA allocation."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def hardware_info(device: torch.device) -> dict:
    """CPU model, cores, threads, torch version, GPU name (CUDA), load average."""
    cpu = platform.processor()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        cpu = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), cpu)
    except (OSError, subprocess.SubprocessError):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "loadavg": list(os.getloadavg())}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# ------------------------------------------------------------------------------------------------------ the run


def _client_batches(loop, cid: int, round_idx: int):
    """The index batches client ``cid`` trains on in round ``round_idx`` (the trainer's exact draw)."""
    from hpcfed.fl.client import local_batches
    from hpcfed.fl.sampling import client_seed

    c = loop.cfg.fl.local
    data = loop.clients.get(cid)
    gen = torch.Generator().manual_seed(client_seed(loop.cfg.seed, round_idx, cid))
    return data, local_batches(len(data), c.batch_size, epochs=c.epochs, steps=c.steps, generator=gen)


def bare_compute(loop, round_idx: int) -> float:
    """Seconds of this rank's clients' local steps of round ``round_idx`` in a bare loop: the same batches,
    micro-batches, autocast, loss and fused AdamW step, no FL machinery. Leaves the flat buffer as found."""
    from hpcfed import kernels
    from hpcfed.fl.client import autocast_ctx, batch_to, length_buckets

    c, model, flat, dev = loop.cfg.fl.local, loop.model, loop.flat, loop.device
    pack = loop.trainer.pack
    saved = flat.data.clone()
    m, v = torch.zeros_like(flat.data), torch.zeros_like(flat.data)
    work = [_client_batches(loop, cid, round_idx) for cid in loop.my_clients(round_idx)]  # data loaded already
    model.train()
    _sync(dev)
    t0 = time.perf_counter()
    for data, batches in work:
        flat.data.copy_(loop.theta_global)
        m.zero_()
        v.zero_()
        for step, idx in enumerate(batches, start=1):
            flat.zero_grad()
            for part in ([idx] if pack else length_buckets(data, idx, c.length_buckets)):
                x, y, ln = batch_to(data, part, dev)
                with autocast_ctx(dev, c.bf16):
                    logits = model(x, ln, pack=True) if pack else model(x, ln)
                (F.cross_entropy(logits.float(), y) * (len(part) / len(idx))).backward()
            kernels.masked_adamw_step(flat.data, flat.grad, m, v, lr=c.lr, beta1=c.beta1, beta2=c.beta2,
                                      eps=c.eps, weight_decay=c.weight_decay, step=step, mask=None,
                                      lr_scale=loop.trainer.lr_scale)
    _sync(dev)
    dt = time.perf_counter() - t0
    flat.data.copy_(saved)
    return dt


def _gather(comm, value: float, device: torch.device) -> list[float]:
    """Every rank's ``value`` (one all-reduce of a one-hot vector)."""
    t = torch.zeros(comm.world_size, dtype=torch.float64, device=device)
    t[comm.rank] = value
    return comm.all_reduce_sum(t, tag="bench").tolist()


def run_benchmark(workload: str, *, rounds: int = 5, device: str = "cpu", overrides: Sequence[str] = (),
                  do_eval: bool = False, compute_baseline: bool = True, peak: bool = True,
                  eval_every: int = 0) -> dict:
    """Build hpcfed's loop for ``workload`` on this rank, run ``rounds`` rounds (round 1 = warm-up) and
    return the metrics described in the module docstring (identical on every rank). ``eval_every=K > 0`` also
    records the test accuracy after every K-th round (``acc_curve``, outside the timed rounds).

    Raises:
        ValueError: ``rounds < 2`` (nothing would be timed).
    """
    if rounds < 2:
        raise ValueError(f"--rounds={rounds}: need >= 2 (round 1 is the warm-up)")
    from benchmarks.workloads import WORKLOADS, load_workload_config
    from hpcfed.dist import init_runtime, make_comm
    from hpcfed.compose import build_loop, quiet_libraries

    quiet_libraries()
    cfg = load_workload_config(workload, overrides, rounds=rounds, device=device)
    rt = init_runtime(device=cfg.dist.device, backend=cfg.dist.backend, timeout_s=cfg.dist.timeout_s,
                      num_threads=cfg.dist.num_threads)
    comm = make_comm()
    try:
        dev = rt.device
        t0 = time.perf_counter()
        loop, dataset = build_loop(cfg, rt, comm)
        build_s = time.perf_counter() - t0
        kind = WORKLOADS[workload].kind
        example = None if kind == "text" else loop.clients.get(loop.my_clients(1)[0]).x[0]
        coef = measure_seq_flops(loop.model, dev, kind=kind, example=example)
        peaks = {}
        if peak:
            peaks = {"peak_bf16_flops": matmul_peak(dev, torch.bfloat16),
                     "peak_fp32_flops": matmul_peak(dev, torch.float32)}
            # the job's peak is every rank's device together (each rank measured its own, concurrently)
            peaks = {k: sum(_gather(comm, v, dev)) for k, v in peaks.items()}
        c = cfg.fl.local
        grouped = loop.group_trainer is not None  # the client-parallel path pads (length buckets)
        per_round = []
        acc_curve = []
        for r in range(1, rounds + 1):
            _sync(dev)
            m = loop.run_round(r)
            round_s = max(_gather(comm, m["round_s"], dev))
            samples = real = padded = 0
            flops = 0.0
            for cid in loop.my_clients(r):
                data, batches = _client_batches(loop, cid, r)
                s, t, p = token_counts(data.lengths, batches, c.length_buckets,
                                       packing=loop.trainer.pack and not grouped)
                samples, real, padded = samples + s, real + t, padded + p
                flops += sum(seq_flops(coef, data.lengths[b]) for b in batches) if data.lengths is not None \
                    else coef[0] * s
            samples, real, padded, flops = (sum(_gather(comm, float(v), dev)) for v in (samples, real, padded, flops))
            row = {"round": r, "round_s": round_s, "clients": m["clients"], "samples": samples,
                   "tokens": real, "padded_tokens": padded, "useful_flops": flops, "train_loss": m["train_loss"],
                   "loadavg1": os.getloadavg()[0]}
            if compute_baseline and r > 1:
                row["compute_s"] = max(_gather(comm, bare_compute(loop, r), dev))
            per_round.append(row)
            if eval_every > 0 and r % eval_every == 0:
                acc_curve.append([r, loop.evaluate_test().get("test_acc")])
        timed = per_round[1:]
        rs = median([x["round_s"] for x in timed])
        out = {
            "framework": "hpcfed", "workload": workload, "device": str(dev), "world_size": comm.world_size,
            "processes": comm.world_size, "threads": torch.get_num_threads(),
            "overrides": list(overrides), "rounds": rounds, "timed_rounds": len(timed), "build_s": build_s,
            "cohort": cfg.fl.cohort_size, "local_steps": c.steps, "batch_size": c.batch_size, "bf16": c.bf16,
            "length_buckets": c.length_buckets, "packing": loop.trainer.pack and not grouped,
            "trainable_params": loop.flat.numel,
            "client_group_size": getattr(c, "client_group_size", 1),
            "round_s": rs, "round_s_all": [x["round_s"] for x in per_round],
            "client_updates_per_s": median([x["clients"] / x["round_s"] for x in timed]),
            "samples_per_s": median([x["samples"] / x["round_s"] for x in timed]),
            "seq_flops_coef": coef,
        }
        if kind == "text":
            out["tokens_per_s"] = median([x["tokens"] / x["round_s"] for x in timed])
            out["padded_tokens_per_s"] = median([x["padded_tokens"] / x["round_s"] for x in timed])
            out["padding_frac"] = median([1 - x["tokens"] / x["padded_tokens"] for x in timed])
        out["useful_tflops_per_s"] = median([x["useful_flops"] / x["round_s"] for x in timed]) / 1e12
        out.update(peaks)
        if peaks:
            out["mfu_bf16"] = median([mfu(x["useful_flops"], x["round_s"], peaks["peak_bf16_flops"]) for x in timed])
            out["mfu_fp32"] = median([mfu(x["useful_flops"], x["round_s"], peaks["peak_fp32_flops"]) for x in timed])
        if compute_baseline:
            out["compute_s"] = median([x["compute_s"] for x in timed])
            out["overhead_s"] = median([x["round_s"] - x["compute_s"] for x in timed])
            out["overhead_frac"] = median([(x["round_s"] - x["compute_s"]) / x["round_s"] for x in timed])
        if acc_curve:
            out["acc_curve"] = acc_curve
        if do_eval:
            if acc_curve and acc_curve[-1][0] == rounds:
                out["final_acc"] = acc_curve[-1][1]
            else:
                ev = loop.evaluate_test()
                out["final_acc"] = ev.get("test_acc")
                out["final_loss"] = ev.get("test_loss")
        out["peak_mem_mb"] = max(_gather(comm, peak_mem_mb(dev), dev))
        out["hardware"] = hardware_info(dev)
        out["per_round"] = per_round
        dataset.close()
        return out
    finally:
        rt.shutdown()


def summary_line(r: dict) -> str:
    """One human-readable line of a result."""
    parts = [f"{r['framework']} {r['workload']} {' '.join(r.get('overrides', []))}".strip(),
             f"round {r['round_s']:.2f} s", f"{r['client_updates_per_s']:.2f} upd/s",
             f"{r['samples_per_s']:.0f} samples/s"]
    if "tokens_per_s" in r:
        parts.append(f"{r['tokens_per_s']:.0f} tok/s (padding {100 * r['padding_frac']:.0f}%)")
    if "mfu_bf16" in r:
        parts.append(f"MFU {100 * r['mfu_bf16']:.1f}% of bf16 peak ({r['peak_bf16_flops'] / 1e9:.0f} GFLOP/s), "
                     f"{100 * r['mfu_fp32']:.1f}% of fp32 ({r['peak_fp32_flops'] / 1e9:.0f})")
    if "overhead_frac" in r:
        parts.append(f"overhead {r['overhead_s']:.2f} s ({100 * r['overhead_frac']:.1f}%)")
    if r.get("final_acc") is not None:
        parts.append(f"acc {100 * r['final_acc']:.2f}%")
    parts.append(f"peak mem {r['peak_mem_mb']:.0f} MiB")
    return " | ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.workloads import WORKLOADS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", default="text-bitfit", choices=sorted(WORKLOADS))
    p.add_argument("--rounds", type=int, default=5, help="rounds incl. the warm-up round 1 (default 5)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra hpcfed config word (repeatable), e.g. fl.local.client_group_size=8")
    p.add_argument("--eval", action="store_true", help="test accuracy of the global model after the last round")
    p.add_argument("--eval-every", type=int, default=0, metavar="K",
                   help="also test accuracy after every K-th round (acc_curve; not in the round times)")
    p.add_argument("--no-compute-baseline", action="store_true", help="skip the bare-loop timing (overhead)")
    p.add_argument("--no-peak", action="store_true", help="skip the matmul peak (MFU)")
    p.add_argument("--json", help="append the result as one JSON line to this file")
    a = p.parse_args(argv)
    r = run_benchmark(a.workload, rounds=a.rounds, device=a.device, overrides=a.overrides, do_eval=a.eval,
                      compute_baseline=not a.no_compute_baseline, peak=not a.no_peak,
                      eval_every=a.eval_every)
    if int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("RANK", "0"))) == 0:
        print(summary_line(r), file=sys.stderr)
        line = json.dumps(r)
        print(line)
        if a.json:
            with open(a.json, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
