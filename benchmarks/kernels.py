"""Benchmark of the fused hpcfed.kernels against a copy of the same bytes and against unfused torch.

Usage (from the repository root)::

    python -m benchmarks.kernels                                   # CPU, n = 1e5, 1e6, 1e7
    python -m benchmarks.kernels --sizes 1e5 1e6 1e7 1e8           # up to 1e8 elements
    python -m benchmarks.kernels --device cuda                     # GPU, n = 1e5 ... 1e8 by default
    python -m benchmarks.kernels --device cuda --block-sizes 512 1024 2048 4096   # BLOCK_SIZE sweep (Triton)

For every kernel configuration and size it prints a markdown table row with

* ``dispatch ms``: the public dispatcher with ``backend='auto'`` (Triton on CUDA, the torch reference on CPU),
  median over repeats;
* ``GB/s``: the kernel's nominal memory traffic (bytes read + written per element x n, see ``bytes/el``) / time;
* ``clone GB/s``, ``copy_ GB/s`` and ``% copy``: the bandwidth of ``torch.clone`` and of ``Tensor.copy_`` into
  a preallocated buffer moving the same number of bytes (half read, half written), measured in the same run,
  and the dispatcher's GB/s as a fraction of the larger of the two (on CPU, ``clone`` of a large buffer pays
  page faults for its fresh output; on CUDA the caching allocator makes both the same);
* ``ref ms``: the torch reference (``*_ref``, in-place ops) -- the same code as ``dispatch`` on CPU;
* ``unfused ms``: a plain unfused torch sequence of out-of-place ops (one kernel launch / pass per op), and
  ``x unfused`` = unfused time / dispatch time.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from hpcfed import kernels as K
from hpcfed.kernels import accumulate as _acc_mod
from hpcfed.kernels import adamw as _adamw_mod
from hpcfed.kernels import server as _server_mod
from hpcfed.kernels import sgd as _sgd_mod

ADAMW = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)
SERVER = dict(lr=1.0, momentum=0.9, beta1=0.9, beta2=0.99, eps=1e-3)


@dataclass
class Case:
    kernel: str
    variant: str
    bytes_per_elem: int
    dispatch: Callable[[], None]  # the public dispatcher, backend='auto' (or --backend)
    ref: Callable[[], None]  # the torch reference
    unfused: Callable[[], None]  # naive unfused torch
    triton: Callable[[int], None]  # Triton wrapper with an explicit BLOCK_SIZE (sweep)


# ------------------------------------------------------------------------------------------- unfused torch sequences
def unfused_masked_accumulate(acc, cnt, theta_c, theta_g, w, mask):
    mf = mask.float()
    diff = theta_c - theta_g
    diff = diff * mf
    diff = diff * w
    acc += diff
    cnt += mf * w


def unfused_server_update(theta, acc, cnt, state, optimizer, step, lr, momentum, beta1, beta2, eps):
    active = cnt > 0
    safe = torch.where(active, cnt, torch.ones_like(cnt))
    delta = acc / safe
    if optimizer == "avg":
        theta.copy_(torch.where(active, theta + lr * delta, theta))
        return
    m = state["m"]
    if optimizer == "avgm":
        m_new = momentum * m + delta
        m.copy_(torch.where(active, m_new, m))
        theta.copy_(torch.where(active, theta + lr * m_new, theta))
        return
    v = state["v"]
    m_new = beta1 * m + (1 - beta1) * delta
    d2 = delta * delta
    if optimizer == "adam":
        v_new = beta2 * v + (1 - beta2) * d2
    else:
        v_new = v - (1 - beta2) * d2 * torch.sign(v - d2)
    m_hat = m_new / (1 - beta1**step)
    v_hat = v_new / (1 - beta2**step)
    upd = lr * m_hat / (torch.sqrt(v_hat) + eps)
    m.copy_(torch.where(active, m_new, m))
    v.copy_(torch.where(active, v_new, v))
    theta.copy_(torch.where(active, theta + upd, theta))


def unfused_adamw(param, grad, m, v, mask, step, lr, beta1, beta2, eps, weight_decay):
    keep = mask.bool()
    g = grad.float()
    p_new = param * (1 - lr * weight_decay)
    m_new = beta1 * m + (1 - beta1) * g
    v_new = beta2 * v + (1 - beta2) * g * g
    m_hat = m_new / (1 - beta1**step)
    v_hat = v_new / (1 - beta2**step)
    p_new = p_new - lr * m_hat / (torch.sqrt(v_hat) + eps)
    param.copy_(torch.where(keep, p_new, param))
    m.copy_(torch.where(keep, m_new, m))
    v.copy_(torch.where(keep, v_new, v))


def unfused_sgd(param, grad, buf, mask, lr, momentum, weight_decay, nesterov):
    keep = mask.bool()
    d = grad.float() + weight_decay * param
    b_new = momentum * buf + d
    d = d + momentum * b_new if nesterov else b_new
    p_new = param - lr * d
    param.copy_(torch.where(keep, p_new, param))
    buf.copy_(torch.where(keep, b_new, buf))


# ----------------------------------------------------------------------------------------------------------- cases
# One builder per configuration, called lazily, so that only one configuration's buffers live at a time (1e8
# elements x 5 fp32 buffers = 2 GB, plus the unfused temporaries).
def _randn(n, device, gen, dtype=torch.float32):
    return torch.randn(n, generator=gen, device=device).to(dtype)


def _case_accumulate(n, device, gen, backend):
    acc, cnt, tc, tg = (_randn(n, device, gen) for _ in range(4))
    cnt.abs_()
    mask = torch.ones(n, dtype=torch.uint8, device=device)  # dense: every counted byte is moved
    return Case(
        "masked_accumulate", "uint8 mask", 4 * 4 + 1 + 2 * 4,
        lambda: K.masked_accumulate(acc, cnt, tc, tg, 0.5, mask, backend=backend),
        lambda: K.masked_accumulate_ref(acc, cnt, tc, tg, 0.5, mask),
        lambda: unfused_masked_accumulate(acc, cnt, tc, tg, 0.5, mask),
        lambda bs: _acc_mod._masked_accumulate_triton(acc, cnt, tc, tg, 0.5, mask, block_size=bs),
    )


def _case_server(opt, n, device, gen, backend):
    keys = K.SERVER_OPTIMIZERS[opt][1]
    theta, acc = _randn(n, device, gen), _randn(n, device, gen).mul_(1e-3)
    cnt = torch.full((n,), 3.0, device=device)  # every element trained this round
    state = {k: _randn(n, device, gen).abs_().mul_(1e-3) for k in keys}
    kw = dict(optimizer=opt, step=5, **SERVER)
    return Case(
        "server_update", opt, 3 * 4 + 4 + 2 * 4 * len(keys),
        lambda: K.server_update(theta, acc, cnt, state, backend=backend, **kw),
        lambda: K.server_update_ref(theta, acc, cnt, state, **kw),
        lambda: unfused_server_update(theta, acc, cnt, state, **kw),
        lambda bs: _server_mod._server_update_triton(theta, acc, cnt, state, block_size=bs, **kw),
    )


def _case_adamw(gdt, n, device, gen, backend):
    p, g, m, v = _randn(n, device, gen), _randn(n, device, gen, gdt), _randn(n, device, gen), _randn(n, device, gen)
    m.mul_(1e-2)
    v.abs_().mul_(1e-4)
    mask = torch.ones(n, dtype=torch.uint8, device=device)
    gname = {torch.float32: "fp32", torch.bfloat16: "bf16"}[gdt]
    return Case(
        "masked_adamw_step", f"{gname} grad, uint8 mask", 3 * 4 + g.element_size() + 1 + 3 * 4,
        lambda: K.masked_adamw_step(p, g, m, v, step=10, mask=mask, backend=backend, **ADAMW),
        lambda: K.masked_adamw_step_ref(p, g, m, v, step=10, mask=mask, **ADAMW),
        lambda: unfused_adamw(p, g, m, v, mask, 10, **ADAMW),
        lambda bs: _adamw_mod._masked_adamw_triton(p, g, m, v, step=10, mask=mask, block_size=bs, **ADAMW),
    )


def _case_sgd(n, device, gen, backend):
    p, g, b = _randn(n, device, gen), _randn(n, device, gen), _randn(n, device, gen).mul_(1e-2)
    mask = torch.ones(n, dtype=torch.uint8, device=device)
    sgd = dict(lr=1e-2, momentum=0.9, weight_decay=1e-4, nesterov=True)
    return Case(
        "masked_sgd_step", "fp32 grad, nesterov, uint8 mask", 3 * 4 + 1 + 2 * 4,
        lambda: K.masked_sgd_step(p, g, b, step=2, mask=mask, backend=backend, **sgd),
        lambda: K.masked_sgd_step_ref(p, g, b, step=2, mask=mask, **sgd),
        lambda: unfused_sgd(p, g, b, mask, **sgd),
        lambda bs: _sgd_mod._masked_sgd_triton(p, g, b, step=2, mask=mask, block_size=bs, **sgd),
    )


def make_cases(n: int, device: str, backend: str | None, only: set[str] | None) -> Iterator[Case]:
    """Yield the benchmark configurations for n elements, building each one only when it is reached."""
    gen = torch.Generator(device=device).manual_seed(0)
    builders: list[tuple[str, Callable[[], Case]]] = [
        ("masked_accumulate", lambda: _case_accumulate(n, device, gen, backend)),
        *[("server_update", functools.partial(_case_server, o, n, device, gen, backend))
          for o in ("avg", "avgm", "adam", "yogi")],
        *[("masked_adamw_step", functools.partial(_case_adamw, d, n, device, gen, backend))
          for d in (torch.float32, torch.bfloat16)],
        ("masked_sgd_step", lambda: _case_sgd(n, device, gen, backend)),
    ]
    for kernel, build in builders:
        if only is None or kernel in only:
            yield build()


# ---------------------------------------------------------------------------------------------------------- timing
STAT: Callable[[list[float]], float] = statistics.median


def time_fn(fn: Callable[[], None], device: str, min_time: float, min_repeats: int, warmup: int = 2) -> float:
    """Seconds per call (median, or min with ``--stat min``) over repeats until ``min_time`` seconds and
    ``min_repeats`` calls were measured."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    total = 0.0
    cuda = device.startswith("cuda")
    while len(times) < min_repeats or total < min_time:
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            dt = start.elapsed_time(end) / 1e3
        else:
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
        times.append(dt)
        total += dt
        if len(times) >= 10_000:
            break
    return STAT(times)


def copy_bandwidth(nbytes: int, device: str, min_time: float, min_repeats: int) -> tuple[float, float]:
    """GB/s of copying nbytes/2 bytes (reads nbytes/2, writes nbytes/2): ``src.clone()`` (allocates its output,
    which on CPU means fresh pages and page faults once the buffer is above glibc's mmap threshold), and
    ``dst.copy_(src)`` into a preallocated buffer (the memory bandwidth proper)."""
    src = torch.empty(max(1, nbytes // 2), dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src).fill_(0)
    t_clone = time_fn(lambda: src.clone(), device, min_time, min_repeats)
    t_copy = time_fn(lambda: dst.copy_(src), device, min_time, min_repeats)
    return 2 * src.numel() / t_clone / 1e9, 2 * src.numel() / t_copy / 1e9


def hardware(device: str) -> str:
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(device)
        return f"{p.name} ({p.total_memory / 2**30:.0f} GiB), torch {torch.__version__}"
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{model}, {os.cpu_count()} logical CPUs, torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads")


def _fmt_n(n: int) -> str:
    e = math.log10(n)
    return f"1e{int(e)}" if e.is_integer() else str(n)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda[:i]")
    ap.add_argument("--sizes", nargs="+", type=float, default=None,
                    help="numbers of elements (default: 1e5 1e6 1e7 on CPU, 1e5 1e6 1e7 1e8 on CUDA)")
    ap.add_argument("--kernels", nargs="+", default=None,
                    choices=["masked_accumulate", "server_update", "masked_adamw_step", "masked_sgd_step"])
    ap.add_argument("--backend", default=None, choices=["auto", "triton", "torch"],
                    help="backend of the 'dispatch' column (default: auto)")
    ap.add_argument("--min-time", type=float, default=0.3, help="seconds measured per timing (default 0.3)")
    ap.add_argument("--min-repeats", type=int, default=5)
    ap.add_argument("--block-sizes", nargs="+", type=int, default=None,
                    help="also time the Triton kernels with each BLOCK_SIZE (needs CUDA or TRITON_INTERPRET=1)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for the CPU runs")
    ap.add_argument("--stat", choices=["median", "min"], default="median",
                    help="statistic over the repeats (min is more robust on a shared, loaded machine)")
    ap.add_argument("--no-unfused", action="store_true", help="skip the ref and unfused columns")
    args = ap.parse_args(argv)

    global STAT
    STAT = min if args.stat == "min" else statistics.median
    device = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but torch.cuda.is_available() is False")
    sizes = args.sizes or ([1e5, 1e6, 1e7, 1e8] if device.startswith("cuda") else [1e5, 1e6, 1e7])
    sizes = [int(s) for s in sizes]
    only = set(args.kernels) if args.kernels else None

    print(f"hardware: {hardware(device)}; timing statistic: {args.stat}")
    backend_name = K.resolve_backend(torch.empty(0, device=device), args.backend)
    print(f"dispatch backend: {backend_name}; BLOCK_SIZE: masked_accumulate={_acc_mod.BLOCK_SIZE}, "
          f"server_update={_server_mod.BLOCK_SIZE}, masked_adamw_step={_adamw_mod.BLOCK_SIZE}, "
          f"masked_sgd_step={_sgd_mod.BLOCK_SIZE}\n")
    print("| kernel | variant | n | bytes/el | dispatch ms | GB/s | clone GB/s | copy_ GB/s | % copy | ref ms "
          "| unfused ms | x unfused |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    sweep_rows = []
    for n in sizes:
        for case in make_cases(n, device, args.backend, only):
            nbytes = case.bytes_per_elem * n
            t = time_fn(case.dispatch, device, args.min_time, args.min_repeats)
            clone_bw, copyinto_bw = copy_bandwidth(nbytes, device, args.min_time, args.min_repeats)
            copy_bw = max(clone_bw, copyinto_bw)
            gbs = nbytes / t / 1e9
            if args.no_unfused:
                ref_ms = unf_ms = speed = "-"
            else:
                if backend_name == "torch":
                    ref_ms = "= dispatch"
                else:
                    ref_ms = f"{time_fn(case.ref, device, args.min_time, args.min_repeats) * 1e3:.3f}"
                tu = time_fn(case.unfused, device, args.min_time, args.min_repeats)
                unf_ms, speed = f"{tu * 1e3:.3f}", f"{tu / t:.2f}"
            print(f"| {case.kernel} | {case.variant} | {_fmt_n(n)} | {case.bytes_per_elem} | {t * 1e3:.3f} | "
                  f"{gbs:.1f} | {clone_bw:.1f} | {copyinto_bw:.1f} | {100 * gbs / copy_bw:.0f}% | {ref_ms} | "
                  f"{unf_ms} | {speed} |", flush=True)
            if args.block_sizes:
                for bs in args.block_sizes:
                    tb = time_fn(lambda c=case, b=bs: c.triton(b), device, args.min_time, args.min_repeats)
                    sweep_rows.append((case.kernel, case.variant, n, bs, tb, nbytes / tb / 1e9, copy_bw))
            del case
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    if sweep_rows:
        print("\nTriton BLOCK_SIZE sweep\n")
        print("| kernel | variant | n | BLOCK_SIZE | ms | GB/s | % copy |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for kernel, variant, n, bs, tb, gbs, cbw in sweep_rows:
            print(f"| {kernel} | {variant} | {_fmt_n(n)} | {bs} | {tb * 1e3:.3f} | {gbs:.1f} | "
                  f"{100 * gbs / cbw:.0f}% |")


if __name__ == "__main__":
    main()
