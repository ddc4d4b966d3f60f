"""Sequential vs client-parallel local training on real SST-2 clients (MiniLM-L6, 4 local steps of 32).

    python -m benchmarks.client_parallel [--threads 2] [--group 8] [--method bias] [--attn eager|sdpa]
        [--buckets 4] [--fp32] [--reps 3]

Prints, per repetition, ms per client step of ``LocalTrainer`` (one client at a time, bf16 autocast) and of
``GroupTrainer`` (G clients at once, bf16 frozen backbone), and their ratio. Needs ../shared/data (or
HPCFED_DATA_ROOT) and the MiniLM package; prepares the 100-client Dirichlet(0.5) shards on first use.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--method", default="bias")
    ap.add_argument("--attn", default="eager", choices=["eager", "sdpa"])
    ap.add_argument("--buckets", type=int, default=4)
    ap.add_argument("--fp32", action="store_true")
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()

    from hpcfed.config import load_config
    from hpcfed.data import ShardedDataset, ensure_prepared
    from hpcfed.fl.client import LocalTrainer
    from hpcfed.fl.parallel import GroupTrainer
    from hpcfed.models import build_model
    from hpcfed.peft import apply_peft

    torch.set_num_threads(a.threads)
    cfg = load_config(["data.num_clients=100", "data.alpha=0.5", f"peft.method={a.method}", "fl.local.steps=4",
                       "fl.local.batch_size=32", f"fl.local.bf16={not a.fp32}",
                       f"fl.local.length_buckets={a.buckets}"])
    ds = ShardedDataset(ensure_prepared(cfg.data, cfg.data.tokenizer), expect_name="sst2")
    model = build_model(cfg.model, 2)
    flat = apply_peft(model, cfg.peft)
    model.backbone.config._attn_implementation = a.attn
    cids = [c for c in range(ds.num_clients) if ds.client_num_samples(c) >= 32][:a.group]
    datas = [ds.load_client(c) for c in cids]
    theta0 = flat.data.detach().clone()
    cpu = torch.device("cpu")
    seq = LocalTrainer(model, flat, cfg.fl.local, cpu)
    grp = GroupTrainer(model, flat, cfg.fl.local, cpu)
    steps = len(datas) * cfg.fl.local.steps
    for _ in range(a.reps):
        t = time.perf_counter()
        for i, d in enumerate(datas):
            flat.data.copy_(theta0)
            seq.train(d, i)
        ts = time.perf_counter() - t
        t = time.perf_counter()
        grp.train_group(datas, list(range(len(datas))), theta0, [None] * len(datas))
        tg = time.perf_counter() - t
        print(f"{a.method} threads={a.threads} G={len(datas)} attn={a.attn} buckets={a.buckets}: "
              f"sequential {ts / steps * 1e3:.0f} ms/step, group {tg / steps * 1e3:.0f} ms/step, x{ts / tg:.2f}",
              flush=True)


if __name__ == "__main__":
    main()
