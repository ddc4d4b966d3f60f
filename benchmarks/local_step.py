"""What each exact compute reduction buys: ms per local step of ``LocalTrainer`` on real SST-2 clients.

    python -m benchmarks.local_step [--threads 1] [--method bias] [--clients 8] [--reps 3] [--compile]
        [--json out.jsonl] [--profile OUT]

The text workload's model (MiniLM-L6 + mean pooling + head, BitFit or LoRA), 4 local AdamW steps of batch 32
on the first ``--clients`` clients of the 100-client Dirichlet(0.5) split with ≥ 32 examples, timed for each
setting below (best of ``--reps`` repetitions; every setting trains the same clients from the same start):

* padded: one micro-batch per step, padded to its longest sequence (``length_buckets=1, packing=false``);
* buckets: 4 length-sorted micro-batches, each padded to its own longest (``length_buckets=4``);
* packed: padding-free rows with block-diagonal attention (``packing=true``, the default);

each in fp32 and with bf16 autocast (``fl.local.bf16``), and optionally packed + bf16 + ``torch.compile``.
``--profile OUT`` also runs one more repetition of "packed bf16" under ``torch.profiler`` and writes where the
local step's time goes: ``OUT.txt`` (the profiler's table of the 40 ops with the most self CPU time) and
``OUT.json`` (self CPU time summed by category: dropout RNG, attention, GEMM, casts/copies, optimizer, element-wise,
other; :func:`profile_categories`).
Prints a markdown table (ms per step, real and computed tokens per step, speed-up over padded fp32); every
``--json`` row carries the hardware / versions record (:func:`benchmarks.throughput.hardware_record`). Needs
../shared/data (or HPCFED_DATA_ROOT) and the MiniLM package.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

SETTINGS = [  # (label, config words)
    ("padded fp32", ["fl.local.packing=false", "fl.local.length_buckets=1", "fl.local.bf16=false"]),
    ("buckets fp32", ["fl.local.packing=false", "fl.local.length_buckets=4", "fl.local.bf16=false"]),
    ("packed fp32", ["fl.local.packing=true", "fl.local.bf16=false"]),
    ("padded bf16", ["fl.local.packing=false", "fl.local.length_buckets=1", "fl.local.bf16=true"]),
    ("buckets bf16", ["fl.local.packing=false", "fl.local.length_buckets=4", "fl.local.bf16=true"]),
    ("packed bf16", ["fl.local.packing=true", "fl.local.bf16=true"]),
]


CATEGORIES = (  # (category, substrings of aten op names); first match wins, in this order
    ("dropout RNG", ("aten::bernoulli", "aten::native_dropout", "aten::dropout")),
    ("attention", ("scaled_dot_product", "_flash_attention", "_efficient_attention", "softmax")),
    ("gemm", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear",
              "mkldnn", "onednn")),
    ("casts/copies", ("aten::copy_", "aten::_to_copy", "aten::to", "aten::clone", "aten::contiguous",
                      "aten::cat", "aten::index", "aten::gather", "aten::scatter", "aten::embedding")),
    ("optimizer", ("_foreach", "aten::addcdiv", "aten::addcmul", "aten::lerp", "aten::sqrt")),
    ("element-wise", ("aten::add", "aten::mul", "aten::sub", "aten::div", "aten::gelu", "aten::tanh",
                      "aten::layer_norm", "aten::native_layer_norm",
                      "aten::where", "aten::masked", "aten::sum", "aten::mean", "aten::fill_", "aten::zero_",
                      "aten::neg", "aten::exp", "aten::pow", "aten::rsqrt", "aten::threshold")),
)


def profile_categories(events) -> dict:
    """Self CPU time of a profile summed by op category.

    Args:
        events: ``prof.key_averages()`` of a ``torch.profiler.profile`` run (CPU activity).

    Returns:
        ``{"total_ms": float, "categories": {name: {"ms": float, "share": float}}, "top": [...], "ops": [...]}``:
        self CPU milliseconds per category of :data:`CATEGORIES` (plus "other"; shares of the total sum to 1),
        the ten ops with the most self time, and every op (name, ms, calls; to re-bin later). Self times do not
        overlap, so they add up.
    """
    cats: dict[str, float] = {name: 0.0 for name, _ in CATEGORIES}
    cats["other"] = 0.0
    rows = []
    for e in events:
        ms = e.self_cpu_time_total / 1e3
        rows.append((e.key, ms, e.count))
        for name, keys in CATEGORIES:
            if any(k in e.key for k in keys):
                cats[name] += ms
                break
        else:
            cats["other"] += ms
    total = sum(cats.values())
    rows.sort(key=lambda r: -r[1])
    return {"total_ms": total,
            "categories": {k: {"ms": v, "share": v / total if total else 0.0} for k, v in cats.items()},
            "top": [{"op": k, "ms": ms, "calls": n} for k, ms, n in rows[:10]],
            "ops": [{"op": k, "ms": ms, "calls": n} for k, ms, n in rows]}


def write_profile(out: str, run, title: str) -> dict:
    """Run ``run()`` once under ``torch.profiler`` (CPU), write ``out.txt`` (``title`` and the 40 ops with the
    most self CPU time) and return :func:`profile_categories` of it (the caller adds context and writes JSON)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    ev = prof.key_averages()
    with open(f"{out}.txt", "w", encoding="utf-8") as fh:
        fh.write(title + "\n" + ev.table(sort_by="self_cpu_time_total", row_limit=40))
    return profile_categories(ev)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--method", default="bias", choices=["bias", "lora"])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also packed + bf16 + torch.compile")
    ap.add_argument("--json", help="append one JSON line per setting to this file")
    ap.add_argument("--profile", metavar="OUT", help="profile packed bf16: write OUT.txt and OUT.json")
    a = ap.parse_args(argv)

    from benchmarks.throughput import hardware_record, token_counts
    from benchmarks.workloads import load_workload_config, prepare_workload_data
    from hpcfed.fl.client import LocalTrainer, local_batches
    from hpcfed.compose import quiet_libraries
    from hpcfed.models import build_model
    from hpcfed.peft import apply_peft

    quiet_libraries()
    torch.set_num_threads(a.threads)
    workload = "text-bitfit" if a.method == "bias" else "text-lora"
    base = load_workload_config(workload)
    ds = prepare_workload_data(base)
    cids = [c for c in range(ds.num_clients) if ds.client_num_samples(c) >= 32][:a.clients]
    datas = [ds.load_client(c) for c in cids]
    settings = SETTINGS + ([("packed bf16 compile", ["fl.local.packing=true", "fl.local.bf16=true",
                                                    "fl.local.compile=true"])] if a.compile else [])
    rows = []
    for label, words in settings:
        cfg = load_workload_config(workload, words)
        c = cfg.fl.local
        torch.manual_seed(0)
        model = build_model(cfg.model, 2)
        flat = apply_peft(model, cfg.peft)
        theta0 = flat.data.detach().clone()
        trainer = LocalTrainer(model, flat, c, torch.device("cpu"))
        real = computed = 0
        for i, d in enumerate(datas):
            batches = local_batches(len(d), c.batch_size, epochs=c.epochs, steps=c.steps,
                                    generator=torch.Generator().manual_seed(i))
            _, t, p = token_counts(d.lengths, batches, c.length_buckets, packing=trainer.pack)
            real, computed = real + t, computed + p
        steps = len(datas) * c.steps
        times = []
        for rep in range(a.reps + 1):  # repetition 0 warms up (and compiles)
            t0 = time.perf_counter()
            for i, d in enumerate(datas):
                flat.data.copy_(theta0)
                trainer.train(d, i)
            if rep:
                times.append(time.perf_counter() - t0)
        ms = 1e3 * min(times) / steps
        if a.profile and label == "packed bf16":
            def one_repetition():
                for i, d in enumerate(datas):
                    flat.data.copy_(theta0)
                    trainer.train(d, i)

            summary = write_profile(a.profile, one_repetition,
                                    f"{workload}, {a.threads} thread(s), packed bf16, {len(datas)} clients x "
                                    f"{c.steps} steps (one repetition under the profiler)")
            summary.update(workload=workload, threads=a.threads, steps=steps, setting=label,
                           untraced_ms_per_step=ms, hardware=hardware_record("cpu", cores_used=a.threads))
            with open(f"{a.profile}.json", "w", encoding="utf-8") as fh:
                json.dump(summary, fh, indent=1)
            print("profile (self CPU ms by category): " + ", ".join(
                f"{k} {v['share']:.0%}" for k, v in summary["categories"].items()), flush=True)
        rows.append({"setting": label, "method": a.method, "threads": a.threads, "ms_per_step": ms,
                     "real_tokens_per_step": real / steps, "computed_tokens_per_step": computed / steps})
        print(f"{label}: {ms:.1f} ms/step", flush=True)
    ref = rows[0]["ms_per_step"]
    print(f"\n{workload}, {a.threads} thread(s), {len(datas)} clients × 4 steps of 32, best of {a.reps}\n")
    print("| setting | ms per step | real / computed tokens per step | speed-up over padded fp32 |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['setting']} | {r['ms_per_step']:.1f} | {r['real_tokens_per_step']:.0f} / "
              f"{r['computed_tokens_per_step']:.0f} | {ref / r['ms_per_step']:.2f}× |")
    if a.json:
        hardware = hardware_record("cpu", cores_used=a.threads)
        with open(a.json, "a", encoding="utf-8") as fh:
            for r in rows:
                r["hardware"] = hardware
                fh.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
