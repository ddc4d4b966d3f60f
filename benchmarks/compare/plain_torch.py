"""Plain PyTorch FedAvg loop: ``copy.deepcopy`` of the global model per client, AdamW, weighted average.

``python -m benchmarks.compare.plain_torch [--workload text-bitfit] [--rounds 5] [--bf16]`` prints one JSON
line (see :mod:`benchmarks.compare.common`). The cohorts are hpcfed's (``cohort_for_round(seed, r, ...)``).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import torch

from benchmarks.compare import common


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workload", default="text-bitfit", choices=["text-bitfit", "text-lora"])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast in local training")
    common.add_set_arg(p)
    a = p.parse_args(argv)
    from hpcfed.fl.sampling import client_seed, cohort_for_round

    t0 = time.perf_counter()
    cfg, ds = common.setup(a.workload, a.overrides)
    model = common.build_model(cfg, cfg.peft.method)
    test = ds.load_test()
    c = cfg.fl.local
    startup = time.perf_counter() - t0
    round_s = []
    for r in range(1, a.rounds + 1):
        t = time.perf_counter()
        updates = []
        for cid in cohort_for_round(cfg.seed, r, ds.num_clients, cfg.fl.cohort_size):
            data = ds.load_client(cid)
            local = copy.deepcopy(model)
            seed = client_seed(cfg.seed, r, cid)
            torch.manual_seed(seed)
            common.local_train(local, common.make_optimizer(local, cfg), data, c.steps, c.batch_size,
                               torch.Generator().manual_seed(seed), bf16=a.bf16)
            updates.append((common.trainable_state(local), float(len(data))))
        common.fedavg_(model, updates)
        round_s.append(time.perf_counter() - t)
        print(f"round {r}: {round_s[-1]:.2f} s", file=sys.stderr)
    acc = common.accuracy(model, test)
    common.report("plain-pytorch" + ("-bf16" if a.bf16 else ""), a.workload, round_s, cfg.fl.cohort_size, acc,
                  startup)
    return 0


if __name__ == "__main__":
    sys.exit(main())
