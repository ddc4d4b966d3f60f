"""FedYolo: one pre-trained backbone loaded once, one module + head per task, modules-only communication.

Zhang, Li, Chang, Chen, Roy-Chowdhury, Suresh, Oymak, "FedYolo: Augmenting Federated Learning with Pretrained
Transformers", arXiv:2307.04905, 2023 ("You Only Load Once"). Clients hold the frozen pre-trained transformer
(PTF); every task t has its own module M_t (LoRA, prompt or bottleneck adapter) and head h_t; a client may
hold several unrelated tasks. Only modules (and heads) travel, and task t's module is averaged only over the
clients of the round that hold t:

    θ_t ← θ_t + η · Σ_{c ∈ S, t ∈ T_c} w_c (θ_{t,c} − θ_t) / Σ_{c ∈ S, t ∈ T_c} w_c        (FedAvg per task)

In hpcfed this is masked aggregation over the flat buffer laid out as
``[M_0 + h_0 | M_1 + h_1 | ...]``: ``client_mask(c)`` is the union of the segments of the tasks c trains,
the loop accumulates ``acc += w·m⊙(θ_c − θ)``, ``cnt += w·m`` and the server divides per element where
cnt > 0, so a task that nobody in the cohort holds keeps its values bit for bit, and ``bytes_up`` counts only
the masked elements.

The *shared full update* baseline of the paper (every task updates the same whole model, prone to
catastrophic forgetting) is the same algorithm with ``peft.method=full``: the backbone is one shared segment
that every task trains, and only the heads stay per task. ``fl.algo.schedule=sequential`` trains the tasks
one after the other (``phase_rounds`` each), which is where forgetting shows: task 0's accuracy after the
later phases against the one at the end of its own phase.

Per-task modules come from ``peft.method``: ``lora`` and text ``prompt`` through the peft library's
multi-adapter support (adapter ``default`` for task 0, ``task<t>`` for the others, switched with
``set_adapter``); ``adapter`` (hpcfed bottleneck adapters) as one adapter set per task with a task gate;
``head`` as per-task heads only; ``full`` and ``bias`` share their backbone parameters over tasks.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

from hpcfed.config import Config, ConfigError
from hpcfed.algorithms.registry import register
from hpcfed.fl.algorithm import Algorithm
from hpcfed.fl.client import LocalResult, LocalTrainer, evaluate
from hpcfed.algorithms.fedyolo_tasks import TASK_KINDS, MultiTaskDataset, assign_tasks, open_tasks
from hpcfed.fl.sampling import cohort_for_round
from hpcfed.peft.multitask import (
    PER_TASK_METHODS, SHARED_METHODS, TaskSwitch, make_multitask, task_masks,
)
from hpcfed.rng import TrainStream, seed63

if TYPE_CHECKING:  # pragma: no cover
    from hpcfed.fl.loop import FederatedLoop

log = logging.getLogger("hpcfed.fl")



@dataclass(frozen=True)
class FedYoloParams:
    """Hyperparameters of FedYolo (``fl.algo.*``).

    The paper fixes the mechanism (one module and head per task, modules-only communication, per-task
    averaging) but not these knobs for our setting; the defaults are ours and say so.
    """

    tasks: str = "label,wordorder"
    """Comma-separated task kinds, in flat-buffer order: 'label' (the data set's own labels, ``data.*``),
    'wordorder' (word-order detection derived from the same text; see :mod:`hpcfed.algorithms.fedyolo_tasks`)."""
    task_share: float = 1.0
    """Fraction of the clients that hold each task, in (0, 1]; the assignment is a seeded cyclic window per
    task (:func:`~hpcfed.algorithms.fedyolo_tasks.assign_tasks`), so with T·share > 1 some clients hold several tasks.
    1.0: every client holds every task (the paper's multi-task clients)."""
    assign_seed: int = 0
    """Seed of the client → tasks assignment (independent of the training and partition seeds)."""
    schedule: str = "joint"
    """'joint': every round trains every task its clients hold. 'sequential': task t only in rounds
    t·P+1 .. (t+1)·P (P = ``phase_rounds``; the last task also in any remaining rounds) — the continual
    setting where full updates forget."""
    phase_rounds: int = 0
    """Rounds per task with ``schedule=sequential``; 0 = ⌈fl.rounds / T⌉."""

    def __post_init__(self) -> None:
        kinds = [k.strip() for k in self.tasks.split(",") if k.strip()]
        if not kinds:
            raise ConfigError("fl.algo.tasks: empty; give e.g. 'label,wordorder'")
        bad = [k for k in kinds if k not in TASK_KINDS]
        if bad:
            raise ConfigError(f"fl.algo.tasks: {bad[0]!r} is not one of {', '.join(TASK_KINDS)}")
        if len(set(kinds)) != len(kinds):
            raise ConfigError(f"fl.algo.tasks={self.tasks!r}: a task kind appears twice")
        if not 0.0 < self.task_share <= 1.0:
            raise ConfigError(f"fl.algo.task_share={self.task_share}: must be in (0, 1]")
        if self.schedule not in ("joint", "sequential"):
            raise ConfigError(f"fl.algo.schedule={self.schedule!r}: must be 'joint' or 'sequential'")
        if self.phase_rounds < 0:
            raise ConfigError(f"fl.algo.phase_rounds={self.phase_rounds}: must be >= 0")

    @property
    def task_kinds(self) -> list[str]:
        return [k.strip() for k in self.tasks.split(",") if k.strip()]


def build_multitask(cfg: Config, num_classes: list[int], class_names=None,
                    device: Optional[torch.device] = None):
    """The classifier with one module and one head per task on one backbone, and its flat buffer
    (:func:`hpcfed.peft.multitask.make_multitask` on :func:`~hpcfed.models.build_model`). Seeded by
    ``cfg.seed`` (same initial model in every process).

    Args:
        cfg: run config (``model.*``, ``peft.*``).
        num_classes: K_t per task.
        class_names: task 0's class names (open_clip zero-shot head init).

    Returns:
        (model, flat, switch, seg_task): ``seg_task[i]`` is the task of ``flat.layout[i]`` (None = shared).

    Raises:
        ConfigError: a PEFT method this algorithm cannot split per task.
    """
    from hpcfed.models import build_model

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, num_classes[0], class_names=class_names).to(device or "cpu")
    return (model, *make_multitask(model, cfg.peft, num_classes))


def task_seed(seed: int, task: int) -> int:
    """63-bit seed of one task's local training within a client's round (from the client's seed)."""
    return seed63([seed % (1 << 63), TrainStream.FEDYOLO_TASK, task])


# -------------------------------------------------------------------------------------------- the algorithm
@register
class FedYolo(Algorithm):
    """FedYolo (Zhang et al., arXiv:2307.04905, 2023): per-task modules and heads on one frozen backbone,
    each task's module averaged over the clients that hold it (masked aggregation of the flat buffer).

    Args:
        cfg: the run config; ``fl.algo`` → :class:`FedYoloParams`.
    """

    name = "fedyolo"
    supports_dp = False  # client masks / per-client state: not one clipped update per client
    supports_robust = False  # the same: a robust rule would read an unsent (masked) entry as 0
    Params = FedYoloParams

    def __init__(self, params: FedYoloParams, fl):
        super().__init__(params, fl)
        self.kinds = self.params.task_kinds
        self.num_tasks = len(self.kinds)
        self.active: set[int] = set(range(self.num_tasks))
        self.held: Optional[list[list[int]]] = None
        self.masks: list[torch.Tensor] = []
        self._mask_cache: dict[tuple, torch.Tensor] = {}
        self.switch: Optional[TaskSwitch] = None
        self.tests: list = []
        self.full_model_params = 0

    @classmethod
    def check_config(cls, params, cfg: Config) -> None:
        if "wordorder" in params.task_kinds and cfg.data.kind != "text":
            raise ConfigError("fl.algo.tasks: 'wordorder' needs text data (data.kind=text)")
        if cfg.fl.mode != "federated":
            raise ConfigError(f"fl.mode={cfg.fl.mode!r}: fl.algorithm=fedyolo runs only federated")
        if cfg.peft.method not in PER_TASK_METHODS + SHARED_METHODS:
            raise ConfigError(f"peft.method={cfg.peft.method!r}: not supported by fl.algorithm=fedyolo")

    # -- construction ------------------------------------------------------------------------------
    def num_classes(self, dataset, model_num_classes: Optional[int]) -> list[int]:
        """K_t per task: ``model.num_classes`` or the data set's classes for 'label', 2 for 'wordorder'."""
        return [(model_num_classes or dataset.num_classes) if k == "label" else 2 for k in self.kinds]

    def build(self, cfg: Config, device: torch.device, dataset):
        model, flat, self.switch, self.seg_task = build_multitask(
            cfg, self.num_classes(dataset, cfg.model.num_classes), class_names=dataset.class_names if self.kinds[0] == "label" else None,
            device=device)
        self.masks = task_masks(flat, self.seg_task, self.num_tasks)
        module = sum(s.numel for s, t in zip(flat.layout, self.seg_task)
                     if t is not None and not s.name.startswith("head."))
        self.full_model_params = sum(p.numel() for p in model.parameters()) - module
        return model, flat

    def setup(self, loop: "FederatedLoop") -> None:
        """Open every task's shards, assign tasks to clients, and install the multi-task client view."""
        datasets, self.tests = open_tasks(self.kinds, loop.cfg, loop.dataset, loop.comm)
        for k, ds, nc in zip(self.kinds, datasets, self.num_classes(loop.dataset, loop.cfg.model.num_classes)):
            if ds.num_classes > nc:
                raise ConfigError(f"fl.algo.tasks: task {k!r} has {ds.num_classes} classes, its head {nc}")
        n = datasets[0].num_clients
        self.held = assign_tasks(n, self.num_tasks, self.params.task_share, self.params.assign_seed)
        view = MultiTaskDataset(datasets, self.held, lambda: self.active)
        self._datasets = datasets
        loop.dataset = view
        loop.clients = view
        loop.test_data = self.tests[0]
        counts = [sum(t in h for h in self.held) for t in range(self.num_tasks)]
        both = sum(len(h) > 1 for h in self.held)
        log.info("fedyolo: tasks %s; clients per task %s (%d hold several); module+head elements per task %s",
                 self.kinds, counts, both, [int(m.sum()) for m in self.masks])

    # -- rounds --------------------------------------------------------------------------------------
    @property
    def phase_rounds(self) -> int:
        p = self.params.phase_rounds
        return p if p > 0 else math.ceil(self.fl.rounds / self.num_tasks)

    def active_tasks(self, round_idx: int) -> set[int]:
        """Tasks trained in round ``round_idx`` (1-based)."""
        if self.params.schedule == "joint":
            return set(range(self.num_tasks))
        return {min((round_idx - 1) // self.phase_rounds, self.num_tasks - 1)}

    def on_round_start(self, loop: "FederatedLoop", round_idx: int) -> None:
        self.active = self.active_tasks(round_idx)

    def tasks_of(self, cid: int) -> list[int]:
        """Tasks client ``cid`` trains (and sends) this round: held ∩ active."""
        return [t for t in self.held[cid] if t in self.active] if self.held is not None else sorted(self.active)

    def client_mask(self, client_id: int) -> torch.Tensor:
        """(n,) bool: union of the segments of the tasks the client trains this round (shared ones included)."""
        key = tuple(self.tasks_of(client_id))
        if key not in self._mask_cache:
            m = torch.zeros_like(self.masks[0])
            for t in key:
                m |= self.masks[t]
            self._mask_cache[key] = m
        return self._mask_cache[key]

    def local_update(self, trainer: LocalTrainer, theta_global: torch.Tensor, data, seed: int,
                     client_id: int) -> LocalResult:
        """Train each task the client trains this round, one after the other, on that task's data with its
        module and head (``fl.local`` steps per task, optimizer state reset per task)."""
        trainer.flat.data.copy_(theta_global)
        loss_sum, seen, steps, last, first = 0.0, 0, 0, 0.0, float("nan")
        for t in sorted(data.parts):
            self.switch.set(t)
            r = trainer.train(data.parts[t], task_seed(seed, t), mask=self.masks[t])
            first = r.first_loss if steps == 0 else first  # the first task's first batch
            loss_sum, seen, steps, last = loss_sum + r.loss_sum, seen + r.samples_seen, steps + r.steps, r.final_loss
        self.switch.set(0)
        return LocalResult(loss_sum, seen, steps, last, first)

    def after_round(self, loop: "FederatedLoop", round_idx: int) -> dict:
        """Bytes of the round: ``bytes_down_modules`` (each cohort client downloads the modules + heads of the tasks
        it trains: Σ_c |m_c| fp32) and ``bytes_full_model_fl`` (up + down of the whole model — backbone and
        heads — for each cohort client that trains a task, as full-model FL would send); with
        ``schedule=sequential``, the per-task test metrics at the end of each phase but the last."""
        cohort = cohort_for_round(loop.cfg.seed, round_idx, self._datasets[0].num_clients, loop.cfg.fl.cohort_size,
                                  loop.cfg.fl.sampling)
        down = sum(int(self.client_mask(c).count_nonzero()) for c in cohort) * 4
        training = sum(1 for c in cohort if self.tasks_of(c))  # cohort clients with a task this round
        full = 2 * training * self.full_model_params * 4
        out = {"bytes_down_modules": down, "bytes_full_model_fl": full}
        if (self.params.schedule == "sequential" and round_idx % self.phase_rounds == 0
                and round_idx < loop.cfg.fl.rounds and round_idx // self.phase_rounds < self.num_tasks):
            out.update({f"phase{round_idx // self.phase_rounds}_{k}": v for k, v in self.evaluate(loop).items()})
        return out

    # -- evaluation ------------------------------------------------------------------------------------
    def evaluate(self, loop: "FederatedLoop") -> dict:
        """Per-task test loss/accuracy of the global model (each task's test split, split over processes, ONE
        all-reduce); ``test_acc`` / ``test_loss`` are their means over tasks. With ``schedule=sequential``, also
        ``forgetting_task<t>`` = task t's accuracy at the end of its own phase (``phase<t+1>_test_acc_task<t>``,
        from the run's history) minus its accuracy now, for each task whose phase has ended: positive = forgotten
        (so a study can compare ``final_forgetting_task0`` across arms)."""
        loop.flat.data.copy_(loop.theta_global)
        sums = []
        for t, test in enumerate(self.tests):
            self.switch.set(t)
            sums.append(evaluate(loop.model, test, loop.device, batch_size=loop.cfg.eval.batch_size,
                                 bf16=loop.cfg.fl.local.bf16, shard=loop.comm.shard))
        self.switch.set(0)
        s = loop.comm.all_reduce_sum(torch.cat(sums), tag="eval").view(-1, 3).tolist()
        out = {}
        for t, (loss, correct, count) in enumerate(s):
            out[f"test_loss_task{t}"] = loss / max(count, 1.0)
            out[f"test_acc_task{t}"] = correct / max(count, 1.0)
        out["test_loss"] = float(np.mean([out[f"test_loss_task{t}"] for t in range(self.num_tasks)]))
        out["test_acc"] = float(np.mean([out[f"test_acc_task{t}"] for t in range(self.num_tasks)]))
        if self.params.schedule == "sequential":  # forgetting of each task whose phase has ended (in history)
            for h in loop.state.history:
                for t in range(self.num_tasks):
                    if f"phase{t + 1}_test_acc_task{t}" in h:
                        out[f"forgetting_task{t}"] = h[f"phase{t + 1}_test_acc_task{t}"] - out[f"test_acc_task{t}"]
        return out
