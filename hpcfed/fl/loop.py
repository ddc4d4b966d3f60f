"""The round loop: sample → place → train → accumulate → ONE all-reduce → (DP noise | robust rule) → server step →
evaluate.

With a robust ``fl.aggregator`` (hpcfed/fl/robust.py) the round also gathers every client's update after the
all-reduce (which still carries the round's statistics) and the server steps on the rule's Δ; with ``fl.attack``
the Byzantine clients' updates (or labels) are poisoned (hpcfed/fl/attacks.py).

It talks to other ranks only through the :class:`~hpcfed.dist.Comm` it is handed, and to the outside through
callbacks (metrics file, progress bar, checkpoints). ``comm.rank`` is used only to pick this rank's share of
the cohort and of the test set.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

import torch
from torch import nn

from hpcfed.config import Config, ConfigError
from hpcfed.data import ClientData, ShardedDataset
from hpcfed.dist import Comm, place_clients
from hpcfed.fl.aggregate import Aggregator
from hpcfed.fl.algorithm import Algorithm
from hpcfed.fl.attacks import apply_model_attack, byzantine_clients, poison_client_data
from hpcfed.fl.client import LocalResult, LocalTrainer, confusion_metrics, evaluate
from hpcfed.fl.robust import RobustAggregator, TooFewUpdates
from hpcfed.fl.sampling import client_seed, cohort_for_round
from hpcfed.fl.server import ServerOptimizer
from hpcfed.fl.state_store import ClientStateStore
from hpcfed.peft import FlatParams
from hpcfed.rng import TrainStream, generator

log = logging.getLogger("hpcfed.fl")


class Callback(Protocol):
    def on_round_end(self, loop: "FederatedLoop", metrics: dict) -> None: ...


class RunStopped(RuntimeError):
    """The loop stopped early after its callbacks saw the final state (preemption, too many failures)."""

    def __init__(self, reason: str, round_idx: int):
        super().__init__(f"stopped after round {round_idx}: {reason}")
        self.reason, self.round = reason, round_idx


class ClientFailure(Exception):
    """A client update rejected by a health check (its reason is the message)."""


@dataclass
class RoundState:
    """What a checkpoint needs besides the config: the round reached and the metrics so far."""

    round: int = 0
    history: list[dict] = field(default_factory=list)


class ClientCache:
    """Loaded clients of this rank, least recently used evicted past ``max_clients``; ``poison(cid, data)``, when
    given, transforms a client's data once when it is loaded (``fl.attack.kind=label_flip``).

    ``hits``, ``misses`` (= shard loads) and ``evictions`` count since construction; each round reports the sums
    over ranks of its hits and loads as ``client_cache_hits`` / ``client_loads`` (they depend on the number of
    ranks: a client placed on another rank than last time is loaded again)."""

    def __init__(self, dataset: ShardedDataset, max_clients: int = 256,
                 poison: Optional[Callable[[int, ClientData], ClientData]] = None):
        self.dataset, self.max_clients, self.poison = dataset, max_clients, poison
        self._cache: OrderedDict[int, ClientData] = OrderedDict()
        self.hits = self.misses = self.evictions = 0

    def get(self, cid: int) -> ClientData:
        if cid in self._cache:
            self._cache.move_to_end(cid)
            self.hits += 1
            return self._cache[cid]
        self.misses += 1
        data = self.dataset.load_client(cid)
        if self.poison is not None:
            data = self.poison(cid, data)
        self._cache[cid] = data
        if len(self._cache) > self.max_clients:
            self._cache.popitem(last=False)
            self.evictions += 1
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
        algorithm: the method's instance (built by the composition root from ``cfg.fl.algorithm``; default:
            the base :class:`~hpcfed.fl.algorithm.Algorithm`, i.e. FedAvg); its ``setup(loop)`` runs at the end
            of construction.
    """

    def __init__(self, cfg: Config, model: nn.Module, flat: FlatParams, dataset: ShardedDataset,
                 test_data: Optional[ClientData], comm: Comm, device: torch.device,
                 callbacks: Optional[list[Callback]] = None, kernel_backend: Optional[str] = None,
                 stop_flag=None, algorithm: Optional[Algorithm] = None):
        self.cfg, self.model, self.flat, self.dataset = cfg, model, flat, dataset
        self.stop_flag = stop_flag
        self.test_data, self.comm, self.device = test_data, comm, device
        self.callbacks = callbacks or []
        self.algorithm = algorithm if algorithm is not None else Algorithm(None, cfg.fl)
        self.trainer = LocalTrainer(model, flat, cfg.fl.local, device, kernel_backend,
                                    head_only=cfg.peft.method == "head")
        self.aggregator = Aggregator(flat.numel, device, kernel_backend)
        self.server = ServerOptimizer(cfg.fl.server_opt, flat.numel, device, kernel_backend)
        self.theta_global = flat.data.detach().clone()
        self.attack = cfg.fl.attack
        self.byzantine: frozenset[int] = byzantine_clients(cfg.seed, dataset.num_clients, self.attack.fraction) \
            if self.attack.active else frozenset()
        """The run's Byzantine clients (``fl.attack``; fixed, the same on every rank); empty without an attack."""
        label_flip = self.attack.kind == "label_flip" and bool(self.byzantine)
        self.clients = ClientCache(dataset, poison=self._poison if label_flip else None)
        self.robust = None
        """The robust rule's aggregator (:class:`~hpcfed.fl.robust.RobustAggregator`) with ``fl.aggregator`` ≠
        'fedavg', else None."""
        if cfg.fl.aggregator != "fedavg":
            self.robust = RobustAggregator(cfg.fl.aggregator, cfg.fl.aggregator_params, flat.numel, device)
        if self.byzantine and comm.rank == 0:
            log.info("fl.attack: %d of %d clients are Byzantine (kind=%s, fraction=%g); aggregator %s",
                     len(self.byzantine), dataset.num_clients, self.attack.kind, self.attack.fraction,
                     cfg.fl.aggregator)
        self.state = RoundState()
        self.failures: list[tuple[int, int, str]] = []
        """(round, client id, reason) of every client update dropped on this rank."""
        self.dp = None
        """Client-level DP state (:class:`~hpcfed.fl.dp.ClientDP`) with ``fl.dp.enabled``, else None."""
        if cfg.fl.dp.enabled:
            from hpcfed.fl.dp import make_client_dp  # imports dp-accounting only when DP is on

            self.dp = make_client_dp(cfg, dataset.num_clients, main=comm.rank == 0)
        self.algorithm.setup(self)
        if label_flip and not isinstance(self.clients, ClientCache):
            raise ConfigError(f"fl.attack.kind=label_flip does not work with fl.algorithm={self.algorithm.name!r} "
                              "(it loads its clients' data itself)")
        self.group_trainer = None
        g = cfg.fl.local.client_group_size
        if g > 1:
            from hpcfed.fl.parallel import GroupTrainer, unsupported_reason

            why = unsupported_reason(cfg, self.model, self.algorithm)
            if why is None:
                self.group_trainer = GroupTrainer(self.model, self.flat, cfg.fl.local, device, kernel_backend)
            elif comm.rank == 0:
                log.warning("fl.local.client_group_size=%d: %s cannot be vectorized; training clients one at "
                            "a time", g, why)

    # -- one round -----------------------------------------------------------------------------------
    def client_state_store(self, name: str, *, cache_size: int) -> ClientStateStore:
        """A store of per-client state (e.g. FedDAT's client adapters) in ``<run dir>/<name>``: the engine owns
        the run's files, a method asks for a store by name. See :class:`~hpcfed.fl.state_store.ClientStateStore`.
        """
        return ClientStateStore(self.cfg.run_dir / name, cache_size=cache_size)

    def cohort(self, round_idx: int) -> list[int]:
        """The whole cohort of round ``round_idx`` (``fl.sampling``; the same on every rank)."""
        fl = self.cfg.fl
        return cohort_for_round(self.cfg.seed, round_idx, self.dataset.num_clients, fl.cohort_size, fl.sampling)

    def my_clients(self, round_idx: int) -> list[int]:
        """This rank's share of round ``round_idx``'s cohort (balanced by client size)."""
        cohort = self.cohort(round_idx)
        work = [self.dataset.client_num_samples(c) for c in cohort]
        return place_clients(cohort, self.comm.world_size, work)[self.comm.rank]

    def my_groups(self, round_idx: int) -> list[list[int]]:
        """This rank's client groups of round ``round_idx`` for the client-parallel path: the cohort is cut
        into groups first (:func:`~hpcfed.fl.parallel.make_groups`), then whole groups are placed, so a
        client's group does not depend on the number of ranks."""
        from hpcfed.fl.parallel import group_batch_size, make_groups

        local = self.cfg.fl.local
        cohort = self.cohort(round_idx)
        sizes = {c: self.dataset.client_num_samples(c) for c in cohort}
        groups = make_groups(cohort, {c: group_batch_size(local, n) for c, n in sizes.items()},
                             local.client_group_size)
        work = [sum(sizes[c] for c in g) for g in groups]
        mine = place_clients(list(range(len(groups))), self.comm.world_size, work)[self.comm.rank]
        return [groups[i] for i in mine]

    def run_round(self, round_idx: int) -> dict:
        """Train, aggregate and apply one round; returns its metrics (identical on every rank)."""
        t0 = time.perf_counter()
        agg = self.aggregator
        agg.reset()
        cache = self.clients  # a method may replace it with a view without counters (FedYolo)
        hits0, misses0 = getattr(cache, "hits", 0), getattr(cache, "misses", 0)
        self.trainer.set_round(round_idx, self.cfg.fl.rounds)
        self.algorithm.on_round_start(self, round_idx)
        if self.group_trainer is not None:
            groups = self.my_groups(round_idx)
            if self.robust is not None:
                self.robust.reset(sum(len(g) for g in groups))
            self._train_groups(round_idx, groups)
        else:
            mine = self.my_clients(round_idx)
            if self.robust is not None:
                self.robust.reset(len(mine))
            for cid in mine:
                mask = self.algorithm.client_mask(cid)
                agg.count_down(mask)
                try:  # loading too: a client whose data fails on one rank must not leave the others waiting
                    data = self.clients.get(cid)
                    res = self.algorithm.local_update(self.trainer, self.theta_global, data,
                                                      client_seed(self.cfg.seed, round_idx, cid), cid)
                    self._attack(round_idx, cid, self.flat.data)
                    self._inject_fault(round_idx, cid, self.flat.data)
                    norm = self._check_update(res.loss_sum, self.flat.data)
                except Exception as e:  # noqa: BLE001 - any client failure drops that client, not the run
                    self._drop(round_idx, cid, e)
                    continue
                self._accumulate(cid, self.flat.data, self._weight(len(data), norm), mask)
                self._add_loss_stats(res)
        if self.stop_flag is not None and self.stop_flag.requested:
            agg.add_stats(stop_requested=1)
        agg.add_stats(client_cache_hits=getattr(cache, "hits", 0) - hits0,
                      client_loads=getattr(cache, "misses", 0) - misses0)
        # the round's ONE collective (FedAvg); a robust rule reduces only the statistics and adds its gathers
        stats = agg.reduce(self.comm, stats_only=self.robust is not None)
        dp_metrics = {}
        if self.dp is not None:  # noise once, on the reduced sum (same on every rank); fixed denominator
            dp_metrics = self.dp.privatize(agg.acc, agg.cnt, round_idx, stats["clients_ok"], stats["dp_unclipped"])
        robust_metrics = self._robust_reduce(round_idx)
        self.server.step(self.theta_global, agg.acc, agg.cnt)
        self.flat.data.copy_(self.theta_global)
        extra = self.algorithm.after_round(self, round_idx)
        round_s = time.perf_counter() - t0
        elem_bytes = self.theta_global.element_size()
        metrics = {
            "round": round_idx,
            "train_loss": stats["loss_sum"] / max(stats["samples_seen"], 1.0),
            "clients": int(stats["clients_ok"]),
            "bytes_up": stats["elems_up"] * elem_bytes,
            "bytes_down": stats["elems_down"] * elem_bytes,
            "round_s": round_s,
            "samples_per_s": stats["samples_seen"] / round_s if round_s > 0 else 0.0,
            "local_steps": int(stats["steps"]),
            "clients_failed": int(stats["clients_failed"]),
            "client_loads": int(stats["client_loads"]),
            "client_cache_hits": int(stats["client_cache_hits"]),
        }
        if stats["start_loss_clients"] > 0:
            metrics["train_loss_start"] = stats["start_loss_sum"] / stats["start_loss_clients"]
        metrics.update(dp_metrics)
        metrics.update(robust_metrics)
        metrics.update(extra)
        if stats["stop_requested"] > 0:
            metrics["stop_requested"] = True
        return metrics

    def _drop(self, round_idx: int, cid: int, e: Exception) -> None:
        reason = str(e) if isinstance(e, ClientFailure) else f"{type(e).__name__}: {e}"
        log.warning("round %d: dropped client %d: %s", round_idx, cid, reason.splitlines()[0])
        self.failures.append((round_idx, cid, reason))
        self.aggregator.add_stats(clients_failed=1)

    def _train_groups(self, round_idx: int, groups: list[list[int]]) -> None:
        """The client-parallel path: each of this rank's groups (:meth:`my_groups`) trained at once, then
        checked and accumulated client by client (a failing client is dropped alone; a failing group drops its
        clients)."""
        gt, agg = self.group_trainer, self.aggregator
        gt.set_lr(self.trainer.lr)
        for group in groups:
            masks = [self.algorithm.client_mask(c) for c in group]
            for m in masks:
                agg.count_down(m)
            try:  # loading too (see run_round)
                datas = [self.clients.get(c) for c in group]
                thetas, results = gt.train_group(datas, [client_seed(self.cfg.seed, round_idx, c) for c in group],
                                                 self.theta_global, masks)
            except Exception as e:  # noqa: BLE001 - the whole group failed
                for cid in group:
                    self._drop(round_idx, cid, e)
                continue
            for g, cid in enumerate(group):
                theta, res = thetas[g], results[g]
                try:
                    self._attack(round_idx, cid, theta)
                    self._inject_fault(round_idx, cid, theta)
                    norm = self._check_update(res.loss_sum, theta)
                except Exception as e:  # noqa: BLE001
                    self._drop(round_idx, cid, e)
                    continue
                self._accumulate(cid, theta, self._weight(len(datas[g]), norm), masks[g])
                self._add_loss_stats(res)

    def _add_loss_stats(self, res: LocalResult) -> None:
        """A surviving client's training statistics into the round's sums (its first-batch loss when finite)."""
        self.aggregator.add_stats(loss_sum=res.loss_sum, samples_seen=res.samples_seen, steps=res.steps)
        if math.isfinite(res.first_loss):
            self.aggregator.add_stats(start_loss_sum=res.first_loss, start_loss_clients=1)

    def _accumulate(self, cid: int, theta: torch.Tensor, weight: float, mask: Optional[torch.Tensor]) -> None:
        """Fold a surviving client's update into the round: the FedAvg accumulator, or with a robust rule the
        robust aggregator's rows (the FedAvg accumulator then only counts the client and its elements)."""
        if self.robust is None:
            self.aggregator.add(theta, self.theta_global, weight, mask)
        else:
            self.robust.add(cid, theta, self.theta_global, weight)
            self.aggregator.count_up(mask)

    def _robust_reduce(self, round_idx: int) -> dict:
        """With a robust rule: gather the cohort's updates, apply the rule (identical on every rank) and put its
        Δ where the server step reads the mean (acc = Δ, cnt = 1; left at 0 when no client succeeded or the rule
        had too few updates, so the server step sees the same empty round as FedAvg's). Returns the round's attack / selection metrics."""
        out = {}
        if self.byzantine:
            out["byzantine_clients"] = sum(c in self.byzantine for c in self.cohort(round_idx))
        if self.robust is None:
            return out
        try:
            delta = self.robust.reduce(self.comm)  # (n,) fp32
        except TooFewUpdates as e:  # every rank alike: acc/cnt stay 0 (never accumulated), the model stays put
            log.warning("round %d: %s; no server step this round", round_idx, e)
            out["robust_skipped"] = True
            return out
        if self.robust.last_clients:
            self.aggregator.acc.copy_(delta)
            self.aggregator.cnt.fill_(1.0)
        # the (m, n) fp32 matrix of the cohort's updates that every rank assembled (the gather's memory cost; it
        # received the rows other ranks trained); bytes_up / bytes_down stay the clients' own traffic
        out["robust_updates_bytes"] = len(self.robust.last_clients) * self.robust.numel * 4
        if self.byzantine and self.robust.last_selected is not None:
            out["krum_selected_byzantine"] = sum(c in self.byzantine for c in self.robust.last_selected)
        return out

    def _attack(self, round_idx: int, cid: int, theta: torch.Tensor) -> None:
        """``fl.attack``: a Byzantine client's model attack on its trained θ_c (in place; a no-op otherwise)."""
        if cid in self.byzantine:
            apply_model_attack(self.attack, theta, self.theta_global, seed=self.cfg.seed, round_idx=round_idx,
                               cid=cid)

    def _poison(self, cid: int, data: ClientData) -> ClientData:
        """``fl.attack.kind=label_flip``: a Byzantine client's labels flipped when its data is loaded."""
        if cid not in self.byzantine:
            return data
        return poison_client_data(self.attack, data, self.num_classes(), seed=self.cfg.seed, cid=cid)

    def _inject_fault(self, round_idx: int, cid: int, theta: torch.Tensor) -> None:
        """Testing aid (``fl.inject_failure_rate``): poison the update with NaN, seeded per client."""
        rate = self.cfg.fl.inject_failure_rate
        if rate > 0 and generator(self.cfg.seed, TrainStream.FAULT, round_idx, cid).random() < rate:
            theta[0] = float("nan")

    def _weight(self, num_samples: int, norm: float) -> float:
        """The weight a client's update is accumulated with: the algorithm's w_c, or under ``fl.dp`` 1 times the
        clip scale s_c = min(1, C/‖Δ_c‖) (its count of unclipped clients goes into the round's stats)."""
        if self.dp is None:
            return self.algorithm.client_weight(num_samples)
        scale, unclipped = self.dp.clip(norm)
        self.aggregator.add_stats(dp_unclipped=unclipped)
        return scale

    def _check_update(self, loss_sum: float, theta: torch.Tensor) -> float:
        """Raise :class:`ClientFailure` for a NaN/Inf loss or update, or an update norm past the bound; returns
        the update's L2 norm ‖θ_c − θ_global‖₂ (reused for DP clipping)."""
        if not math.isfinite(loss_sum):
            raise ClientFailure(f"non-finite training loss ({loss_sum})")
        norm = float(torch.linalg.vector_norm(theta - self.theta_global))
        if not math.isfinite(norm):
            raise ClientFailure("non-finite update")
        bound = self.cfg.fl.max_update_norm
        if bound is not None and norm > bound:
            raise ClientFailure(f"update norm {norm:.4g} > fl.max_update_norm={bound}")
        return norm

    @property
    def max_failed_clients(self) -> int:
        c = self.cfg.fl
        return c.max_failed_clients_per_round if c.max_failed_clients_per_round is not None \
            else c.cohort_size // 2

    # -- checkpoint state ----------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Everything needed to continue exactly: global buffer, server optimizer state, RNG, the algorithm's
        state (``algo.*``), under ``fl.dp`` the clip norm (``dp.clip_norm``) and with a robust rule its previous
        aggregate (``robust.previous``, centered clipping's reference)."""
        return {"theta_global": self.theta_global, **self.server.state_dict(),
                "rng.torch": torch.get_rng_state(),
                **{f"algo.{k}": v for k, v in self.algorithm.state_tensors().items()},
                **({f"dp.{k}": v for k, v in self.dp.state_tensors().items()} if self.dp is not None else {}),
                **(self.robust.state_tensors() if self.robust is not None else {})}

    def load_state(self, tensors: dict[str, torch.Tensor], round_idx: int, history: list[dict]) -> None:
        """Restore what :meth:`state_tensors` saved, as of the end of round ``round_idx``.

        Raises:
            ValueError: the saved buffer does not fit this model's flat layout.
        """
        theta = tensors["theta_global"]
        if theta.shape != self.theta_global.shape:
            raise ValueError(f"checkpoint flat buffer has {theta.numel()} elements, the model has "
                             f"{self.theta_global.numel()}")
        self.theta_global.copy_(theta)
        self.flat.data.copy_(theta)
        self.server.load_state_dict(tensors)
        torch.set_rng_state(tensors["rng.torch"])
        self.algorithm.load_state({k[5:]: v for k, v in tensors.items() if k.startswith("algo.")})
        if self.dp is not None:
            self.dp.load_state({k[3:]: v for k, v in tensors.items() if k.startswith("dp.")})
        if self.robust is not None:
            self.robust.load_state(tensors)
        self.state = RoundState(round_idx, list(history))

    # -- evaluation ----------------------------------------------------------------------------------
    def evaluate_global(self) -> dict:
        """The round's evaluation metrics: the algorithm's :meth:`~Algorithm.evaluate` (by default
        :meth:`evaluate_test`)."""
        return self.algorithm.evaluate(self)

    def evaluate_test(self, model: Optional[nn.Module] = None) -> dict:
        """Test metrics of the global model (or of ``model``, which must read the flat buffer): ``test_loss``,
        ``test_acc``, ``test_balanced_acc``, ``test_macro_f1`` and ``test_pred_classes`` (classes predicted at
        least once). The test set is split over ranks; the loss sums and the confusion counts are summed in
        one all-reduce and the metrics computed from the totals."""
        if self.test_data is None:
            return {}
        model = model if model is not None else self.model
        self.flat.data.copy_(self.theta_global)
        k = self.num_classes(model)
        sums = evaluate(model, self.test_data, self.device, batch_size=self.cfg.eval.batch_size,
                        bf16=self.cfg.fl.local.bf16, shard=(self.comm.rank, self.comm.world_size), num_classes=k)
        sums = self.comm.all_reduce_sum(sums, tag="eval")
        loss, correct, count = sums[:3].tolist()
        cm = confusion_metrics(sums[3:].view(k, k))  # (K, K) counts over all ranks
        return {"test_loss": loss / max(count, 1.0), "test_acc": correct / max(count, 1.0),
                "test_balanced_acc": cm["balanced_acc"], "test_macro_f1": cm["macro_f1"],
                "test_pred_classes": cm["pred_classes"]}

    def num_classes(self, model: Optional[nn.Module] = None) -> int:
        """K for the confusion matrix: the widest of the model's head (``model.head.out_features``, when it has
        one), ``model.num_classes`` of the config, the data set's classes and the test labels."""
        head = getattr(model if model is not None else self.model, "head", None)
        k = max(int(getattr(head, "out_features", 0) or 0), self.cfg.model.num_classes or 0,
                int(getattr(self.dataset, "num_classes", 0) or 0))
        if self.test_data is not None and len(self.test_data.y):
            k = max(k, int(self.test_data.y.max()) + 1)
        return k

    def test_majority_rate(self) -> Optional[float]:
        """Share of the test split's examples in its most frequent class: the accuracy of always predicting that
        class (None without a test split)."""
        if self.test_data is None or not len(self.test_data.y):
            return None
        counts = torch.bincount(self.test_data.y)
        return float(counts.max()) / float(counts.sum())

    @staticmethod
    def rise_loss_key(metrics: dict) -> str:
        """The loss that the ``train_loss_rising`` check follows in a round's ``metrics``: ``train_loss_start``
        (the global model's loss on the clients' first local batches) where the round has it, else
        ``train_loss`` (the mean over all local steps, which also rises when only the local lr decays: as the
        steps move less, less of the clients' own fit enters the mean)."""
        return "train_loss_start" if isinstance(metrics.get("train_loss_start"), float) else "train_loss"

    def health_warnings(self, metrics: dict) -> list[str]:
        """Warnings about round ``metrics`` (already appended to ``state.history``): ``"train_loss_rising"`` when
        the training loss of :meth:`rise_loss_key` rose in each of the last ``eval.warn_loss_rise_rounds``
        rounds and by at least ``eval.warn_loss_rise_min_ratio`` over them, ``"non_finite_loss"`` when the mean
        client training loss is NaN or infinite (the usual divergence, which comparisons miss), and
        ``"single_class"`` when the evaluated global model predicted one class for the whole test split (whose
        labels have more than one)."""
        out = []
        k, ratio = self.cfg.eval.warn_loss_rise_rounds, self.cfg.eval.warn_loss_rise_min_ratio
        key = self.rise_loss_key(metrics)
        losses = [h[key] for h in self.state.history if isinstance(h.get(key), float)]
        if k and key in metrics and len(losses) > k \
                and all(losses[i] > losses[i - 1] for i in range(len(losses) - k, len(losses))) \
                and losses[-1] - losses[-k - 1] >= (ratio - 1.0) * abs(losses[-k - 1]):  # SimSiam's loss is < 0
            out.append("train_loss_rising")
        loss = metrics.get("train_loss")
        if isinstance(loss, float) and not math.isfinite(loss):
            out.append("non_finite_loss")
        if metrics.get("test_pred_classes") == 1 and self.test_data is not None \
                and int((torch.bincount(self.test_data.y) > 0).sum()) > 1:
            out.append("single_class")
        return out

    def _warn(self, m: dict) -> None:
        """Put the round's :meth:`health_warnings` in ``m["warnings"]``; rank 0 logs a warning line when one
        starts (not again while it holds in the following rounds: the flag stays in every round's metrics)."""
        warnings = self.health_warnings(m)
        if not warnings:
            return
        m["warnings"] = warnings
        previous = self.state.history[:-1]
        before = [h.get("warnings", []) for h in previous if "train_loss" in h][-1:]
        evaluated = [h.get("warnings", []) for h in previous if "test_pred_classes" in h][-1:]
        if self.comm.rank != 0:
            return
        r = m["round"]
        if "train_loss_rising" in warnings and not (before and "train_loss_rising" in before[0]):
            k, key = self.cfg.eval.warn_loss_rise_rounds, self.rise_loss_key(m)
            recent = [f"{h[key]:.4g}" for h in self.state.history if key in h][-k - 1:]
            what, where = (("the global model's training loss", "train_loss_start, on the clients' first local "
                            "batches") if key == "train_loss_start" else ("mean client training loss", key))
            log.warning("round %d: %s rose %d rounds in a row (%s: %s); the run may be diverging "
                        "(eval.warn_loss_rise_rounds=%d)", r, what, k, where, " -> ".join(recent), k)
        if "non_finite_loss" in warnings and not (before and "non_finite_loss" in before[0]):
            log.warning("round %d: mean client training loss is %s; the run has diverged", r, m["train_loss"])
        if "single_class" in warnings and not (evaluated and "single_class" in evaluated[0]):
            rate = self.test_majority_rate()
            log.warning("round %d: the global model predicts a single class for the whole test split "
                        "(test_acc %.4f, majority-class rate %.4f)", r, m.get("test_acc", float("nan")),
                        rate if rate is not None else float("nan"))

    # -- all rounds ----------------------------------------------------------------------------------
    def run(self) -> RoundState:
        """Run rounds ``state.round + 1 .. cfg.fl.rounds``; returns the final state."""
        cfg = self.cfg
        rate = self.test_majority_rate()
        if rate is not None and self.comm.rank == 0:
            log.info("test split: %d examples, majority-class rate %.4f (the accuracy of always predicting one "
                     "class; see test_balanced_acc / test_macro_f1)", len(self.test_data.y), rate)
        if self.state.round == 0 and cfg.eval.at_round0:
            m = {"round": 0, **self.evaluate_global()}
            self.state.history.append(m)
            self._warn(m)
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
            self._warn(m)
            stop = None
            if m["clients_failed"] > self.max_failed_clients:
                stop = (f"{m['clients_failed']} clients failed in round {r} "
                        f"(fl.max_failed_clients_per_round={self.max_failed_clients})")
            elif m.get("stop_requested"):
                stop = "stop signal"
            for cb in self.callbacks:
                cb.on_round_end(self, m)
            if stop is not None:
                for cb in self.callbacks:
                    if hasattr(cb, "on_stop"):
                        cb.on_stop(self, stop)
                raise RunStopped(stop, r)
        return self.state
