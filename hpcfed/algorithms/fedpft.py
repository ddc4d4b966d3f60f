"""FedPFT: federated proxy fine-tuning — clients train LoRA on a compressed, distilled sub-model; the server
plugs the averaged LoRA into the full model.

Peng, Fan, Chen, Wang, Pan, Wen, Zhang, Wang, "FedPFT: Federated Proxy Fine-Tuning of Foundation Models",
IJCAI 2024 (arXiv:2404.11536); authors' code github.com/pzp-dzd/FedPFT.

1. Sub-model construction (Sec. 4.1): in every compressed layer (default: all but the first and the last) keep
   the top-k FFN neurons by saliency ‖[W1 row, W2 column]‖₂, k = round(keep_ratio · F); attention,
   LayerNorms, embeddings and the other layers are copied (:func:`hpcfed.models.submodel.build_submodel`).
2. Stage 1, layer-level distillation before FL (Sec. 4.2): the sub-model's compressed layers are distilled
   from the full model on public, unlabelled text; loss per compressed layer
   mean((h_t − h_s)²)/mean(h_t²) + α·mean((W2ᵗW1ᵗ − W2ˢW1ˢ)²)/mean((W2ᵗW1ᵗ)²), averaged over layers; as in the
   authors' code the weight term is computed from ``.weight.data`` and gives no gradient
   (``weight_term=detached``; ``trained`` is the deviation that backpropagates it).
3. Rounds: clients train LoRA (``peft.method=lora``; ``configs/algo/fedpft.yaml`` targets query, key, value and
   the attention output, as the authors' code, + the head) on the sub-model; the server averages the flat LoRA
   buffer uniformly over the cohort (authors' ``--aggregate uniform``; ``aggregation=samples`` weighs by
   examples) with the loop's one all-reduce; the attention is unchanged, so the averaged LoRA
   plugs into the full model, which is what :meth:`FedPFT.evaluate` reports (``test_acc``; the sub-model's
   accuracy is ``sub_test_acc``).
4. Stage 2, neuron-level alignment every ``align_every`` rounds (Sec. 4.2): during the local training of
   that round the clients count, per neuron of each compressed FFN, zero activations (APoZ); the counts are
   summed over processes by one extra small all-reduce (tag ``apoz``, 1 + Σ k floats); the server freezes
   ``freeze_ratio`` of the neurons of each layer and re-distils the others (hidden-state loss only, as the
   authors' code) on public data, with the current global LoRA in both models.

Choices where the paper (or this code base) leaves a detail open — all recorded here:

* **Public data**: ``public_samples`` sentences drawn (seeded by ``public_seed``) from ``public_source``,
  by default the ``data.reserve_train_samples`` rows of ``data.source`` that the data pipeline withholds from
  every client (:func:`hpcfed.data.reserved_rows`), without labels, tokenized like the client shards
  (``data.tokenizer`` or ``model.path``, ``data.max_length``): disjoint from every client's data. The test
  split is never used. The paper distils on BookCorpus + Wikipedia, which are not available offline here.
* **Zero activation** (MiniLM/BERT use GELU, which is exactly zero almost nowhere): a neuron is "zero" on a
  token when its GELU output is ≤ 0, i.e. its pre-activation is ≤ 0 (GELU's negative half). Only real tokens
  count (padding excluded). The authors' code tests ``== 0`` and counts padding. Counts are collected only
  in the rounds that end with an alignment (as the authors' clients do).
* **Which neurons are frozen**: ``freeze='active'`` (default) freezes the share with the LOWEST APoZ (the
  neurons the clients' data activate most) and re-distils the rest — this is what the authors' code does
  (``align_retained_ratio``: ``sort(APoZ)[:int(F·r)]`` are kept out of training). ``freeze='inactive'``
  freezes the least active share instead. Frozen neurons stay bitwise unchanged; b2 and the FFN LayerNorm
  are re-distilled (authors' code; ``align_layernorm=false`` keeps the LayerNorm fixed).
* **Distillation optimiser**: AdamW, no weight decay, batch ``distill_batch_size``, fp32, eval mode (no
  dropout). Stage 1: ``distill_steps`` steps at ``distill_lr`` decaying linearly to 0; stage 2: ``align_steps``
  at ``align_lr`` (6e-4, the authors' text code) with a linear warm-up over ``align_warmup`` of the steps, then
  linear decay. The paper's budget (one epoch of BookCorpus+Wikipedia) does not fit a 2-core CPU.
* **A sub-model arm without any distillation**: ``distill_steps=0 align_every=0`` (the paper's central claim is
  that alignment matters; it runs beside the other arms in a study).
* **No alignment in the last round** (the full model, which is what is evaluated, does not depend on it).
* **Determinism across processes**: every process runs the same seeded distillation (stage 1 in :meth:`setup`,
  stage 2 in :meth:`after_round`), then the main process's distilled tensors overwrite the others' by
  ``comm.broadcast`` (tag ``submodel``). So every process holds bitwise the same sub-model whatever their
  number; APoZ counts are integers summed exactly in float64. Not ``comm.on_main``: the others would idle for the
  whole distillation (on MPNet-base 100 stage-1 steps take over 20 min on one CPU core; before ``on_main`` had a
  heartbeat, that wait also outlasted ``dist.timeout_s`` and killed the job). Each rank owns its device (or its
  share of the cores), so the redundant distillation costs no wall time.
* **Communication**: only the flat LoRA(+head) buffer is aggregated (the loop counts ``bytes_up`` /
  ``bytes_down``). A real deployment also ships the sub-model once (``submodel_bytes``) and, after each
  alignment, its re-distilled FFN tensors (``align_bytes_down`` per client) and receives the APoZ counts
  (``apoz_bytes_up``, 4 bytes per neuron per client); these are reported as metrics.
* ``keep_ratio=1``, ``distill_steps=0``, ``align_every=0`` is federated LoRA on the full model: bitwise
  FedAvg (tested), with FedPFT's extra metrics (client step time, parameter counts).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch

from hpcfed.config import Config, ConfigError
from hpcfed.data import ClientData
from hpcfed.algorithms import fedpft_submodel as sm
from hpcfed.algorithms.registry import register
from hpcfed.fl.algorithm import Algorithm
from hpcfed.fl.client import LocalResult, LocalTrainer

if TYPE_CHECKING:  # pragma: no cover
    from hpcfed.fl.loop import FederatedLoop

log = logging.getLogger("hpcfed.algorithms.fedpft")


@dataclass(frozen=True)
class FedPFTParams:
    """FedPFT hyperparameters (``fl.algo.*``). Where the paper gives no value for this scale, the default is
    ours or the authors' code's, as noted."""

    keep_ratio: float = 1.0 / 3.0
    """Share k/F of FFN neurons kept in each compressed layer (authors' code: 1024 of BERT-base's 3072)."""
    compressed_layers: str = "inner"
    """'inner' (all but the first and last layer: the paper's default), 'all', or indices '1,2,3'."""
    public_source: Optional[str] = None
    """CSV/TSV with a ``data.text_column`` column of public text; null: the ``data.reserve_train_samples``
    rows of ``data.source`` that no client receives (see module notes)."""
    public_samples: int = 2000
    """Public sentences drawn for distillation (ours)."""
    public_seed: int = 0
    """Seed of that draw and of the distillation batches (ours)."""
    distill_steps: int = 100
    """Stage-1 (layer-level) distillation steps (ours; 0 skips stage 1)."""
    distill_batch_size: int = 32
    """Distillation batch size (authors' code: 32 per device)."""
    distill_lr: float = 5e-4
    """Stage-1 learning rate (authors' code: 1e-4 over a far longer run; ours: larger for ~100 steps)."""
    weight_alpha: float = 1.0
    """α of the stage-1 FFN weight term (authors' code ``--distill_alpha`` default 1)."""
    align_every: int = 10
    """t: neuron-level alignment after every t-th round (authors' code ``--align_interval`` 10); 0: never."""
    align_steps: int = 20
    """Stage-2 distillation steps per alignment (ours; authors: 1% of an epoch of their corpus)."""
    align_lr: float = 6e-4
    """Stage-2 learning rate (authors' text code: 6e-4, with warm-up)."""
    align_warmup: float = 0.1
    """Share of the stage-2 steps with a linear learning-rate warm-up, then linear decay to 0 (the authors use
    a warm-up; this share is ours)."""
    align_layernorm: bool = True
    """Stage 2 also trains the FFN LayerNorm of each compressed layer (authors' code); false keeps it fixed."""
    weight_term: str = "detached"
    """Stage-1 FFN weight-product term: 'detached' (authors' code reads ``.weight.data``: the term is reported
    but gives no gradient) or 'trained' (deviation: it backpropagates into W1, W2)."""
    aggregation: str = "uniform"
    """'uniform' (authors' code ``--aggregate uniform``) or 'samples' (weighted by training examples)."""
    freeze_ratio: float = 0.5
    """Share of each compressed layer's neurons frozen at alignment (authors' ``--align_retained_ratio`` 0.5)."""
    freeze: str = "active"
    """'active': freeze the lowest-APoZ neurons (authors' code); 'inactive': freeze the highest-APoZ ones."""

    def __post_init__(self) -> None:
        def bad(key: str, why: str):
            raise ConfigError(f"fl.algo.{key}={getattr(self, key)!r}: {why}")

        if not 0.0 < self.keep_ratio <= 1.0:
            bad("keep_ratio", "must be in (0, 1]")
        if not 0.0 <= self.freeze_ratio <= 1.0:
            bad("freeze_ratio", "must be in [0, 1]")
        if self.freeze not in ("active", "inactive"):
            bad("freeze", "must be 'active' or 'inactive'")
        if self.weight_term not in ("detached", "trained"):
            bad("weight_term", "must be 'detached' or 'trained'")
        if self.aggregation not in ("uniform", "samples"):
            bad("aggregation", "must be 'uniform' or 'samples'")
        if not 0.0 <= self.align_warmup < 1.0:
            bad("align_warmup", "must be in [0, 1)")
        for k in ("public_samples", "distill_batch_size"):
            if getattr(self, k) < 1:
                bad(k, "must be >= 1")
        for k in ("distill_steps", "align_every", "align_steps"):
            if getattr(self, k) < 0:
                bad(k, "must be >= 0")
        for k in ("distill_lr", "align_lr"):
            if not getattr(self, k) > 0:
                bad(k, "must be > 0")
        if self.weight_alpha < 0:
            bad("weight_alpha", "must be >= 0")
        if self.compressed_layers not in ("inner", "all"):
            try:
                [int(s) for s in self.compressed_layers.split(",") if s.strip()]
            except ValueError:
                bad("compressed_layers", "expected 'inner', 'all' or comma-separated layer indices")


@register
class FedPFT(Algorithm):
    """FedPFT (Peng et al., IJCAI 2024): LoRA on a distilled sub-model, evaluated on the full model.

    See the module docstring for the method, its equations and every choice made where the paper is silent.

    Attributes (after :meth:`build` / :meth:`setup`):
        full_model: the full classifier with the same LoRA structure; its LoRA/head values are overwritten
            from θ_global for evaluation and alignment.
        full_flat: its flat buffer (same layout as the sub-model's).
        layers: compressed layer indices; kept: {layer: kept neuron indices of the full layer}.
    """

    name = "fedpft"
    supports_dp = False  # client masks / per-client state: not one clipped update per client
    supports_robust = False  # the same: a robust rule would read an unsent (masked) entry as 0
    Params = FedPFTParams

    @classmethod
    def check_config(cls, params, cfg: Config) -> None:
        if cfg.model.family != "hf_text":
            raise ConfigError(f"model.family={cfg.model.family!r}: fedpft needs a BERT-like hf_text backbone")
        if cfg.peft.method != "lora":
            raise ConfigError(f"peft.method={cfg.peft.method!r}: fedpft trains LoRA on the sub-model; set peft.method=lora")
        if cfg.fl.mode != "federated":
            raise ConfigError(f"fl.mode={cfg.fl.mode!r}: fedpft runs only in federated mode")
        uses_public = params.distill_steps > 0 or params.align_every > 0
        if uses_public and params.public_source is None and cfg.data.reserve_train_samples == 0:
            raise ConfigError("fl.algo.public_source=null: fedpft distils on rows of data.source no client holds; "
                              "set data.reserve_train_samples (e.g. 2000) or fl.algo.public_source=FILE")

    def client_weight(self, num_samples: int) -> float:
        """1 with ``aggregation=uniform`` (authors' code), else the engine's ``fl.weighting`` rule."""
        return 1.0 if self.p.aggregation == "uniform" else super().client_weight(num_samples)

    def __init__(self, params: FedPFTParams, fl):
        super().__init__(params, fl)
        self.p: FedPFTParams = self.params
        self.full_model = None
        self.full_flat = None
        self._sub = None
        self.layers: list[int] = []
        self.kept: dict[int, torch.Tensor] = {}
        self._public: Optional[ClientData] = None
        self._apoz: Optional[sm.ApozCounter] = None
        self._train_s = 0.0
        self._train_steps = 0
        self._info: dict = {}
        self._collect = False

    # -- construction ---------------------------------------------------------------------------------
    def build(self, cfg: Config, device: torch.device, dataset):
        """Full model → sub-model (top-k FFN neurons of the compressed layers) → LoRA on both.

        The sub-model gets its LoRA first, right after the full model is built from ``cfg.seed``, so with
        ``keep_ratio=1`` θ_0 is bitwise FedAvg's. Returns (sub-model, its flat buffer); the full model is kept
        on ``self.full_model``. Stage-1 distillation runs in :meth:`setup` (it needs the communicator).

        Raises:
            ConfigError: ``compressed_layers`` outside the encoder; the two LoRA layouts differ.
        """
        from hpcfed.models import build_model
        from hpcfed.peft import apply_peft

        num_classes = cfg.model.num_classes or dataset.num_classes
        torch.manual_seed(cfg.seed)
        full = build_model(cfg.model, num_classes, class_names=dataset.class_names).to(device)
        n_layers = len(sm.encoder_layers(full.backbone))
        try:
            self.layers = sm.default_compressed_layers(n_layers, self.p.compressed_layers)
        except ValueError as e:
            raise ConfigError(f"fl.algo.compressed_layers: {e}") from None
        sub, self.kept = sm.build_submodel(full, self.p.keep_ratio, self.layers)
        flat = apply_peft(sub, cfg.peft)
        self.full_flat = apply_peft(full, cfg.peft)
        if [(s.name, s.shape) for s in flat.layout] != [(s.name, s.shape) for s in self.full_flat.layout]:
            raise ConfigError("peft.lora_target_modules: fedpft needs LoRA only on unchanged modules "
                              "(attention), so the sub-model's LoRA fits the full model")
        self.full_flat.data.copy_(flat.data)
        self.full_model, self._sub = full, sub
        n_full = sum(p.numel() for p in full.parameters())
        n_sub = sum(p.numel() for p in sub.parameters())
        self._info = {"full_model_params": n_full, "sub_model_params": n_sub,
                      "sub_model_ratio": n_sub / n_full,
                      "submodel_bytes": 4 * (n_sub - flat.numel)}  # frozen sub-model shipped once, fp32
        self.device = device
        return sub, flat

    def setup(self, loop: "FederatedLoop") -> None:
        """Stage 1 (layer-level distillation) on every process, the main one's result shared exactly with the
        others; hooks for APoZ counting on the sub-model."""
        if self.layers and self.p.align_every > 0:
            self._apoz = sm.ApozCounter(loop.model.backbone, self.layers)
        if self.p.distill_steps > 0 and self.layers:
            t0 = time.perf_counter()
            rep = self._distill_shared(loop, frozen=None, steps=self.p.distill_steps, lr=self.p.distill_lr,
                                       seed=self.p.public_seed, weight_alpha=self.p.weight_alpha)
            self._info["stage1_s"] = time.perf_counter() - t0
            self._info.update(stage1_loss_first=rep.loss_first, stage1_loss_last=rep.loss_last)
            log.info("fedpft stage 1: %d steps, loss %.4f -> %.4f (%.1f s)", rep.steps, rep.loss_first,
                     rep.loss_last, self._info["stage1_s"])

    def _public_data(self, loop) -> ClientData:
        if self._public is None:
            self._public = sm.load_public_text(loop.cfg, self.p)
        return self._public

    def _distill_shared(self, loop, *, frozen, steps: int, lr: float, seed: int, weight_alpha: float,
                        warmup: float = 0.0, train_layernorm: bool = True):
        """Distil on every process (the same seeded steps), then broadcast the main process's distilled tensors
        to the others (tag ``submodel``): every process holds bitwise the same sub-model. Returns this process's
        :class:`DistillReport` (its losses; the processes ran the same steps).

        Every process distils rather than ``comm.on_main`` so that no process idles for the whole distillation
        (which, before ``on_main`` had a heartbeat, also outlasted ``dist.timeout_s``)."""
        student = loop.model.backbone
        params = sm.distilled_params(student, self.layers, with_layernorm=True)

        self.full_flat.data.copy_(loop.theta_global)  # the teacher carries the current global LoRA
        loop.flat.data.copy_(loop.theta_global)
        rep = sm.distill(self.full_model.backbone, student, self.layers, self._public_data(loop), steps=steps,
                         batch_size=self.p.distill_batch_size, lr=lr, seed=seed, device=loop.device,
                         weight_alpha=weight_alpha, frozen=frozen, warmup=warmup,
                         train_layernorm=train_layernorm, weight_term_grad=self.p.weight_term == "trained")
        buf = loop.comm.broadcast(sm.pack_params(params), tag="submodel")
        sm.unpack_params_(params, buf)
        return rep

    # -- one round ------------------------------------------------------------------------------------
    def _align_round(self, round_idx: int) -> bool:
        t = self.p.align_every
        return (self._apoz is not None and t > 0 and round_idx % t == 0 and round_idx < self.fl.rounds)

    def on_round_start(self, loop: "FederatedLoop", round_idx: int) -> None:
        self._collect = self._align_round(round_idx)
        self._train_s, self._train_steps = 0.0, 0

    def local_update(self, trainer: LocalTrainer, theta_global: torch.Tensor, data: ClientData,
                     seed: int, client_id: int) -> LocalResult:
        """FedAvg's local LoRA training on the sub-model, timed, with APoZ counting in alignment rounds."""
        trainer.flat.data.copy_(theta_global)
        if self._apoz is not None:
            self._apoz.active = self._collect
        t0 = time.perf_counter()
        try:
            res = trainer.train(data, seed, grad_hook=self.grad_hook(theta_global), mask=self.client_mask(client_id))
        finally:
            if self._apoz is not None:
                self._apoz.active = False
        self._train_s += time.perf_counter() - t0
        self._train_steps += res.steps
        return res

    def after_round(self, loop: "FederatedLoop", round_idx: int) -> dict:
        """Every ``align_every`` rounds: all-reduce the APoZ counts (tag ``apoz``), freeze, re-distil on
        every process and share the main one's sub-model (tag ``submodel``). Returns client-compute and
        alignment metrics. Every process reads the public rows (``fl.algo.public_source``)."""
        out = {"client_step_ms": 1000.0 * self._train_s / max(self._train_steps, 1)}
        if not self._align_round(round_idx):
            return out
        t0 = time.perf_counter()
        c = self._apoz
        buf = torch.cat([c.counts.reshape(-1), c.tokens.reshape(1)]).to(loop.device)
        buf = loop.comm.all_reduce_sum(buf, tag="apoz")
        counts, tokens = buf[:-1].cpu().view_as(c.counts), buf[-1].cpu()
        rates = sm.apoz(counts, tokens)  # (n_layers, k)
        frozen = {i: sm.freeze_mask(rates[j], self.p.freeze_ratio, self.p.freeze) for j, i in enumerate(self.layers)}
        rep = self._distill_shared(loop, frozen=frozen, steps=self.p.align_steps, lr=self.p.align_lr,
                                   seed=self.p.public_seed + round_idx, weight_alpha=0.0,
                                   warmup=self.p.align_warmup, train_layernorm=self.p.align_layernorm)
        c.reset()
        loop.flat.data.copy_(loop.theta_global)
        n_trained = sum(int((~f).sum()) for f in frozen.values())
        d = sm.encoder_layers(loop.model.backbone)[self.layers[0]].intermediate.dense.in_features
        out.update({
            "align": 1,
            "apoz_mean": float(rates.mean()),
            "apoz_bytes_up": 4 * counts.numel() * loop.cfg.fl.cohort_size,
            # re-distilled W1 rows + b1 entries + W2 columns of the unfrozen neurons, and b2 of each layer
            "align_bytes_down": 4 * (n_trained * (2 * d + 1) + len(self.layers) * d),
            "align_s": time.perf_counter() - t0,
        })
        out.update(align_loss_first=rep.loss_first, align_loss_last=rep.loss_last)
        return out

    # -- evaluation and state -------------------------------------------------------------------------
    def evaluate(self, loop: "FederatedLoop") -> dict:
        """``test_loss``/``test_acc`` of the FULL model with the global LoRA (the paper's metric), and
        ``sub_test_loss``/``sub_test_acc`` of the clients' sub-model (skipped when nothing is compressed),
        plus the parameter counts."""
        self.full_flat.data.copy_(loop.theta_global)
        out = dict(loop.evaluate_test(model=self.full_model))
        if self.layers and self.p.keep_ratio < 1.0:
            sub = loop.evaluate_test()
            out.update({f"sub_{k}": v for k, v in sub.items()})
        out.update(self._info)
        return out

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The sub-model's distilled tensors and the APoZ counts so far (exact resumption)."""
        if self.full_model is None or not self.layers:
            return {}
        params = sm.distilled_params(self._sub.backbone, self.layers, with_layernorm=True)
        out = {"submodel": sm.pack_params(params)}
        if self._apoz is not None:
            out["apoz_counts"] = self._apoz.counts.clone()
            out["apoz_tokens"] = self._apoz.tokens.clone()
        return out

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        if "submodel" in tensors:
            sm.unpack_params_(sm.distilled_params(self._sub.backbone, self.layers, with_layernorm=True),
                              tensors["submodel"])
        if self._apoz is not None and "apoz_counts" in tensors:
            self._apoz.counts.copy_(tensors["apoz_counts"])
            self._apoz.tokens.copy_(tensors["apoz_tokens"])
