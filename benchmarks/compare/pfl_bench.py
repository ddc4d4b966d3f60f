"""pfl-research (``pfl`` 0.6, Apple) simulation of the workload: ``FederatedAveraging`` + ``SimulatedBackend``.

``python -m benchmarks.compare.pfl_bench [--workload text-bitfit] [--rounds 5] [--bf16]`` prints one JSON line
(see :mod:`benchmarks.compare.common`). Run it with the compare venv's Python (pfl is not in the main venv).
Multi-process, as pfl documents it for PyTorch (``torchrun``; pfl splits every cohort between the workers,
balanced by ``user_id_to_weight``, and all-reduces the aggregate with gloo/NCCL)::

    python -m torch.distributed.run --nproc_per_node 2 -m benchmarks.compare.pfl_bench --threads 1

Idiomatic setup, as in pfl's own PyTorch examples: a ``PyTorchModel`` wrapping the module (which defines
``loss`` and ``metrics``), ``FederatedDataset`` with a ``make_dataset_fn`` per user (each call shuffles the
user's examples) and a user sampler (any callable returning the next user id: hpcfed's cohorts in round order
by default, ``--cohorts native`` for pfl's ``minimize_reuse``, which cycles through the users in id order),
``NNTrainHyperParams(local_num_steps=4,
local_batch_size=32)``, AdamW local optimizer (head at 5× lr through a param group), ``SGD(lr=1)`` central
optimizer (FedAvg), ``WeightByDatapoints`` (weights = client sample counts, as hpcfed); ``--bf16`` uses pfl's
own ``amp_dtype``. pfl evaluates every sampled user on its own data before and after local training whenever
``iteration % evaluation_frequency == 0``, so always in central iteration 0 (≈ 270 s for 16 users here); the
benchmark's ``FederatedAveraging`` subclass turns that off (``do_evaluation=False`` in the central contexts:
the test accuracy is measured centrally, like every framework's); round 1 stays the warm-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.compare import common


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(p, cohorts=True)
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    import itertools
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))

    os.environ.setdefault("PFL_PYTORCH_DEVICE", "cpu")
    from pfl.aggregate.simulate import SimulatedBackend
    from pfl.aggregate.weighting import WeightByDatapoints
    from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
    from pfl.callback.base import TrainingProcessCallback
    from pfl.data.dataset import Dataset
    from pfl.data.federated_dataset import FederatedDataset
    from pfl.data.sampling import get_user_sampler
    from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
    from pfl.metrics import Weighted
    from pfl.model.pytorch import PyTorchModel

    cfg, ds = common.setup(a.workload, a.overrides,
                           threads=a.threads or common.default_threads(int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    c = cfg.fl.local

    class PflClassifier(common.SentenceClassifier):
        def loss(self, x, lengths, y, eval=False):
            self.eval() if eval else self.train()
            return F.cross_entropy(self(x, lengths).float(), y)

        @torch.no_grad()
        def metrics(self, x, lengths, y, eval=False):
            self.eval() if eval else self.train()
            logits = self(x, lengths).float()
            n = len(y)
            return {"loss": Weighted(float(F.cross_entropy(logits, y, reduction="sum")), n),
                    "accuracy": Weighted(float((logits.argmax(-1) == y).sum()), n)}

    module = common.build_model(cfg, cfg.peft.method)  # the same weights and PEFT as every framework
    module.__class__ = PflClassifier  # + pfl's loss/metrics interface

    head_ids = {id(p) for p in module.head.parameters()}

    def local_optimizer_create(params, lr, **kw):
        params = [p for p in params if p.requires_grad]
        return torch.optim.AdamW(
            [{"params": [p for p in params if id(p) not in head_ids], "lr": lr},
             {"params": [p for p in params if id(p) in head_ids], "lr": lr * (c.head_lr or c.lr) / c.lr}],
            lr=lr, betas=(c.beta1, c.beta2), eps=c.eps, weight_decay=c.weight_decay)

    model = PyTorchModel(module, local_optimizer_create=local_optimizer_create,
                         central_optimizer=torch.optim.SGD([p for p in module.parameters() if p.requires_grad],
                                                           lr=cfg.fl.server_opt.lr),
                         amp_dtype=torch.bfloat16 if a.bf16 else None)
    clients = {cid: ds.load_client(cid) for cid in range(ds.num_clients)}
    shuffle = np.random.default_rng(cfg.seed)

    def make_dataset_fn(uid):
        d = clients[uid]
        perm = torch.from_numpy(shuffle.permutation(len(d)))
        return Dataset(raw_data=[d.x[perm], d.lengths[perm], d.y[perm]], user_id=uid)

    if a.cohorts == "hpcfed":  # a user sampler is any callable returning the next user id
        sampler = itertools.chain.from_iterable(common.hpcfed_cohorts(cfg, ds.num_clients)).__next__
    else:
        sampler = get_user_sampler("minimize_reuse", list(range(ds.num_clients)))
    fed = FederatedDataset(make_dataset_fn, sampler,
                           user_id_to_weight={u: len(clients[u]) for u in clients})
    backend = SimulatedBackend(training_data=fed, val_data=None, postprocessors=[WeightByDatapoints()])
    round_s: list[float] = []
    acc_curve: list[list[float]] = []
    test = ds.load_test()
    start = [0.0]

    class Stamp(TrainingProcessCallback):
        def on_train_begin(self, *, model):
            start[0] = time.perf_counter()
            return super().on_train_begin(model=model)

        def after_central_iteration(self, aggregate_metrics, model, *, central_iteration):
            round_s.append(time.perf_counter() - start[0])
            r = central_iteration + 1
            if rank == 0:
                print(f"round {r}: {round_s[-1]:.2f} s", file=sys.stderr)
                if a.eval_every and r % a.eval_every == 0:  # the central model; not in the round times
                    acc_curve.append([r, common.accuracy(module, test)])
            start[0] = time.perf_counter()
            return False, type(aggregate_metrics)()

    class FedAvgNoUserEval(FederatedAveraging):
        """FedAvg without pfl's per-user evaluation (see the module docstring)."""

        def get_next_central_contexts(self, *args, **kw):
            contexts, model_, metrics = super().get_next_central_contexts(*args, **kw)
            if contexts is not None:
                contexts = tuple(dataclasses.replace(c, do_evaluation=False) for c in contexts)
            return contexts, model_, metrics

    alg_params = NNAlgorithmParams(central_num_iterations=a.rounds, evaluation_frequency=10**6,
                                   train_cohort_size=cfg.fl.cohort_size, val_cohort_size=0)
    train_params = NNTrainHyperParams(local_learning_rate=c.lr, local_num_epochs=None, local_num_steps=c.steps,
                                      local_batch_size=c.batch_size)
    eval_params = NNEvalHyperParams(local_batch_size=256)
    startup = time.perf_counter() - t0
    FedAvgNoUserEval().run(algorithm_params=alg_params, backend=backend, model=model,
                             model_train_params=train_params, model_eval_params=eval_params,
                             callbacks=[Stamp()], send_metrics_to_platform=False)
    if rank != 0:
        return 0
    acc = acc_curve[-1][1] if acc_curve and acc_curve[-1][0] == a.rounds else common.accuracy(module, test)
    label = "pfl-research" + (f"-{world}p" if world > 1 else "") + ("-bf16" if a.bf16 else "")
    common.report(label, a.workload, round_s, cfg.fl.cohort_size, acc, startup, acc_curve=acc_curve,
                  processes=world, cohorts=a.cohorts,
                  pfl_version=getattr(__import__("pfl"), "__version__", "0.6.0"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
