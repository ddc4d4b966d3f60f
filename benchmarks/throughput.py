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
  and ``overhead_frac = overhead_s / round_s`` (the bare-loop comparison; negative when the framework trains
  faster than the bare per-client loop, e.g. with client groups);
* ``gemm_fraction_bf16`` / ``gemm_fraction_fp32``: model FLOPs on *useful* tokens per second / the GEMM rate
  measured in this run (best of timed square ``torch.matmul`` in bf16 and fp32 on every rank at once, summed
  over the ranks; ``gemm_peak_bf16_flops`` / ``gemm_peak_fp32_flops`` and ``gemm_peak_basis`` say what the
  denominator is). This is a fraction of a *measured* rate, not of the hardware's peak (it is not an MFU).
  Useful FLOPs per sequence of length L are ``c + a·L + b·L²``, fitted exactly to the FLOPs autograd executes
  for one forward+backward of single unpadded sequences (``torch.utils.flop_counter``), so frozen weights
  without weight gradients are not counted and padding never is;
* ``nominal_fraction_bf16`` / ``nominal_fraction_fp32``: the same useful FLOP/s over a nominal peak derived
  from the CPU's flags and clock for the cores the job uses (:func:`nominal_peak`; ``nominal_peak`` holds the
  derivation, or None with the reason when the clock or the ISA cannot be derived; CPU runs only);
* ``client_compute_s``: the wall time of the clients' local training *inside* the round (each
  ``local_update`` / client group timed as it runs, summed per rank, the busiest rank), and
  ``overhead_inround_s = round_s - client_compute_s`` (median, ``_min``/``_max`` over the timed rounds; also
  as a share of the round, ``overhead_inround_frac``): everything the round does besides local training;
* ``local_steps_per_round``: the local optimizer steps the round actually ran, summed over its clients (every
  round, from the engine's round metrics);
* ``hardware``: :func:`hardware_record` (CPU model, ISA flags, cores, nominal peak, library versions);
* ``peak_mem_mb``: peak resident set size of the process (CPU) or ``torch.cuda.max_memory_allocated`` (CUDA).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------- pure arithmetic


def gemm_fraction(useful_flops: float, seconds: float, peak_flops_per_s: float) -> float:
    """Useful FLOP/s as a fraction (not %) of a reference rate: ``useful_flops / seconds / peak_flops_per_s``.

    With the GEMM rate measured in the same run as ``peak_flops_per_s`` this is the "fraction of the measured
    GEMM rate" of the rows; with :func:`nominal_peak`'s rate it is the fraction of the nominal peak.

    Args:
        useful_flops: FLOPs of the useful work (FLOP).
        seconds: wall time it took (s).
        peak_flops_per_s: the reference rate (FLOP/s).

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


# ------------------------------------------------------------------------------ the CPU's nominal peak (pure)

CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
"""The ``/proc/cpuinfo`` flags every hardware record states (present: True, absent: False)."""


def parse_cpuinfo(text: str) -> dict:
    """The fields of a Linux ``/proc/cpuinfo`` text that the nominal peak needs (first processor's values).

    Returns:
        ``{"model_name": str | None, "vendor": str | None, "family": int | None, "flags": frozenset[str],
        "cpu_mhz": float | None, "logical_cpus": int, "physical_cores": int}``; ``physical_cores`` counts
        distinct (``physical id``, ``core id``) pairs (SMT siblings share a core's FMA units), or the
        processors when those fields are absent (e.g. ARM). Never raises; missing fields are None / empty.
    """
    blocks = [b for b in text.strip().split("\n\n") if b.strip()]
    procs = []
    for b in blocks:
        d = {}
        for line in b.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                d.setdefault(key.strip().lower(), value.strip())
        if "processor" in d:
            procs.append(d)
    first = procs[0] if procs else {}

    def num(key, cast):
        try:
            return cast(first[key])
        except (KeyError, ValueError):
            return None

    flags = first.get("flags", first.get("features", ""))
    cores = {(p.get("physical id"), p.get("core id")) for p in procs if "core id" in p}
    return {"model_name": first.get("model name") or None, "vendor": first.get("vendor_id") or None,
            "family": num("cpu family", int), "flags": frozenset(flags.split()), "cpu_mhz": num("cpu mhz", float),
            "logical_cpus": len(procs), "physical_cores": len(cores) if cores else len(procs)}


def cpu_clock(cpu: dict, *, base_khz: float | None = None, max_khz: float | None = None) -> tuple:
    """The clock a nominal peak is computed at, and where it comes from, in this order of preference:
    ``base_khz`` (cpufreq ``base_frequency``), the "@ x.xxGHz" of the model name (Intel's base clock),
    ``max_khz`` (cpufreq ``cpuinfo_max_freq``, the boost clock), ``cpu MHz`` of /proc/cpuinfo (the current
    clock, or under a hypervisor usually the TSC rate, which is neither base nor boost by definition).

    Args:
        cpu: :func:`parse_cpuinfo`'s dict.
        base_khz, max_khz: the cpufreq sysfs values (kHz), None when absent.

    Returns:
        ``(clock_ghz, source)``, or ``(None, reason)`` when no clock is known. Never raises.
    """
    import re

    if base_khz:
        return base_khz / 1e6, "cpufreq base_frequency (base clock)"
    found = re.search(r"@\s*([0-9.]+)\s*GHz", cpu.get("model_name") or "")
    if found:
        return float(found.group(1)), "model name '@ GHz' (base clock)"
    if max_khz:
        return max_khz / 1e6, "cpufreq cpuinfo_max_freq (maximum boost clock: an upper bound)"
    if cpu.get("cpu_mhz"):
        return cpu["cpu_mhz"] / 1e3, ("/proc/cpuinfo 'cpu MHz' (current clock as reported; under a hypervisor "
                                      "usually the TSC rate, not the boost clock)")
    return None, "no clock: no cpufreq, no '@ GHz' in the model name, no 'cpu MHz' in /proc/cpuinfo"


def flops_per_cycle(cpu: dict) -> dict:
    """Nominal FLOPs per cycle per physical core in fp32 and bf16 from the ISA flags (an FMA counts 2 FLOPs).

    fp32: AVX-512F 2 FMA pipes × 16 lanes × 2 = 64 (AMD family 25, Zen 4, executes 512-bit FMAs on two
    256-bit pipes: 32); AVX2 + FMA 2 × 8 × 2 = 32. bf16: AMX-BF16 1024 (one TDPBF16PS tile op, 16·16·32
    multiply-adds, every 16 cycles; Intel's "1024 BF16 ops/cycle/core"); AVX512_BF16 2 pipes × VDPBF16PS
    (16 lanes × 2 pairs × 2) = 128 (Zen 4: 64); without either flag bf16 GEMMs run on the fp32 FMA units
    (converted), so the fp32 figure. The two-pipe counts are the top of each ISA: parts with one FMA-512 pipe
    (some Xeon Silver/Gold 5xxx) reach half, which the flags cannot tell.

    Returns:
        ``{"fp32": int | None, "bf16": int | None, "isa_fp32": str, "isa_bf16": str, "reason": str | None}``;
        None with a reason when neither AVX2+FMA nor AVX-512F is flagged (unknown ISA). Never raises.
    """
    f = cpu.get("flags") or frozenset()
    zen4 = (cpu.get("vendor") == "AuthenticAMD" and cpu.get("family") == 25)
    if "avx512f" in f:
        fp32, isa32 = (32, "avx512f (AMD family 25: 2 x 256-bit FMA pipes)") if zen4 else \
            (64, "avx512f (2 FMA-512 pipes assumed)")
    elif "avx2" in f and "fma" in f:
        fp32, isa32 = 32, "avx2+fma (2 FMA-256 pipes assumed)"
    else:
        return {"fp32": None, "bf16": None, "isa_fp32": "unknown", "isa_bf16": "unknown",
                "reason": "neither avx2+fma nor avx512f in the CPU flags: FLOPs per cycle not derived"}
    if "amx_bf16" in f:
        bf16, isa16 = 1024, "amx_bf16 (1 TMUL unit)"
    elif "avx512_bf16" in f:
        bf16, isa16 = (64, "avx512_bf16 (AMD family 25: 2 x 256-bit pipes)") if zen4 else \
            (128, "avx512_bf16 (2 pipes assumed)")
    else:
        bf16, isa16 = fp32, "no bf16 instructions: bf16 GEMMs run on the fp32 FMA units"
    return {"fp32": fp32, "bf16": bf16, "isa_fp32": isa32, "isa_bf16": isa16, "reason": None}


def nominal_peak(cpu: dict, cores: int | None = None, *, base_khz: float | None = None,
                 max_khz: float | None = None) -> dict:
    """Nominal peak FLOP/s of ``cores`` physical cores = cores × clock × FLOPs/cycle, in fp32 and bf16.

    Args:
        cpu: :func:`parse_cpuinfo`'s dict.
        cores: cores the job uses (default: all physical cores); capped at the physical cores.
        base_khz, max_khz: cpufreq sysfs clocks (kHz) when the machine exposes them (see :func:`cpu_clock`).

    Returns:
        ``{"fp32_flops": float | None, "bf16_flops": float | None, "cores": int, "clock_ghz": float | None,
        "clock_source": str, "fp32_flops_per_cycle": ..., "bf16_flops_per_cycle": ..., "isa_fp32": str,
        "isa_bf16": str, "reason": str | None}`` (FLOP/s). Both peaks are None, with ``reason`` saying why,
        when the clock or the ISA cannot be derived: never a guessed number. Never raises.
    """
    avail = cpu.get("physical_cores") or 0
    used = min(cores, avail) if cores and avail else (cores or avail)
    clock, source = cpu_clock(cpu, base_khz=base_khz, max_khz=max_khz)
    fpc = flops_per_cycle(cpu)
    reason = fpc["reason"] or (None if clock else source)
    if not used:
        reason = reason or "no core count in /proc/cpuinfo"
    ok = reason is None
    return {"fp32_flops": used * clock * 1e9 * fpc["fp32"] if ok else None,
            "bf16_flops": used * clock * 1e9 * fpc["bf16"] if ok else None,
            "cores": used, "clock_ghz": clock, "clock_source": source,
            "fp32_flops_per_cycle": fpc["fp32"], "bf16_flops_per_cycle": fpc["bf16"],
            "isa_fp32": fpc["isa_fp32"], "isa_bf16": fpc["isa_bf16"], "reason": reason}


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


EXTRA_PACKAGES = ("pfl", "flwr")
"""Distributions recorded besides :data:`hpcfed.envinfo.PACKAGES` (the compared frameworks)."""


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def _khz(path: str) -> float | None:
    text = _read(path)
    try:
        return float(text.strip()) if text else None
    except ValueError:
        return None


def hardware_record(device: torch.device | str = "cpu", cores_used: int | None = None) -> dict:
    """What a benchmark row ran on, JSON-serializable; never raises (unknown values are None).

    Args:
        device: the torch device the row measured.
        cores_used: physical cores the job used (processes × threads; for the nominal peak), default all.

    Returns:
        ``{"cpu_model", "cpu_vendor", "cpu_family", "cpu_flags": {flag: bool for CPU_FLAGS}, "cores_physical",
        "cpus_logical", "nominal_peak": nominal_peak(...), "torch_cpu_capability", "versions": {python, torch,
        transformers, peft, timm, open_clip_torch, triton, mpi4py, pfl, flwr}, "mpi_library", "gpu_models",
        "cpu", "cores", "torch_threads", "torch", "python", "loadavg", "gpu" (CUDA only)}``. ``versions`` are the
        installed distributions' (None: not installed in this interpreter's environment); the keys from
        ``cpu`` on are the earlier record's, kept for readers of old rows.
    """
    from importlib import metadata

    from hpcfed.envinfo import environment_info

    device = torch.device(device)
    env = environment_info()
    versions = dict(env["versions"])
    for name in EXTRA_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except Exception:  # noqa: BLE001 - not installed or broken metadata
            versions[name] = None
    cpu = parse_cpuinfo(_read("/proc/cpuinfo") or "")
    freq = "/sys/devices/system/cpu/cpu0/cpufreq/"
    peak = nominal_peak(cpu, cores_used, base_khz=_khz(freq + "base_frequency"),
                        max_khz=_khz(freq + "cpuinfo_max_freq")) if device.type == "cpu" else None
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001
        capability = None
    model = cpu["model_name"] or env["cpu_model"]
    info = {"cpu_model": model, "cpu_vendor": cpu["vendor"], "cpu_family": cpu["family"],
            "cpu_flags": {f: f in cpu["flags"] for f in CPU_FLAGS} if cpu["flags"] else None,
            "cores_physical": cpu["physical_cores"] or None, "cpus_logical": cpu["logical_cpus"] or os.cpu_count(),
            "nominal_peak": peak, "torch_cpu_capability": capability, "versions": versions,
            "mpi_library": env["mpi_library"], "gpu_models": env["gpu_models"],
            # the earlier record's keys
            "cpu": model, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "loadavg": list(os.getloadavg())}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


class ClientComputeTimer:
    """Times the clients' local training inside ``loop.run_round``, as it runs, without touching the engine:
    wraps this loop's ``algorithm.local_update`` (one client) and ``group_trainer.train_group`` (one client
    group) with a synchronized wall clock. ``take()`` returns the seconds accumulated since the last call.

    What is timed: loading θ_global into the flat buffer and the local steps (batches, forward/backward,
    optimizer). What is not: loading the client's data, checking, attacking, accumulating the update, the
    all-reduce, the server step. ``detach()`` restores the wrapped methods.
    """

    def __init__(self, loop):
        self.loop, self.seconds, self._saved = loop, 0.0, []
        self._wrap(loop.algorithm, "local_update")
        if getattr(loop, "group_trainer", None) is not None:
            self._wrap(loop.group_trainer, "train_group")

    def _wrap(self, obj, name: str) -> None:
        inner = getattr(obj, name)
        dev = self.loop.device

        def timed(*args, **kw):
            _sync(dev)
            t0 = time.perf_counter()
            try:
                return inner(*args, **kw)
            finally:
                _sync(dev)
                self.seconds += time.perf_counter() - t0

        self._saved.append((obj, name, obj.__dict__.get(name)))
        setattr(obj, name, timed)

    def take(self) -> float:
        """Seconds of local training since the previous call (s)."""
        out, self.seconds = self.seconds, 0.0
        return out

    def detach(self) -> None:
        for obj, name, prev in self._saved:
            if prev is None:
                delattr(obj, name)
            else:
                setattr(obj, name, prev)
        self._saved = []


def inround_overhead(rounds: Sequence[dict]) -> dict:
    """The framework overhead of timed rounds: round time minus the clients' compute timed inside the round.

    Args:
        rounds: one dict per timed round with ``round_s`` (s, the round's wall time, max over ranks) and
            ``client_compute_s`` (s, the busiest rank's summed local training inside that round).

    Returns:
        ``client_compute_s`` (median), ``overhead_inround_s`` = round_s − client_compute_s and
        ``overhead_inround_frac`` = that / round_s (medians, each with ``_min`` / ``_max`` over the rounds: the
        spread), and ``overhead_inround_basis`` (what was subtracted, in words).

    Raises:
        ValueError: no rounds, or a round with ``round_s <= 0``.
    """
    if not rounds:
        raise ValueError("no timed round")
    if any(x["round_s"] <= 0 for x in rounds):
        raise ValueError("round_s must be > 0")
    out = {"client_compute_s": median([x["client_compute_s"] for x in rounds])}
    ov = [x["round_s"] - x["client_compute_s"] for x in rounds]
    for key, vals in (("overhead_inround_s", ov),
                      ("overhead_inround_frac", [o / x["round_s"] for o, x in zip(ov, rounds)])):
        out[key], out[key + "_min"], out[key + "_max"] = median(vals), min(vals), max(vals)
    out["overhead_inround_basis"] = ("round_s (max over ranks) - the busiest rank's summed wall time of its "
                                     "clients' local_update / client groups, timed inside the same round")
    return out


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


def _local_processes(world_size: int) -> int:
    """Processes of this job on this node (Open MPI / torchrun environment; else all of them)."""
    for var in ("OMPI_COMM_WORLD_LOCAL_SIZE", "LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
        try:
            return max(1, int(os.environ[var]))
        except (KeyError, ValueError):
            continue
    return max(1, world_size)


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
            peaks = {"gemm_peak_bf16_flops": matmul_peak(dev, torch.bfloat16),
                     "gemm_peak_fp32_flops": matmul_peak(dev, torch.float32)}
            # the job's rate is every rank's device together (each rank measured its own, concurrently)
            peaks = {k: sum(_gather(comm, v, dev)) for k, v in peaks.items()}
            peaks["gemm_peak_basis"] = (
                f"measured in this run: best of timed square torch.matmul "
                f"({'4096, 8192' if dev.type == 'cuda' else '1024, 2048'}) per dtype, {comm.world_size} "
                f"process(es) x {torch.get_num_threads()} thread(s) at once, summed over the processes")
        c = cfg.fl.local
        grouped = loop.group_trainer is not None  # the client-parallel path pads (length buckets)
        timer = ClientComputeTimer(loop)
        per_round = []
        acc_curve = []
        for r in range(1, rounds + 1):
            _sync(dev)
            timer.take()
            m = loop.run_round(r)
            round_s = max(_gather(comm, m["round_s"], dev))
            client_s = _gather(comm, timer.take(), dev)  # each rank's clients' local training in this round
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
                   "local_steps": m["local_steps"], "client_compute_s": max(client_s),
                   "client_compute_s_ranks": client_s, "loadavg1": os.getloadavg()[0]}
            if compute_baseline and r > 1:
                row["compute_s"] = max(_gather(comm, bare_compute(loop, r), dev))
            per_round.append(row)
            if eval_every > 0 and r % eval_every == 0:
                acc_curve.append([r, loop.evaluate_test().get("test_acc")])
        timer.detach()
        timed = per_round[1:]
        rs = median([x["round_s"] for x in timed])
        threads = torch.get_num_threads()
        out = {
            "framework": "hpcfed", "workload": workload, "device": str(dev), "world_size": comm.world_size,
            "processes": comm.world_size, "threads": threads, "layout": f"{comm.world_size}x{threads}",
            "precision": "bf16-autocast" if c.bf16 else "fp32",
            "overrides": list(overrides), "rounds": rounds, "timed_rounds": len(timed), "build_s": build_s,
            "cohort": cfg.fl.cohort_size, "local_steps": c.steps, "batch_size": c.batch_size, "bf16": c.bf16,
            "local_steps_per_round": [x["local_steps"] for x in per_round],
            "tokens_per_round": [int(x["tokens"]) for x in per_round],
            "length_buckets": c.length_buckets, "packing": loop.trainer.pack and not grouped,
            "trainable_params": loop.flat.numel,
            "client_group_size": getattr(c, "client_group_size", 1),
            "round_s": rs, "round_s_all": [x["round_s"] for x in per_round],
            "round_s_min": min(x["round_s"] for x in timed), "round_s_max": max(x["round_s"] for x in timed),
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
        for dt in ("bf16", "fp32"):
            if peaks:
                out[f"gemm_fraction_{dt}"] = median([gemm_fraction(x["useful_flops"], x["round_s"],
                                                                   peaks[f"gemm_peak_{dt}_flops"]) for x in timed])
        hardware = hardware_record(dev, cores_used=_local_processes(comm.world_size) * threads)
        nominal = hardware.get("nominal_peak")
        if nominal is not None:  # one node's cores; the job spans world_size / local processes nodes
            nodes = max(1, comm.world_size // _local_processes(comm.world_size))
            out["nominal_peak_nodes"] = nodes
            for dt in ("bf16", "fp32"):
                pk = nominal[f"{dt}_flops"]
                out[f"nominal_fraction_{dt}"] = median([gemm_fraction(x["useful_flops"], x["round_s"], nodes * pk)
                                                        for x in timed]) if pk else None
        out.update(inround_overhead(timed))
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
        out["hardware"] = hardware
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
    if "gemm_fraction_bf16" in r:
        parts.append(f"{100 * r['gemm_fraction_bf16']:.1f}% of the measured bf16 GEMM rate "
                     f"({r['gemm_peak_bf16_flops'] / 1e9:.0f} GFLOP/s), {100 * r['gemm_fraction_fp32']:.1f}% of "
                     f"the fp32 one ({r['gemm_peak_fp32_flops'] / 1e9:.0f})")
    if r.get("nominal_fraction_bf16") is not None:
        parts.append(f"{100 * r['nominal_fraction_bf16']:.1f}% of the nominal bf16 peak")
    if "overhead_inround_s" in r:
        parts.append(f"overhead {r['overhead_inround_s']:.2f} s ({100 * r['overhead_inround_frac']:.1f}%, "
                     f"{100 * r['overhead_inround_frac_min']:.1f}..{100 * r['overhead_inround_frac_max']:.1f}%)")
    if "overhead_frac" in r:
        parts.append(f"vs bare loop {r['overhead_s']:.2f} s ({100 * r['overhead_frac']:.1f}%)")
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
    p.add_argument("--no-peak", action="store_true", help="skip the measured GEMM rate (gemm_fraction_*)")
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
