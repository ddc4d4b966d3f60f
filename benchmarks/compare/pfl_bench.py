"""pfl-research (``pfl`` 0.6, Apple) simulation of the workload: ``FederatedAveraging`` + ``SimulatedBackend``.

``python -m benchmarks.compare.pfl_bench [--workload text-bitfit] [--rounds 5] [--bf16]`` prints one JSON line
(see :mod:`benchmarks.compare.common`). Run it with the compare venv's Python (pfl is not in the main venv).

Idiomatic setup, as in pfl's own PyTorch examples: a ``PyTorchModel`` wrapping the module (which defines
``loss`` and ``metrics``), ``FederatedDataset`` with a ``make_dataset_fn`` per user (each call shuffles the
user's examples) and pfl's ``minimize_reuse`` user sampler, ``NNTrainHyperParams(local_num_steps=4,
local_batch_size=32)``, AdamW local optimizer (head at 5× lr through a param group), ``SGD(lr=1)`` central
optimizer (FedAvg), ``WeightByDatapoints`` (weights = client sample counts, as hpcfed); ``--bf16`` uses pfl's
own ``amp_dtype``. pfl evaluates every sampled user before and after local training in central iteration 0
(``iteration % evaluation_frequency == 0``); that round is the warm-up and is not in the median.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.compare import common


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workload", default="text-bitfit", choices=["text-bitfit", "text-lora"])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--bf16", action="store_true", help="pfl's amp_dtype=torch.bfloat16")
    common.add_set_arg(p)
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    import os

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

    cfg, ds = common.setup(a.workload, a.overrides)
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

    sampler = get_user_sampler("minimize_reuse", list(range(ds.num_clients)))
    fed = FederatedDataset(make_dataset_fn, sampler,
                           user_id_to_weight={u: len(clients[u]) for u in clients})
    backend = SimulatedBackend(training_data=fed, val_data=None, postprocessors=[WeightByDatapoints()])
    stamps: list[float] = []

    class Stamp(TrainingProcessCallback):
        def on_train_begin(self, *, model):
            stamps.append(time.perf_counter())
            return super().on_train_begin(model=model)

        def after_central_iteration(self, aggregate_metrics, model, *, central_iteration):
            stamps.append(time.perf_counter())
            print(f"round {central_iteration + 1}: {stamps[-1] - stamps[-2]:.2f} s", file=sys.stderr)
            return False, type(aggregate_metrics)()

    alg_params = NNAlgorithmParams(central_num_iterations=a.rounds, evaluation_frequency=10**6,
                                   train_cohort_size=cfg.fl.cohort_size, val_cohort_size=0)
    train_params = NNTrainHyperParams(local_learning_rate=c.lr, local_num_epochs=None, local_num_steps=c.steps,
                                      local_batch_size=c.batch_size)
    eval_params = NNEvalHyperParams(local_batch_size=256)
    startup = time.perf_counter() - t0
    FederatedAveraging().run(algorithm_params=alg_params, backend=backend, model=model,
                             model_train_params=train_params, model_eval_params=eval_params,
                             callbacks=[Stamp()], send_metrics_to_platform=False)
    round_s = [b - a_ for a_, b in zip(stamps, stamps[1:])]
    acc = common.accuracy(module, ds.load_test())
    common.report("pfl-research" + ("-bf16" if a.bf16 else ""), a.workload, round_s, cfg.fl.cohort_size, acc,
                  startup, pfl_version=__import__("pfl").__version__ if hasattr(__import__("pfl"), "__version__")
                  else "0.6.0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
