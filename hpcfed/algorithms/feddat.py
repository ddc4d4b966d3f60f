"""FedDAT: Federated Dual-Adapter Teacher with Mutual Knowledge Distillation.

Chen, Zhang, Krompass, Gu, Tresp, "FedDAT: An Approach for Foundation Model Finetuning in Multi-Modal
Heterogeneous Federated Learning", AAAI 2024 (arXiv:2308.12305), Sec. "Method" (Dual-Adapter Teacher,
Mutual Knowledge Distillation) and its reference code (github.com/HaokunChen245/FedDAT,
``src/train/visionlanguage_tasks/task_trainer.py``).

Every adapter site of the backbone (by default one per transformer block, at the FFN output, as the reference
code's ``Adaptered_BertOutput``; ``fl.algo.adapter_sites=attn,mlp`` adds one after attention) holds three
bottleneck adapters of the same size:

* ``A_S`` — the shared adapter: trained, the only adapter sent to the server and averaged;
* ``A_C`` — the client-specific adapter: trained, kept by its client across rounds (:mod:`state_store`);
* ``Â_S`` — a frozen copy of this round's global ``A_S``.

and a mode (:class:`hpcfed.peft.dual_adapter.Mode`): ``student`` h + A_S(h); ``dat`` (the Dual-Adapter Teacher)
h + ½·A_C(h) + ½·Â_S(h); ``client`` h + A_C(h); ``global`` h + Â_S(h).

Local training, per batch (mutual knowledge distillation, MKD):

1. teacher logits z_T of the DAT, without gradient;
2. update A_S and the head on ½·(CE(z_S, y) + λ·KL_T(z_T → z_S)) with z_S the student's logits;
3. update A_C and the head inside the DAT on ½·(CE(z_D, y) + λ·KL_T(z_S → z_D)) with z_D the DAT's logits and
   z_S the (detached) student logits of step 2.

KL_T(target → z) = T²·KL(softmax(target/T) ‖ softmax(z/T)), batch mean: the distribution being trained is z
(the reference code's ``kl_loss(output, target)``). In the issue's notation step 2 is "KL_T(student ‖ DAT)"
and step 3 "KL_T(DAT ‖ student)": the first argument is the side that learns. The server averages A_S,
uniformly over the cohort; A_C and the head never leave their client.

Defaults follow the reference code (``src/train/main.py``, ``task_trainer.py``, ``models/adapter.py``):

* the classification head is personal (``head=personal``: the reference's ``personal_params_names``
  include the task heads and only ``adapter_1`` = A_S is communicated); it is trained in both steps (one
  optimizer over every trainable parameter there) and kept in the client-state store with A_C;
* aggregation is uniform (``aggregation=uniform``: ``get_average_net`` with ``nums = [1, ...]``);
* adapters are initialised as BERT weights, normal(0, 0.02) with zero biases, both projections
  (``adapter_init=bert``), so the model does not start exactly as the backbone;
* a client seen for the first time starts with A_C and the head at their initial values (drawn from
  ``seed``), the same for every client and process.

Named deviations (options, each with its reason in ``docs/algorithms.md``): ``head=shared`` (the head
averaged with A_S and frozen in step 3: a global model that needs no client state), ``aggregation=samples``,
``adapter_sites=attn,mlp``, ``adapter_init=identity`` (up-projection zero: Houlsby et al.'s identity start).
Where hpcfed differs from the reference in all settings: the adapter sits on the FFN's dense output before the
residual and LayerNorm (Houlsby placement, :mod:`hpcfed.peft.adapter`) where the reference applies it to
``LayerNorm(dense + input)`` and re-applies that LayerNorm; the head's AdamW moments are its own (two
updates per batch, as in the reference) but A_S, A_C and the head are clipped per buffer
(``fl.local.max_grad_norm``); the learning-rate schedule is hpcfed's per-round one, not the reference's
per-step linear warm-up and decay.

Choices where the paper is silent (documented in docs/results/feddat.md):

* the moments of the local optimizers restart every round (the reference code builds a new optimizer per
  local training);
* personalised metrics are measured on each client's own held-out split (``fl.local_only_holdout`` of its
  examples, never trained on).
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from hpcfed.config import Config, ConfigError
from hpcfed.data import ClientData
from hpcfed.algorithms import feddat_eval
from hpcfed.algorithms.kd import mkd_loss
from hpcfed.algorithms.registry import register
from hpcfed.fl.algorithm import Algorithm
from hpcfed.fl.baselines import split_holdout
from hpcfed.fl.client import (
    LocalResult,
    LocalTrainer,
    autocast_ctx,
    batch_to,
    length_buckets,
    local_batches,
)
from hpcfed.fl.optim import FlatOptimizer
from hpcfed.fl.state_store import ClientStateStore
from hpcfed.peft import FlatParams, is_head
from hpcfed.peft.adapter import ADAPTER_SITES
from hpcfed.peft.dual_adapter import DualAdapter, Mode, add_dual_adapters, init_bert_weights_

if TYPE_CHECKING:  # pragma: no cover
    from hpcfed.fl.loop import FederatedLoop

STATE_KEY = "A_C"
HEAD_KEY = "head"


@dataclass(frozen=True)
class FedDATParams:
    """FedDAT hyperparameters (``fl.algo.*``); defaults from Chen et al., AAAI 2024 and its code.

    The adapters' size and placement come from ``peft.adapter_reduction_factor`` / ``peft.adapter_variant``;
    the local optimizer, batch size, steps and learning rate of A_S from ``fl.local``.
    """

    kd_temperature: float = 3.0
    """T of the distillation terms KL_T (reference code: ``temp=3``); the KL is scaled by T²."""
    kd_weight: float = 1.0
    """λ: weight of the KL term against the task loss; each update minimises ½·(CE + λ·KL) (paper: equal)."""
    client_lr: float | None = None
    """Learning rate of A_C; null uses ``fl.local.lr`` (the reference code has one optimizer for both)."""
    variant: str = "dat"
    """'dat' (FedDAT), or 'single': the FedAvg baseline in the same setting — one adapter (A_S) trained on
    the task loss alone, the same held-out splits and the same evaluation."""
    eval_clients: int = 20
    """Personalised evaluation covers at most this many clients (the lowest ids among those trained so
    far), on their held-out splits; 0 turns it off."""
    eval_test_clients: int = 0
    """Also evaluate the DAT and A_C-only models of this many of those clients on the global test split
    (costs one pass over the test split per client and mode)."""
    state_cache: int = 64
    """Client states kept decoded in memory per process (LRU)."""
    head: str = "personal"
    """'personal' (reference code: each client's own head, trained in both MKD steps, never averaged) or
    'shared' (deviation: the head is averaged with A_S and frozen in step 3)."""
    aggregation: str = "uniform"
    """'uniform' (reference code: every client of the cohort weighs 1) or 'samples' (by training examples)."""
    adapter_sites: str = "mlp"
    """Comma-separated sites per block: 'mlp' (reference code: one adapter at the FFN output) or 'attn,mlp'."""
    adapter_init: str = "bert"
    """'bert' (reference code: both projections normal(0, 0.02), zero biases) or 'identity' (up-projection
    zero, so every mode starts as the backbone)."""

    def __post_init__(self) -> None:
        if not self.kd_temperature > 0:
            raise ConfigError(f"fl.algo.kd_temperature={self.kd_temperature}: must be > 0")
        if self.kd_weight < 0:
            raise ConfigError(f"fl.algo.kd_weight={self.kd_weight}: must be >= 0")
        if self.client_lr is not None and not self.client_lr > 0:
            raise ConfigError(f"fl.algo.client_lr={self.client_lr}: must be > 0")
        if self.variant not in ("dat", "single"):
            raise ConfigError(f"fl.algo.variant={self.variant!r} is not valid; choose one of: dat, single")
        for k in ("eval_clients", "eval_test_clients", "state_cache"):
            if getattr(self, k) < 0:
                raise ConfigError(f"fl.algo.{k}={getattr(self, k)}: must be >= 0")
        for k, choices in (("head", ("personal", "shared")), ("aggregation", ("uniform", "samples")),
                           ("adapter_init", ("bert", "identity"))):
            if getattr(self, k) not in choices:
                raise ConfigError(f"fl.algo.{k}={getattr(self, k)!r} is not valid; choose one of: "
                                  f"{', '.join(choices)}")
        sites = self.sites
        if not sites or len(set(sites)) != len(sites) or not set(sites) <= set(ADAPTER_SITES):
            raise ConfigError(f"fl.algo.adapter_sites={self.adapter_sites!r}: give 'mlp', 'attn' or 'attn,mlp'")

    @property
    def sites(self) -> tuple[str, ...]:
        """``adapter_sites`` as a tuple, in block order (attn before mlp)."""
        given = {s.strip() for s in self.adapter_sites.split(",") if s.strip()}
        return tuple(s for s in ADAPTER_SITES if s in given) + tuple(sorted(given - set(ADAPTER_SITES)))


@register
class FedDAT(Algorithm):
    """FedDAT (Chen et al., AAAI 2024): shared adapter A_S federated, client adapter A_C kept per client in a
    :class:`~hpcfed.fl.state_store.ClientStateStore`, both trained by mutual distillation with the DAT.

    The flat buffer (what is sent and averaged) is A_S of every site + the head; A_C and Â_S live in two
    further flat buffers of the same model (``client_flat``, ``global_flat``) that never enter aggregation.

    Args:
        cfg: the run config (``fl.algo`` -> :class:`FedDATParams`).
    """

    name = "feddat"
    supports_dp = False  # client masks / per-client state: not one clipped update per client
    supports_robust = False  # the same: a robust rule would read an unsent (masked) entry as 0
    Params = FedDATParams

    def __init__(self, params: FedDATParams, fl):
        super().__init__(params, fl)
        self.sites: list[DualAdapter] = []
        self.client_flat: FlatParams | None = None
        self.global_flat: FlatParams | None = None
        self.head_flat: FlatParams | None = None  # head=personal: the client's head (else in the flat buffer)
        self.store: ClientStateStore | None = None  # the engine's, handed over in setup
        self.holdout_seed = 0
        self._checkpoint = None
        self.round_idx = 0
        self._started = False

    @property
    def dat(self) -> bool:
        return self.params.variant == "dat"

    @property
    def personal_head(self) -> bool:
        return self.params.head == "personal"

    @property
    def keeps_state(self) -> bool:
        """Whether clients keep state between rounds (A_C with the DAT, the head when it is personal)."""
        return self.dat or self.personal_head

    def client_weight(self, num_samples: int) -> float:
        """1 with ``aggregation=uniform`` (reference code), else the engine's ``fl.weighting`` rule."""
        return 1.0 if self.params.aggregation == "uniform" else super().client_weight(num_samples)

    @classmethod
    def check_config(cls, params, cfg: Config) -> None:
        if cfg.peft.method != "adapter":
            raise ConfigError(f"peft.method={cfg.peft.method!r}: fl.algorithm=feddat uses bottleneck adapters; "
                              "set peft.method=adapter (size and placement from peft.adapter_*)")
        if cfg.fl.mode != "federated":
            raise ConfigError(f"fl.mode={cfg.fl.mode!r}: fl.algorithm=feddat needs fl.mode=federated")

    # -- construction ----------------------------------------------------------------------------------
    def build(self, cfg: Config, device: torch.device, dataset) -> tuple[nn.Module, FlatParams]:
        """The classifier with a :class:`DualAdapter` per site; returns (model, flat buffer of A_S, + the head
        with ``head=shared``).

        ``self.client_flat`` holds A_C and ``self.global_flat`` Â_S (same layout order as A_S in the flat
        buffer), ``self.head_flat`` the head with ``head=personal``. Seeded by ``cfg.seed``: every process
        builds the same initial adapters and head.
        """
        from hpcfed.models import build_model

        num_classes = cfg.model.num_classes or dataset.num_classes
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, num_classes, class_names=dataset.class_names).to(device)
        for p in model.parameters():
            p.requires_grad_(False)
        self.sites = add_dual_adapters(model, cfg.peft.adapter_reduction_factor, cfg.peft.adapter_variant,
                                       sites=self.params.sites)
        if self.params.adapter_init == "bert":
            for site in self.sites:
                init_bert_weights_(site)
        names = [n for n, _ in model.named_parameters()]
        shared = [n for n in names if ".shared." in n]
        heads = [n for n in names if is_head(n)]
        # FlatParams freezes every other parameter, so the buffer built last is the trainable one.
        self.global_flat = FlatParams(model, [n.replace(".shared.", ".global_copy.") for n in shared])
        self.client_flat = FlatParams(model, [n.replace(".shared.", ".client.") for n in shared])
        self.head_flat = FlatParams(model, heads) if self.personal_head else None
        flat = FlatParams(model, shared + ([] if self.personal_head else heads))
        for p in self.global_flat.params + self.client_flat.params:
            p.requires_grad_(False)
        if self.head_flat is not None:  # trained in both steps, with the A_S of step 2 and the A_C of step 3
            self.head_init = self.head_flat.data.detach().clone()
            for p in self.head_flat.params:
                p.requires_grad_(True)
        by_name = {s.name: s for s in flat.layout}
        self._shared_idx = torch.cat([
            torch.arange(by_name[s.name.replace(".global_copy.", ".shared.")].offset,
                         by_name[s.name.replace(".global_copy.", ".shared.")].end)
            for s in self.global_flat.layout]).to(device)
        self.client_init = self.client_flat.data.detach().clone()  # A_C of a client never trained
        if not self.dat:
            self.client_flat.data.zero_()
        return model, flat

    def setup(self, loop: FederatedLoop) -> None:
        if self.client_flat is None:
            raise ConfigError("fl.algorithm=feddat: the model was not built by FedDAT.build")
        self.store = loop.client_state_store("client_state", cache_size=self.params.state_cache)
        self.holdout_seed, self._checkpoint = loop.cfg.seed, loop.cfg.checkpoint
        c = self.fl.local
        backend = loop.trainer.kernel_backend
        self._opt_s = FlatOptimizer(c, (loop.flat.numel,), loop.device, lr_scale=loop.trainer.lr_scale,
                                    backend=backend)
        self._opt_c = FlatOptimizer(c, (self.client_flat.numel,), loop.device, backend=backend)
        if self.head_flat is not None:
            self._opt_h = FlatOptimizer(c, (self.head_flat.numel,), loop.device, backend=backend)

    @contextlib.contextmanager
    def mode(self, mode: Mode):
        """Switch every site to ``mode`` for the duration of the block."""
        old = [s.mode for s in self.sites]
        for s in self.sites:
            s.mode = mode
        try:
            yield
        finally:
            for s, m in zip(self.sites, old):
                s.mode = m

    def load_global_copy(self, theta_global: torch.Tensor) -> None:
        """Â_S ← the A_S part of ``theta_global`` (n,)."""
        self.global_flat.data.copy_(theta_global[self._shared_idx])

    def client_state(self, cid: int, before_round: int) -> torch.Tensor:
        """A_C of client ``cid`` as of the end of its newest round < ``before_round`` (initial if none).

        Raises:
            ValueError: the stored state does not fit this model.
        """
        return self._stored(cid, before_round, STATE_KEY, self.client_flat, self.client_init)

    def client_head(self, cid: int, before_round: int) -> torch.Tensor:
        """The personal head of client ``cid`` (flat, ``head_flat`` layout) as of its newest round <
        ``before_round``; the initial head if none. Raises ValueError as :meth:`client_state`."""
        return self._stored(cid, before_round, HEAD_KEY, self.head_flat, self.head_init)

    def _stored(self, cid: int, before_round: int, key: str, flat: FlatParams, init: torch.Tensor) -> torch.Tensor:
        st = self.store.get(cid, before_round)
        if st is None or key not in st:
            return init
        t = st[key]
        if t.numel() != flat.numel:
            raise ValueError(f"client {cid}: stored {key} has {t.numel()} elements, the model {flat.numel}")
        return t

    def load_client(self, cid: int, before_round: int) -> None:
        """Load client ``cid``'s own state (A_C with the DAT, its head when personal) into the model."""
        if self.dat:
            self.client_flat.data.copy_(self.client_state(cid, before_round))
        if self.head_flat is not None:
            self.head_flat.data.copy_(self.client_head(cid, before_round))

    # -- one round -------------------------------------------------------------------------------------
    def on_round_start(self, loop: FederatedLoop, round_idx: int) -> None:
        self.round_idx = round_idx
        if not self._started:
            # First round of this process (fresh or resumed at round_idx - 1): versions of rounds ≥ round_idx
            # belong to a crashed or an earlier run and must not be read; delete them before anyone writes.
            self._started = True
            if self.keeps_state:  # one process purges the shared store; all meet before anyone reads it
                loop.comm.on_main(lambda: self.store.purge_from(round_idx), share_result=False)
                self.store.clear_cache()

    def local_update(self, trainer: LocalTrainer, theta_global: torch.Tensor, data: ClientData, seed: int,
                     client_id: int) -> LocalResult:
        """Train client ``client_id`` for one round (MKD, two updates per batch; module docstring).

        The client trains on its examples minus its held-out split; A_S (+ the head with ``head=shared``) is
        left in ``trainer.flat``; A_C and a personal head are written to the store as version
        ``(client_id, round)``.
        """
        p, c, dev = self.params, trainer.cfg, trainer.device
        model, flat = trainer.model, trainer.flat
        train, _ = split_holdout(data, self.fl.local_only_holdout, self.holdout_seed, client_id)
        flat.data.copy_(theta_global)
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)  # dropout
        batches = local_batches(len(train), c.batch_size, epochs=c.epochs, steps=c.steps, generator=gen)
        lr_s = trainer.lr
        lr_c = lr_s * (p.client_lr / c.lr) if p.client_lr is not None else lr_s
        lr_h = lr_s * (c.head_lr / c.lr) if c.head_lr is not None else lr_s
        head = self.head_flat
        self._opt_s.reset()
        self.load_client(client_id, self.round_idx)
        if self.dat:
            self.load_global_copy(theta_global)
            self._opt_c.reset()
        if head is not None:
            self._opt_h.reset()
        head_steps = 2 if self.dat else 1  # the head is updated in both MKD steps (one AdamW in the reference)
        model.train()
        loss_sum = torch.zeros((), device=dev)
        last = first = torch.zeros((), device=dev)
        seen = 0
        pack = trainer.pack and train.lengths is not None  # padding-free batches (fl.local.packing)
        fwd = functools.partial(model, pack=True) if pack else model
        for step, idx in enumerate(batches, start=1):
            parts = [(batch_to(train, part, dev), len(part) / len(idx))
                     for part in ([idx] if pack else length_buckets(train, idx, c.length_buckets))]
            teacher: list[torch.Tensor | None] = [None] * len(parts)
            if self.dat:  # 1. DAT logits, no gradient
                with torch.no_grad(), self.mode(Mode.DAT), autocast_ctx(dev, c.bf16):
                    teacher = [fwd(x, lengths).float() for (x, _, lengths), _ in parts]
            # 2. A_S and the head on CE + KL_T(DAT -> student)
            flat.zero_grad()
            if head is not None:
                head.zero_grad()
            student = []
            ce_batch = torch.zeros((), device=dev)
            with self.mode(Mode.STUDENT):
                for ((x, y, lengths), share), t in zip(parts, teacher):
                    with autocast_ctx(dev, c.bf16):
                        logits = fwd(x, lengths).float()
                    (mkd_loss(logits, y, t, p.kd_temperature, p.kd_weight) * share).backward()
                    student.append(logits.detach())
                    ce_batch += F.cross_entropy(logits.detach(), y) * share
            self._opt_s.step(flat.data, flat.grad, step=step, lr=lr_s)
            if head is not None:
                self._opt_h.step(head.data, head.grad, step=head_steps * (step - 1) + 1, lr=lr_h)
            if self.dat:  # 3. A_C (+ a personal head) inside the DAT on CE + KL_T(student -> DAT); A_S frozen
                self.client_flat.zero_grad()
                if head is not None:
                    head.zero_grad()
                for q in flat.params:
                    q.requires_grad_(False)
                for q in self.client_flat.params:
                    q.requires_grad_(True)
                try:
                    with self.mode(Mode.DAT):
                        for ((x, y, lengths), share), s in zip(parts, student):
                            with autocast_ctx(dev, c.bf16):
                                logits = fwd(x, lengths).float()
                            (mkd_loss(logits, y, s, p.kd_temperature, p.kd_weight) * share).backward()
                finally:
                    for q in self.client_flat.params:
                        q.requires_grad_(False)
                    for q in flat.params:
                        q.requires_grad_(True)
                self._opt_c.step(self.client_flat.data, self.client_flat.grad, step=step, lr=lr_c)
                if head is not None:
                    self._opt_h.step(head.data, head.grad, step=2 * step, lr=lr_h)
            last = ce_batch.detach()
            if step == 1:
                first = last
            loss_sum += last * len(idx)
            seen += len(idx)
        loss = float(loss_sum)
        if self.keeps_state and math.isfinite(loss):
            state = {STATE_KEY: self.client_flat.data} if self.dat else {}
            if head is not None:
                state[HEAD_KEY] = head.data
            self.store.put(client_id, self.round_idx, state)
        return LocalResult(loss, seen, len(batches), float(last), float(first) if batches else math.nan)

    def after_round(self, loop: FederatedLoop, round_idx: int) -> dict:
        """One process prunes client-state versions no kept checkpoint can need (module docstring of
        :mod:`hpcfed.fl.state_store`); nothing with ``checkpoint.every_rounds=0``."""
        ck = self._checkpoint
        if self.keeps_state and ck.every_rounds > 0:
            keep_from = round_idx - ck.every_rounds * (ck.keep_last + 1)
            # Others never read what it deletes; after its first full scan the store lists only the clients of
            # the rounds since the last prune (the cohort is the only writer: :meth:`local_train`).
            loop.comm.main_only(lambda: self.store.prune(keep_from, written=loop.cohort))
        return {}

    # -- evaluation ------------------------------------------------------------------------------------
    def eval_clients(self, loop: FederatedLoop) -> list[int]:
        """The clients of the personalised evaluation (:func:`hpcfed.algorithms.feddat_eval.eval_clients`)."""
        return feddat_eval.eval_clients(loop, self.round_idx, self.params.eval_clients)

    def evaluate(self, loop: FederatedLoop) -> dict[str, Any]:
        """Global and personalised metrics; see :func:`hpcfed.algorithms.feddat_eval.evaluate_feddat`."""
        return feddat_eval.evaluate_feddat(self, loop)

    def on_restore(self, loop: FederatedLoop, rounds_done: int) -> None:
        """Evaluate as after round ``rounds_done``: clients' A_C and heads are read from the run's store as of
        that round (nothing is purged)."""
        self.round_idx, self._started = rounds_done, True

    # -- checkpoint state ------------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Nothing: A_C lives in the versioned store on disk. Resuming from round R reads, for each client,
        its newest version < R + 1 (and purges versions ≥ R + 1 at the first resumed round), which is
        exactly its state at the end of round R; Â_S is θ_global's A_S and the optimizers restart each round."""
        return {}
