"""Baselines run by the same runner: centralized training on pooled data, and local-only training.

* **Centralized** (``fl.mode=centralized``): all clients' data pooled into one virtual client that trains
  ``cohort_size × local steps`` steps per round — the same number of optimizer steps, batch size and optimizer
  as the federated run — so curves are comparable round by round. It goes through the ordinary round loop (a
  cohort of one, FedAvg of one client = that client), so checkpoints, metrics and determinism are shared.
* **Local only** (``fl.mode=local_only``): every client trains alone from the initial model with the budget
  it would spend in FL (``rounds × cohort_size × local steps / num_clients`` steps, at least one). A seeded
  ``holdout_fraction`` of its examples is kept out of training as its own held-out split. Reported: the mean
  (and spread) over clients of the accuracy on the global test split and on the client's held-out split.
  (FedTune, Chen et al. 2022, and Chen et al., ICLR 2023, compare FL against this.)
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from hpcfed.data import ClientData
from hpcfed.dist import place_clients
from hpcfed.fl.client import LocalTrainer, evaluate
from hpcfed.fl.sampling import client_seed
from hpcfed.rng import TrainStream, generator



class PooledDataset:
    """A view of a sharded data set as ONE client holding every example (client id 0)."""

    def __init__(self, dataset):
        self.inner = dataset
        self.num_clients = 1
        self.num_classes = dataset.num_classes
        self.class_names = dataset.class_names

    def client_num_samples(self, cid: int) -> int:
        return sum(self.inner.client_num_samples(c) for c in range(self.inner.num_clients))

    def load_client(self, cid: int) -> ClientData:
        parts = [self.inner.load_client(c) for c in range(self.inner.num_clients)]
        lengths = None if parts[0].lengths is None else torch.cat([p.lengths for p in parts])
        return ClientData(x=torch.cat([p.x for p in parts]), y=torch.cat([p.y for p in parts]), lengths=lengths)

    def close(self) -> None:
        self.inner.close()


def centralized_config(cfg):
    """The ``fl`` section for the centralized baseline: a cohort of one doing the cohort's steps."""
    local = cfg.fl.local
    if local.steps is not None:
        local = replace(local, steps=local.steps * cfg.fl.cohort_size)
    else:
        local = replace(local, epochs=local.epochs)  # an epoch over the pooled data = every client's epoch
    return replace(cfg.fl, cohort_size=1, local=local)


def split_holdout(data: ClientData, fraction: float, seed: int, cid: int) -> tuple[ClientData, ClientData]:
    """Seeded (train, held-out) split of one client's examples; the held-out part has ≥ 1 example when
    ``fraction > 0`` and the client has ≥ 2 examples."""
    n = len(data)
    k = min(n - 1, max(1, round(fraction * n))) if fraction > 0 and n > 1 else 0
    perm = torch.from_numpy(generator(seed, TrainStream.HOLDOUT, cid).permutation(n))
    hold, train = perm[:k], perm[k:]

    def take(idx):
        return ClientData(x=data.x[idx], y=data.y[idx], lengths=None if data.lengths is None else data.lengths[idx])

    return take(train), take(hold)


def run_local_only(cfg, model, flat, dataset, test: ClientData, comm, device) -> dict:
    """Train every client alone (its share of clients on this rank) and report accuracies.

    Returns:
        dict with ``test_acc`` / ``local_test_acc`` (means over clients), their min/max, ``local_steps``
        per client, and ``per_client`` rows ``[client, n_train, test_acc, local_test_acc]`` (identical on
        every rank).
    """
    fl = cfg.fl
    n_clients = dataset.num_clients
    per_round = fl.local.steps if fl.local.steps is not None else None
    if per_round is not None:
        budget = max(1, math.ceil(fl.rounds * fl.cohort_size * per_round / n_clients))
        local = replace(fl.local, steps=budget)
    else:
        local = replace(fl.local, epochs=max(1, math.ceil(fl.rounds * fl.cohort_size * fl.local.epochs
                                                           / n_clients)))
    trainer = LocalTrainer(model, flat, local, device, head_only=cfg.peft.method == "head")
    theta0 = flat.data.detach().clone()
    work = [dataset.client_num_samples(c) for c in range(n_clients)]
    mine = place_clients(list(range(n_clients)), comm.world_size, work)[comm.rank]
    rows = torch.zeros(n_clients, 4, dtype=torch.float64, device=device)
    for cid in mine:
        train, hold = split_holdout(dataset.load_client(cid), fl.local_only_holdout, cfg.seed, cid)
        flat.data.copy_(theta0)
        trainer.train(train, client_seed(cfg.seed, 0, cid))
        t = evaluate(model, test, device, batch_size=cfg.eval.batch_size, bf16=local.bf16)
        h = evaluate(model, hold, device, batch_size=cfg.eval.batch_size, bf16=local.bf16) if len(hold) else None
        rows[cid] = torch.tensor([cid, len(train), float(t[1] / t[2]),
                                  float(h[1] / h[2]) if h is not None else float("nan")], dtype=torch.float64)
    comm.all_reduce_sum(rows, tag="eval")
    flat.data.copy_(theta0)
    acc, local_acc = rows[:, 2], rows[:, 3]
    finite = local_acc[torch.isfinite(local_acc)]
    return {
        "round": fl.rounds, "mode": "local_only", "local_steps": local.steps,
        "test_acc": float(acc.mean()), "test_acc_min": float(acc.min()), "test_acc_max": float(acc.max()),
        "local_test_acc": float(finite.mean()) if len(finite) else None,
        "per_client": rows.tolist(),
    }
