"""pfl-research (``pfl`` 0.6, Apple) simulation of the workload: ``FederatedAveraging`` + ``SimulatedBackend``.

``python -m benchmarks.compare.pfl_bench [--workload text-bitfit] [--rounds 5] [--bf16]`` prints one JSON line
(see :mod:`benchmarks.compare.common`). Run it with the compare venv's Python (pfl is not in the main venv).
Multi-process, as pfl documents it for PyTorch (``torchrun``; pfl splits every cohort between the workers,
balanced by ``user_id_to_weight``, and all-reduces the aggregate with gloo/NCCL)::

    python -m torch.distributed.run --nproc_per_node 2 -m benchmarks.compare.pfl_bench --threads 1

Idiomatic setup, as in pfl's own PyTorch examples: a ``PyTorchModel`` wrapping the module (which defines
``loss`` and ``metrics``), ``FederatedDataset`` with a ``make_dataset_fn`` per user (its local batches: see
"Local steps" below) and a user sampler (any callable returning the next user id: hpcfed's cohorts in round
order by default, ``--cohorts native`` for pfl's ``minimize_reuse``, which cycles through the users in id
order), ``NNTrainHyperParams(local_num_steps=4, local_batch_size=32)``, AdamW local optimizer (head at 5× lr through a param group), ``SGD(lr=1)`` central
optimizer (FedAvg), ``WeightByDatapoints`` (weights = client sample counts, as hpcfed); ``--bf16`` uses pfl's
own ``amp_dtype``. pfl evaluates every sampled user on its own data before and after local training whenever
``iteration % evaluation_frequency == 0``, so always in central iteration 0 (≈ 270 s for 16 users here); the
benchmark's ``FederatedAveraging`` subclass turns that off (``do_evaluation=False`` in the central contexts:
the test accuracy is measured centrally, like every framework's); round 1 stays the warm-up.

Local steps. pfl 0.6's ``PyTorchModel.do_multiple_epochs_of`` makes ``local_num_epochs`` (None: 1) passes over
``user_dataset.iter(local_batch_size)`` and stops at ``local_num_steps``: a user with n < steps × batch
examples runs only ceil(n / batch) steps (:func:`pfl_native_steps`; a user with 40 examples: 2 steps of 32 and
8, not 4 of 32), while every other framework runs exactly ``steps``. By default (``--local-batches hpcfed``)
each user's dataset is a ``pfl.data.dataset.Dataset`` whose ``iter`` yields the user's round batches of
hpcfed's own draw (:func:`benchmarks.compare.common.client_batches`, seeded by
``client_seed(seed, round, user)``, the torch seed set to it for dropout as the other frameworks do), so pfl
runs the same steps on the same examples; ``--local-batches native`` keeps pfl's own one shuffled pass. The
local steps pfl actually ran are counted in the model's ``loss`` (one call per step), reported per user as a
``Summed`` metric, summed over the cohort and the workers by pfl's own metric reduction, and recorded per
round (``local_steps_per_round``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from importlib import metadata

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.compare import common


def pfl_native_steps(n: int, batch_size: int, local_num_steps: int, local_num_epochs: int | None = None) -> int:
    """Local steps pfl 0.6 runs on a user of ``n`` examples with a plain ``Dataset``: ``local_num_epochs``
    (None: 1) passes of ceil(n / batch_size) batches, each pass cut at ``local_num_steps``.

    Raises:
        ValueError: ``n`` or ``batch_size`` below 1.
    """
    if n < 1 or batch_size < 1:
        raise ValueError(f"n={n}, batch_size={batch_size}: each must be >= 1")
    per_pass = min(math.ceil(n / batch_size), local_num_steps)
    return per_pass * (1 if local_num_epochs is None else local_num_epochs)


def batches_dataset_class():
    """A ``pfl.data.dataset.Dataset`` subclass whose ``iter(batch_size)`` yields fixed index batches.

    ``BatchesDataset(raw_data, user_id, batches_fn, batch_size)``: ``iter(batch_size)`` yields
    ``[t[idx] for t in raw_data]`` for each ``idx`` of ``batches_fn()`` (called at iteration time); any other
    batch size (evaluation) iterates as pfl's ``Dataset`` does. ``len`` is the user's example count (pfl's
    ``WeightByDatapoints`` weight). Imports pfl.
    """
    from pfl.data.dataset import Dataset

    class BatchesDataset(Dataset):
        def __init__(self, raw_data, user_id, batches_fn, batch_size: int):
            super().__init__(raw_data=raw_data, user_id=user_id)
            self._batches_fn, self._train_batch_size = batches_fn, batch_size

        def iter(self, batch_size):  # noqa: A003 - pfl's name
            if batch_size != self._train_batch_size:
                yield from super().iter(batch_size)
                return
            for idx in self._batches_fn():
                yield [t[idx] for t in self.raw_data]

    return BatchesDataset


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(p, cohorts=True)
    p.add_argument("--local-batches", choices=["hpcfed", "native"], default="hpcfed",
                   help="hpcfed: every user runs exactly fl.local.steps steps on hpcfed's batches (default); "
                        "native: pfl's one shuffled pass, cut at local_num_steps (fewer steps on small users)")
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
    from pfl.metrics import Metrics, Summed, Weighted
    from pfl.model.pytorch import PyTorchModel

    from hpcfed.fl.sampling import client_seed

    cfg, ds = common.setup(a.workload, a.overrides,
                           threads=a.threads or common.default_threads(int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    c = cfg.fl.local

    work = {"steps": 0, "tokens": 0}  # this process's local training, counted where pfl calls the loss

    class PflClassifier(common.SentenceClassifier):
        def loss(self, x, lengths, y, eval=False):
            self.eval() if eval else self.train()
            if not eval:  # pfl's train step calls loss once per local step
                work["steps"] += 1
                work["tokens"] += int(lengths.sum())
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
    current_round = [1]  # set by FedAvgCounted.get_next_central_contexts: central iteration + 1
    BatchesDataset = batches_dataset_class()

    def make_dataset_fn(uid):
        d = clients[uid]
        if a.local_batches == "native":
            perm = torch.from_numpy(shuffle.permutation(len(d)))
            return Dataset(raw_data=[d.x[perm], d.lengths[perm], d.y[perm]], user_id=uid)

        def batches():  # at iteration time: the round this user is trained in
            seed = client_seed(cfg.seed, current_round[0], uid)
            torch.manual_seed(seed)  # dropout, as in the other frameworks
            return common.client_batches(len(d), c.batch_size, c.steps, torch.Generator().manual_seed(seed))

        return BatchesDataset([d.x, d.lengths, d.y], uid, batches, c.batch_size)

    if a.cohorts == "hpcfed":  # a user sampler is any callable returning the next user id
        sampler = itertools.chain.from_iterable(common.hpcfed_cohorts(cfg, ds.num_clients)).__next__
    else:
        sampler = get_user_sampler("minimize_reuse", list(range(ds.num_clients)))
    fed = FederatedDataset(make_dataset_fn, sampler,
                           user_id_to_weight={u: len(clients[u]) for u in clients})
    backend = SimulatedBackend(training_data=fed, val_data=None, postprocessors=[WeightByDatapoints()])
    round_s: list[float] = []
    steps_per_round: list[int] = []
    tokens_per_round: list[int] = []
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
            # summed over the round's users and pfl's workers (pfl reduces the metrics)
            steps_per_round.append(int(aggregate_metrics[STEPS].overall_value))
            tokens_per_round.append(int(aggregate_metrics[TOKENS].overall_value))
            if rank == 0:
                print(f"round {r}: {round_s[-1]:.2f} s", file=sys.stderr)
                if a.eval_every and r % a.eval_every == 0:  # the central model; not in the round times
                    acc_curve.append([r, common.accuracy(module, test)])
            start[0] = time.perf_counter()
            return False, type(aggregate_metrics)()

    STEPS, TOKENS = "local steps", "local tokens"

    class FedAvgCounted(FederatedAveraging):
        """FedAvg without pfl's per-user evaluation (see the module docstring), reporting each user's local
        steps and tokens as ``Summed`` metrics."""

        def get_next_central_contexts(self, model_, iteration, *args, **kw):
            current_round[0] = iteration + 1
            contexts, model_, metrics = super().get_next_central_contexts(model_, iteration, *args, **kw)
            if contexts is not None:
                contexts = tuple(dataclasses.replace(c, do_evaluation=False) for c in contexts)
            return contexts, model_, metrics

        def train_one_user(self, initial_model_state, model_, user_dataset, central_context):
            before = dict(work)
            stats, metrics = super().train_one_user(initial_model_state, model_, user_dataset, central_context)
            metrics |= Metrics([(STEPS, Summed(work["steps"] - before["steps"])),
                                (TOKENS, Summed(work["tokens"] - before["tokens"]))])
            return stats, metrics

    alg_params = NNAlgorithmParams(central_num_iterations=a.rounds, evaluation_frequency=10**6,
                                   train_cohort_size=cfg.fl.cohort_size, val_cohort_size=0)
    train_params = NNTrainHyperParams(local_learning_rate=c.lr, local_num_epochs=None, local_num_steps=c.steps,
                                      local_batch_size=c.batch_size)
    eval_params = NNEvalHyperParams(local_batch_size=256)
    startup = time.perf_counter() - t0
    FedAvgCounted().run(algorithm_params=alg_params, backend=backend, model=model,
                             model_train_params=train_params, model_eval_params=eval_params,
                             callbacks=[Stamp()], send_metrics_to_platform=False)
    if rank != 0:
        return 0
    acc = acc_curve[-1][1] if acc_curve and acc_curve[-1][0] == a.rounds else common.accuracy(module, test)
    label = "pfl-research" + (f"-{world}p" if world > 1 else "") + ("-bf16" if a.bf16 else "")
    common.report(label, a.workload, round_s, cfg.fl.cohort_size, acc, startup, bf16=a.bf16, processes=world,
                  local_steps=steps_per_round, tokens=tokens_per_round, acc_curve=acc_curve, cohorts=a.cohorts,
                  local_batches=a.local_batches, pfl_version=metadata.version("pfl"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
