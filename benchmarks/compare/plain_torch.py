"""Plain PyTorch FedAvg loop: ``copy.deepcopy`` of the global model per client, AdamW, weighted average.

``python -m benchmarks.compare.plain_torch [--workload text-bitfit] [--rounds 5] [--bf16] [--threads N]``
prints one JSON line (see :mod:`benchmarks.compare.common`). The cohorts are hpcfed's
(``cohort_for_round(seed, r, ...)``). One process: a plain loop has no multi-process mode.
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
    common.add_common_args(p)
    a = p.parse_args(argv)
    from hpcfed.fl.sampling import client_seed

    t0 = time.perf_counter()
    cfg, ds = common.setup(a.workload, a.overrides, threads=a.threads)
    model = common.build_model(cfg, cfg.peft.method)
    test = ds.load_test()
    c = cfg.fl.local
    startup = time.perf_counter() - t0
    round_s, acc_curve, steps, tokens = [], [], [], []
    cohorts = common.hpcfed_cohorts(cfg, ds.num_clients)
    for r in range(1, a.rounds + 1):
        t = time.perf_counter()
        updates = []
        steps.append(0)
        tokens.append(0)
        for cid in next(cohorts):
            data = ds.load_client(cid)
            local = copy.deepcopy(model)
            seed = client_seed(cfg.seed, r, cid)
            torch.manual_seed(seed)
            work = common.local_train(local, common.make_optimizer(local, cfg), data, c.steps, c.batch_size,
                                      torch.Generator().manual_seed(seed), bf16=a.bf16)
            steps[-1] += work.steps
            tokens[-1] += work.tokens
            updates.append((common.trainable_state(local), float(len(data))))
        common.fedavg_(model, updates)
        round_s.append(time.perf_counter() - t)
        print(f"round {r}: {round_s[-1]:.2f} s", file=sys.stderr)
        if a.eval_every and r % a.eval_every == 0:
            acc_curve.append([r, common.accuracy(model, test)])
    acc = acc_curve[-1][1] if acc_curve and acc_curve[-1][0] == a.rounds else common.accuracy(model, test)
    common.report("plain-pytorch" + ("-bf16" if a.bf16 else ""), a.workload, round_s, cfg.fl.cohort_size, acc,
                  startup, bf16=a.bf16, processes=1, local_steps=steps, tokens=tokens, acc_curve=acc_curve)
    return 0


if __name__ == "__main__":
    sys.exit(main())
