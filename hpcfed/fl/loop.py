"""The round loop: sample → place → train my clients → accumulate → ONE all-reduce → server step → evaluate.

It talks to other ranks only through the :class:`~hpcfed.dist.Comm` it is handed, and to the outside through
callbacks (metrics file, progress bar, checkpoints). ``comm.rank`` is used only to pick this rank's share of
the cohort and of the test set.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Optional, Protocol

import torch
from torch import nn

from hpcfed.config import Config
from hpcfed.data import ClientData, ShardedDataset
from hpcfed.dist import Comm, place_clients
from hpcfed.fl.aggregate import Aggregator
from hpcfed.fl.client import LocalTrainer, evaluate
from hpcfed.fl.fedavg import FedAvg
from hpcfed.fl.fedprox import FedProx
from hpcfed.fl.sampling import client_seed, cohort_for_round
from hpcfed.fl.server import ServerOptimizer
from hpcfed.peft import FlatParams

ALGORITHMS = {"fedavg": FedAvg, "fedprox": FedProx}

BYTES_PER_ELEMENT = 4  # the flat buffer is fp32


class Callback(Protocol):
    def on_round_end(self, loop: "FederatedLoop", metrics: dict) -> None: ...


@dataclass
class RoundState:
    """What a checkpoint needs besides the config: the round reached and the metrics so far."""

    round: int = 0
    history: list[dict] = field(default_factory=list)


class ClientCache:
    """Loaded clients of this rank, least recently used evicted past ``max_clients``."""

    def __init__(self, dataset: ShardedDataset, max_clients: int = 256):
        self.dataset, self.max_clients = dataset, max_clients
        self._cache: OrderedDict[int, ClientData] = OrderedDict()

    def get(self, cid: int) -> ClientData:
        if cid in self._cache:
            self._cache.move_to_end(cid)
            return self._cache[cid]
        data = self.dataset.load_client(cid)
        self._cache[cid] = data
        if len(self._cache) > self.max_clients:
            self._cache.popitem(last=False)
        return data


class FederatedLoop:
    """Runs the rounds of one federated training job on this rank.

    Args:
        cfg: the run config.
        model: the classifier; its trainable parameters are views of ``flat``.
        flat: the flat buffer of trainable parameters (its current values are the initial global model).
        dataset: the client shards (only this rank's clients are ever opened).
        test_data: the global test split, or None to skip evaluation.
        comm: the communicator.
        device: compute device.
        callbacks: called at the end of each round with the round's metrics.
    """

    def __init__(self, cfg: Config, model: nn.Module, flat: FlatParams, dataset: ShardedDataset,
                 test_data: Optional[ClientData], comm: Comm, device: torch.device,
                 callbacks: Optional[list[Callback]] = None, kernel_backend: Optional[str] = None):
        self.cfg, self.model, self.flat, self.dataset = cfg, model, flat, dataset
        self.test_data, self.comm, self.device = test_data, comm, device
        self.callbacks = callbacks or []
        self.algorithm = ALGORITHMS[cfg.fl.algorithm](cfg.fl)
        self.trainer = LocalTrainer(model, flat, cfg.fl.local, device, kernel_backend)
        self.aggregator = Aggregator(flat.numel, device, kernel_backend)
        self.server = ServerOptimizer(cfg.fl.server_opt, flat.numel, device, kernel_backend)
        self.theta_global = flat.data.detach().clone()
        self.clients = ClientCache(dataset)
        self.state = RoundState()

    # -- one round -----------------------------------------------------------------------------------
    def my_clients(self, round_idx: int) -> list[int]:
        """This rank's share of round ``round_idx``'s cohort (balanced by client size)."""
        cohort = cohort_for_round(self.cfg.seed, round_idx, self.dataset.num_clients, self.cfg.fl.cohort_size)
        work = [self.dataset.client_num_samples(c) for c in cohort]
        return place_clients(cohort, self.comm.world_size, work)[self.comm.rank]

    def run_round(self, round_idx: int) -> dict:
        """Train, aggregate and apply one round; returns its metrics (identical on every rank)."""
        t0 = time.perf_counter()
        agg = self.aggregator
        agg.reset()
        for cid in self.my_clients(round_idx):
            data = self.clients.get(cid)
            res = self.algorithm.local_update(self.trainer, self.theta_global, data,
                                              client_seed(self.cfg.seed, round_idx, cid), cid)
            agg.add(self.flat.data, self.theta_global, self.algorithm.client_weight(len(data)),
                    self.algorithm.client_mask(cid))
            agg.add_stats(loss_sum=res.loss_sum, samples_seen=res.samples_seen, steps=res.steps)
        stats = agg.reduce(self.comm)  # the round's ONE collective
        self.server.step(self.theta_global, agg.acc, agg.cnt)
        self.flat.data.copy_(self.theta_global)
        round_s = time.perf_counter() - t0
        n = self.flat.numel
        metrics = {
            "round": round_idx,
            "train_loss": stats["loss_sum"] / max(stats["samples_seen"], 1.0),
            "clients": int(stats["clients_ok"]),
            "bytes_up": stats["elems_up"] * BYTES_PER_ELEMENT,
            "bytes_down": self.cfg.fl.cohort_size * n * BYTES_PER_ELEMENT,
            "round_s": round_s,
            "samples_per_s": stats["samples_seen"] / round_s if round_s > 0 else 0.0,
            "local_steps": int(stats["steps"]),
        }
        return metrics

    # -- evaluation ----------------------------------------------------------------------------------
    def evaluate_global(self) -> dict:
        """Test loss/accuracy of the global model; the test set is split over ranks and summed."""
        if self.test_data is None:
            return {}
        self.flat.data.copy_(self.theta_global)
        sums = evaluate(self.model, self.test_data, self.device, batch_size=self.cfg.eval.batch_size,
                        bf16=self.cfg.fl.local.bf16, shard=(self.comm.rank, self.comm.world_size))
        sums = self.comm.all_reduce_sum(sums, tag="eval")
        loss, correct, count = sums.tolist()
        return {"test_loss": loss / max(count, 1.0), "test_acc": correct / max(count, 1.0)}

    # -- all rounds ----------------------------------------------------------------------------------
    def run(self) -> RoundState:
        """Run rounds ``state.round + 1 .. cfg.fl.rounds``; returns the final state."""
        cfg = self.cfg
        if self.state.round == 0 and cfg.eval.at_round0:
            m = {"round": 0, **self.evaluate_global()}
            self.state.history.append(m)
            for cb in self.callbacks:
                cb.on_round_end(self, m)
        for r in range(self.state.round + 1, cfg.fl.rounds + 1):
            m = self.run_round(r)
            if r % cfg.eval.every_rounds == 0 or r == cfg.fl.rounds:
                t0 = time.perf_counter()
                m.update(self.evaluate_global())
                m["eval_s"] = time.perf_counter() - t0
            self.state.round = r
            self.state.history.append(m)
            for cb in self.callbacks:
                cb.on_round_end(self, m)
        return self.state
