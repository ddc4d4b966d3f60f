"""The config sections (``data`` from :mod:`~hpcfed.config.data_section`, ``model``, ``peft``, ``fl`` with ``fl.local`` / ``fl.server_opt`` / ``fl.dp`` / ``fl.attack``, ``eval``, ``dist``,
``checkpoint``): dataclasses with defaults and field docstrings, each validating its own values in
``__post_init__``. Cross-section checks live in :class:`hpcfed.config.Config` and at the composition root."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from hpcfed.config.checks import ConfigError, check_choice, check_fraction, check_positive
from hpcfed.config.data_section import (  # noqa: F401 - re-exported: the data section has its own module
    DATA_FORMATS, DATA_KINDS, PARTITIONS, QUANTITY_SKEWS, DataConfig,
)


MODEL_FAMILIES = ("hf_text", "timm_vit", "open_clip")


@dataclass
class ModelConfig:
    """Backbone and classification head."""

    family: str = "hf_text"
    """'hf_text' (transformers encoder: BERT, RoBERTa, MiniLM), 'timm_vit', or 'open_clip' (CLIP's vision
    tower with a head initialised from the text tower's class-name prompt embeddings)."""
    name: Optional[str] = None
    """A Hugging Face hub repo id (``org/repo``, optionally ``hf-hub:org/repo`` or ``org/repo@revision``) of the
    model's library: timm (``timm/vit_base_patch16_224.augreg_in21k``), open_clip (a repo with
    ``open_clip_config.json``, e.g. ``laion/CLIP-ViT-B-32-laion2B-s34B-b79K``) or transformers
    (``sentence-transformers/all-MiniLM-L6-v2``), per `family`. Read from the local HF cache (``HF_HUB_CACHE``);
    downloaded only with `allow_download`. Set it and `path: null` (see docs/models.md, "Hub models")."""
    path: Optional[str] = "${minilm_path:}"
    """Local folder with pre-trained weights (transformers folder, or a timm .safetensors/.pth file).
    null with pretrained=false builds from `arch` with random init."""
    arch: str = "bert"
    """Architecture for random init: a transformers model_type with `tiny` sizes below, or a timm name."""
    pretrained: bool = True
    """Load the weights at `path`; false keeps the architecture (from path or arch) with random init."""
    allow_download: bool = False
    """Download `name` from the hub when it is not in the local cache (off: ``HF_HUB_OFFLINE=1``, cache only;
    an ``HF_HUB_OFFLINE=1`` already in the environment wins)."""
    pooling: str = "mean"
    """Text: 'mean' (over real tokens, as sentence-transformers) or 'cls'."""
    num_classes: Optional[int] = None
    """null takes the number of classes from the shard index."""
    hidden_size: int = 32
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 64
    vocab_size: int = 1000
    """Sizes for random-init architectures (tests, tiny runs)."""
    img_size: Optional[int] = None
    """Input side (pixels). null: the pretrained model's own (hub config / timm architecture); 32 for
    ``arch=tiny``. Set with pretrained weights of another size: an error unless `resample`."""
    patch_size: Optional[int] = None
    """Patch side (pixels), as `img_size` (null: the model's own; 4 for ``arch=tiny``)."""
    resample: bool = False
    """Allow pretrained weights to be resampled to `img_size` / `patch_size` (position and patch embeddings;
    logged in one line). Off: a size that differs from the weights' is a one-line error."""
    dropout: float = 0.1
    """Classifier dropout before the head."""
    clip_prompt_template: str = "a photo of a {}."
    """open_clip: text prompt per class name used to initialise the head (zero-shot classifier)."""

    def __post_init__(self) -> None:
        check_choice("model.family", self.family, MODEL_FAMILIES)
        check_choice("model.pooling", self.pooling, ("mean", "cls"))
        check_fraction("model.dropout", self.dropout)
        if self.arch == "tiny" and self.name is None:  # the random test backbones' sizes when not given
            self.img_size = self.img_size or 32
            self.patch_size = self.patch_size or 4
        for k in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "vocab_size", "img_size",
                  "patch_size"):
            check_positive(f"model.{k}", getattr(self, k))
        if self.name is not None:
            if not self.name.strip() or self.name.startswith("local-dir:"):
                raise ConfigError(f"model.name={self.name!r}: give a hub repo id 'org/repo' (a local folder goes "
                                  "in model.path)")
            if self.path:
                raise ConfigError(f"model.name={self.name!r} and model.path={self.path!r}: give one (set "
                                  "model.path=null to load the hub model)")
            return
        if not self.pretrained and not self.path and not self.arch:
            raise ConfigError("model.arch must be set when model.path is null")
        if self.pretrained and not self.path:
            raise ConfigError("model.path must name a local folder/file (or model.name a hub id) when "
                              "model.pretrained=true")




@dataclass
class PeftConfig:
    """Which parameters are trained and federated. The classification head is always trained."""

    method: str = "bias"
    """'bias' (BitFit), 'lora' (peft library), 'adapter' (bottleneck adapters), 'prompt' (learnable prompt
    tokens), 'head' (linear probe), 'full' (all parameters), 'peft' (any Hugging Face peft config, given in
    ``peft.config``), or a method registered by a plugin; checked against the registry
    (:data:`hpcfed.peft.METHODS`) by :func:`hpcfed.compose.validate`."""
    adapter_reduction_factor: int = 16
    """Adapter bottleneck = hidden size / reduction factor."""
    adapter_variant: str = "sequential"
    """'sequential' (Houlsby: after attention and after the MLP) or 'parallel' (beside them)."""
    prompt_length: int = 10
    """Number of learnable prompt tokens."""
    prompt_depth: str = "shallow"
    """'shallow' (VPT-shallow: prompts at the input only) or 'deep' (VPT-deep: new prompts at every layer)."""
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_target_modules: Optional[list[str]] = None
    """Module names for LoRA; null picks the attention projections of the backbone family."""
    lora_freeze_a: bool = False
    """FFA-LoRA (Sun, Li, Li, Ding, "Improving LoRA in Privacy-preserving Federated Learning", ICLR 2024): the
    A matrices keep their seeded random init (the same on every client) and only B (and the head) train and are
    averaged, so the average of the clients' B A products is the product of the averages (FedAvg of both
    factors is not); halves LoRA's bytes per round."""
    config: dict[str, Any] = field(default_factory=dict)
    """method=peft: a Hugging Face peft config as a mapping, passed to ``peft.get_peft_config``, e.g.
    ``{peft_type: IA3, target_modules: [key, value, output.dense], feedforward_modules: [output.dense]}``,
    ``{peft_type: LORA, r: 8, use_dora: true}`` (DoRA) or ``{peft_type: LOHA, r: 4, target_modules: [query]}``;
    without target_modules peft's defaults for the backbone's model type apply (transformers backbones)."""

    def __post_init__(self) -> None:
        check_choice("peft.adapter_variant", self.adapter_variant, ("sequential", "parallel"))
        check_choice("peft.prompt_depth", self.prompt_depth, ("shallow", "deep"))
        check_positive("peft.adapter_reduction_factor", self.adapter_reduction_factor)
        check_positive("peft.prompt_length", self.prompt_length)
        check_positive("peft.lora_rank", self.lora_rank)
        check_positive("peft.lora_alpha", self.lora_alpha)
        check_fraction("peft.lora_dropout", self.lora_dropout)


LOCAL_OPTIMIZERS = ("sgd", "adamw")


@dataclass
class ServerOptConfig:
    """Server optimizer applied to the aggregated pseudo-gradient (Reddi et al., ICLR 2021)."""

    name: str = "avg"
    """'avg' (FedAvg), 'avgm' (FedAvgM, server momentum), 'adam' (FedAdam), 'yogi' (FedYogi); checked against
    the kernels' registry (:data:`hpcfed.kernels.SERVER_OPTIMIZERS`) by :func:`hpcfed.compose.validate`."""
    lr: float = 1.0
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-3
    """τ, the adaptivity constant of FedAdam/FedYogi."""
    bias_correction: bool = True

    def __post_init__(self) -> None:
        check_positive("fl.server_opt.lr", self.lr)
        check_fraction("fl.server_opt.momentum", self.momentum)
        check_fraction("fl.server_opt.beta1", self.beta1)
        check_fraction("fl.server_opt.beta2", self.beta2)
        check_positive("fl.server_opt.eps", self.eps)


@dataclass
class LocalConfig:
    """A client's local training in one round."""

    epochs: int = 1
    """Local epochs; used when steps is null."""
    steps: Optional[int] = None
    """Local optimizer steps; overrides epochs when set."""
    batch_size: int = 32
    optimizer: str = "adamw"
    lr: float = 1e-3
    head_lr: Optional[float] = None
    """Learning rate of the classification head; null uses lr."""
    momentum: float = 0.0
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    max_grad_norm: Optional[float] = None
    bf16: bool = False
    """bf16 autocast for forward/backward (trainable master weights stay fp32)."""
    lr_schedule: str = "constant"
    """Local learning rate over rounds: 'constant', or 'cosine' from lr at round 1 to lr·lr_min_ratio at the
    last round. A decaying local lr is what FedAvg needs to converge on non-IID data (Li et al., "On the
    Convergence of FedAvg on Non-IID Data", ICLR 2020)."""
    lr_min_ratio: float = 0.1
    logit_adjust_tau: float = 0.0
    """Logit-adjusted local loss for label skew: CE(logits + τ·log p_client) with the client's smoothed label
    prior p_client (Menon et al., ICLR 2021; in FL: Zhang et al., FedLC, ICML 2022). 0 is plain CE.
    Evaluation always uses the plain logits."""
    packing: bool = True
    """Text: run each batch padding-free: its sequences are packed into rows no longer than its longest
    sequence, with restarted position ids and block-diagonal attention (hpcfed/models/packing.py). Exact up to
    fp reduction order (dropout draws differ from the padded path's). Falls back to ``length_buckets``, with one
    log line, for backbones it does not know and for soft prompts. The client-parallel path
    (``client_group_size`` > 1) always pads with ``length_buckets``."""
    length_buckets: int = 4
    """Text, without packing: split each batch, sorted by length, into this many micro-batches, each padded
    only to its own longest sequence, and sum their gradients (exact: padding is masked). 1 pads the whole
    batch."""
    compile: bool = False
    """torch.compile the model for local training (dynamic shapes; the first steps compile; needs a C++
    compiler on CPU)."""
    cache_frozen_features: bool = True
    """peft.method=head: the frozen backbone's pooled features of each example are computed once (backbone in
    eval mode, so no dropout inside it) and reused by every later step and round; only the head runs per step.
    Exact with respect to training the head on an eval-mode backbone."""
    client_group_size: int = 1
    """G: train up to G clients of a rank at once on the shared frozen backbone (torch.func vmap over their
    stacked flat buffers: G-times larger matmuls; hpcfed/fl/parallel.py). Same per-client batches, optimizer
    and result as one at a time (within fp tolerance; dropout masks are drawn per group). Needs
    ``fl.local.steps``; falls back to one at a time, with one log line, where a method cannot be vectorized.
    With ``bf16`` the group path keeps the frozen backbone in bf16 and the fp32 master flat buffer."""

    def __post_init__(self) -> None:
        check_positive("fl.local.epochs", self.epochs)
        check_positive("fl.local.steps", self.steps)
        check_positive("fl.local.batch_size", self.batch_size)
        check_choice("fl.local.optimizer", self.optimizer, LOCAL_OPTIMIZERS)
        check_positive("fl.local.lr", self.lr)
        check_positive("fl.local.head_lr", self.head_lr)
        check_fraction("fl.local.momentum", self.momentum)
        check_positive("fl.local.weight_decay", self.weight_decay, allow_zero=True)
        check_fraction("fl.local.beta1", self.beta1)
        check_fraction("fl.local.beta2", self.beta2)
        check_positive("fl.local.max_grad_norm", self.max_grad_norm)
        check_positive("fl.local.length_buckets", self.length_buckets)
        check_positive("fl.local.client_group_size", self.client_group_size)
        check_positive("fl.local.logit_adjust_tau", self.logit_adjust_tau, allow_zero=True)
        check_choice("fl.local.lr_schedule", self.lr_schedule, ("constant", "cosine"))
        check_fraction("fl.local.lr_min_ratio", self.lr_min_ratio, closed_high=True)




DP_ACCOUNTANTS = ("rdp", "pld")
SAMPLINGS = ("fixed", "poisson")


@dataclass
class DPConfig:
    """Client-level differential privacy (``fl.dp``): DP-FedAvg (McMahan, Ramage, Talwar, Zhang, "Learning
    Differentially Private Recurrent Language Models", ICLR 2018) with optional adaptive clipping (Andrew,
    Thakkar, McMahan, Ramaswamy, "Differentially Private Learning with Adaptive Clipping", NeurIPS 2021); ε by
    Google's dp-accounting. The unit of privacy is a client. See hpcfed/fl/dp.py and docs/privacy.md."""

    enabled: bool = False
    """Clip each client's update, add Gaussian noise to the round's sum, account ε. Off: the other keys are
    unused (and left out of the config hash)."""
    clip_norm: float = 1.0
    """C: a client's PEFT update Δ_c = θ_c − θ_global is scaled to L2 norm at most C (min(1, C/‖Δ_c‖)); with
    `adaptive_clip` the initial C."""
    noise_multiplier: Optional[float] = None
    """z: the Gaussian noise on the round's SUM of clipped updates has std z·C per element (0: clipping only,
    ε = ∞). Give exactly one of this and `target_epsilon`."""
    target_epsilon: Optional[float] = None
    """Solve z before training so that ε after ``fl.rounds`` rounds at `delta` is this (dp-accounting's
    ``calibrate_dp_mechanism`` with the configured sampling and accountant)."""
    delta: Optional[float] = None
    """δ of the reported (ε, δ). null: 1/N with N the number of clients (the issue's "1/num_samples" counts
    units of privacy, and the unit here is the client)."""
    accountant: str = "rdp"
    """'rdp' (dp_accounting.rdp.RdpAccountant) or 'pld' (dp_accounting.pld.PLDAccountant: tighter, slower;
    Poisson sampling only)."""
    adaptive_clip: bool = False
    """Move C toward the `target_quantile` of the update norms each round, privately (Andrew et al.):
    C ← C·exp(−η_C·(b̄ − γ)) with b̄ the noised share of clients with ‖Δ_c‖ ≤ C."""
    target_quantile: float = 0.5
    """γ: the share of clients whose updates C should leave unclipped."""
    clip_lr: float = 0.2
    """η_C: step of the geometric update of C."""
    clip_count_stddev: Optional[float] = None
    """σ_b: std of the noise on the count of unclipped clients. null: cohort_size/20 (Andrew et al.; TFF's
    default), or 0 when z = 0. The update noise multiplier becomes (z⁻² − (2σ_b)⁻²)^(−1/2) (Andrew et al., Thm 1),
    so z < 2σ_b is needed."""

    def __post_init__(self) -> None:
        check_positive("fl.dp.clip_norm", self.clip_norm)
        check_positive("fl.dp.noise_multiplier", self.noise_multiplier, allow_zero=True)
        check_positive("fl.dp.target_epsilon", self.target_epsilon)
        if self.delta is not None and not 0.0 < self.delta < 1.0:
            raise ConfigError(f"fl.dp.delta={self.delta!r} must be in (0, 1)")
        check_choice("fl.dp.accountant", self.accountant, DP_ACCOUNTANTS)
        if not 0.0 < self.target_quantile < 1.0:
            raise ConfigError(f"fl.dp.target_quantile={self.target_quantile!r} must be in (0, 1)")
        check_positive("fl.dp.clip_lr", self.clip_lr, allow_zero=True)
        check_positive("fl.dp.clip_count_stddev", self.clip_count_stddev, allow_zero=True)
        if self.enabled and (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ConfigError("fl.dp: give exactly one of fl.dp.noise_multiplier and fl.dp.target_epsilon "
                              f"(got {'neither' if self.noise_multiplier is None else 'both'})")


ROBUST_AGGREGATORS = ("median", "trimmed_mean", "krum", "multi_krum", "centered_clip", "norm_bound")
"""The Byzantine-robust rules of ``fl.aggregator`` (hpcfed/fl/robust.py; 'fedavg' is the all-reduce path)."""
AGGREGATORS = ("fedavg", *ROBUST_AGGREGATORS)
ATTACKS = ("none", "sign_flip", "scale", "gaussian", "label_flip")
"""``fl.attack.kind``: none, the model attacks (sign_flip, scale, gaussian) and data poisoning (label_flip)."""
LABEL_MODES = ("reverse", "random")


def _finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def check_attack(kind: str, fraction: float, scale: Optional[float], noise_std: float, label_mode: str) -> None:
    """Validate the ``fl.attack.*`` values of :class:`AttackConfig` (``hpcfed.fl.attacks.AttackSpec`` is that
    class); raise a one-line :class:`ConfigError` naming the key."""
    check_choice("fl.attack.kind", kind, ATTACKS)
    if not _finite_number(fraction) or not 0.0 <= float(fraction) <= 1.0:
        raise ConfigError(f"fl.attack.fraction={fraction!r} must be in [0, 1]")
    if scale is not None and (not _finite_number(scale) or not float(scale) > 0):
        raise ConfigError(f"fl.attack.scale={scale!r} must be a finite number > 0")
    if not _finite_number(noise_std) or not float(noise_std) > 0:
        raise ConfigError(f"fl.attack.noise_std={noise_std!r} must be a finite number > 0")
    check_choice("fl.attack.label_mode", label_mode, LABEL_MODES)


@dataclass
class AttackConfig:
    """Attack injection for testing and studying robust aggregation (``fl.attack``; hpcfed/fl/attacks.py,
    docs/robustness.md). A fixed, seeded set of round(fraction · num_clients) clients is Byzantine for the whole
    run; the same on any number of ranks. Inactive (kind none or fraction 0): left out of the config hash."""

    kind: str = "none"
    """'none', a model attack applied to a Byzantine client's update after local training — 'sign_flip'
    (Δ → −s·Δ), 'scale' (Δ → s·Δ), 'gaussian' (Δ → N(0, σ²I)) — or 'label_flip' (its labels poisoned when its
    data is loaded)."""
    fraction: float = 0.0
    """Share of all clients that are Byzantine, in [0, 1] (drawn once from the run seed)."""
    scale: Optional[float] = None
    """s of sign_flip (default 1) and scale (default 10); > 0."""
    noise_std: float = 1.0
    """σ of the gaussian attack, in parameter units; > 0."""
    label_mode: str = "reverse"
    """label_flip: 'reverse' (y → K−1−y) or 'random' (a uniformly drawn other label, seeded per client)."""

    def __post_init__(self) -> None:
        check_attack(self.kind, self.fraction, self.scale, self.noise_std, self.label_mode)

    @property
    def active(self) -> bool:
        """Whether any client attacks (a kind other than 'none' and a fraction > 0)."""
        return self.kind != "none" and self.fraction > 0

    @property
    def effective_scale(self) -> float:
        """``scale``, or the kind's default (sign_flip 1, scale 10; 1 for the others, where it is unused)."""
        return float(self.scale) if self.scale is not None else {"sign_flip": 1.0, "scale": 10.0}.get(self.kind, 1.0)


@dataclass
class FLConfig:
    """Federated rounds: cohort sampling, local training, aggregation, server step."""

    mode: str = "federated"
    """'federated', or a baseline in the same runner: 'centralized' (pooled data, same optimizer and step
    budget) or 'local_only' (each client alone with its FL step budget); see hpcfed/fl/baselines.py."""
    local_only_holdout: float = 0.2
    """local_only: share of each client's examples held out as its own test split."""
    algorithm: str = "fedavg"
    """A registered algorithm (hpcfed/fl/algorithm.py): 'fedavg' (McMahan et al., AISTATS 2017), 'fedprox'
    (Li et al., MLSys 2020), 'feddat' (Chen et al., AAAI 2024), 'fedyolo' (Zhang et al., 2023), 'fedpft'
    (Peng et al., IJCAI 2024), 'fedsimsiam' (federated self-supervised pre-training, hpcfed/algorithms/fedsimsiam.py)."""
    algo: dict[str, Any] = field(default_factory=dict)
    """The algorithm's own hyperparameters (its ``Params`` dataclass; defaults from its paper), e.g.
    ``fl.algo.kd_temperature=3``. Checked against the algorithm when the config is loaded."""
    rounds: int = 20
    cohort_size: int = 10
    """Clients sampled per round (without replacement, seeded by (seed, round)); with ``sampling=poisson`` the
    expected number."""
    sampling: str = "fixed"
    """Cohort sampling: 'fixed' (cohort_size clients uniformly without replacement) or 'poisson' (each client
    independently with probability q = cohort_size/num_clients, so the cohort size varies, possibly 0); both
    seeded by (seed, round)."""
    weighting: str = "samples"
    """Aggregation weight of a client: 'samples' (its number of training examples) or 'uniform'. Ignored with
    ``fl.dp.enabled``: DP-FedAvg weighs every client 1 and divides by cohort_size (logged once)."""
    max_update_norm: Optional[float] = None
    """Drop a client whose update ‖θ_c − θ_global‖₂ exceeds this (null: no bound)."""
    max_failed_clients_per_round: Optional[int] = None
    """Past this many dropped clients in one round the run checkpoints and stops (null: half the cohort)."""
    inject_failure_rate: float = 0.0
    """Testing aid: each client update fails (NaN) with this probability, seeded by (seed, round, client)."""
    aggregator: str = "fedavg"
    """How the round's client updates are combined: 'fedavg' (the weighted mean, ONE all-reduce per round) or a
    Byzantine-robust rule — 'median', 'trimmed_mean' (Yin et al., ICML 2018), 'krum', 'multi_krum' (Blanchard
    et al., NeurIPS 2017), 'centered_clip' (Karimireddy et al., ICML 2021), 'norm_bound' (Sun et al., 2019) —
    which additionally gathers every client's update to every rank: cohort × trainable elements × 4 bytes per
    rank per round (hpcfed/fl/robust.py, docs/robustness.md). Not with ``fl.dp.enabled``."""
    aggregator_params: dict[str, Any] = field(default_factory=dict)
    """The robust rule's parameters, e.g. ``fl.aggregator_params.trim_fraction=0.2`` (trimmed_mean),
    ``num_byzantine`` (krum, multi_krum), ``num_selected`` (multi_krum), ``tau`` / ``iterations`` / ``center``
    (centered_clip), ``max_norm`` (norm_bound); unknown keys fail. Empty with 'fedavg'."""
    attack: AttackConfig = field(default_factory=AttackConfig)
    local: LocalConfig = field(default_factory=LocalConfig)
    server_opt: ServerOptConfig = field(default_factory=ServerOptConfig)
    dp: DPConfig = field(default_factory=DPConfig)

    def __post_init__(self) -> None:
        check_choice("fl.mode", self.mode, ("federated", "centralized", "local_only"))
        check_choice("fl.sampling", self.sampling, SAMPLINGS)
        if self.dp.enabled and self.mode != "federated":
            raise ConfigError(f"fl.dp.enabled=true needs fl.mode=federated (got fl.mode={self.mode!r})")
        if self.dp.enabled and self.dp.accountant == "pld" and self.sampling == "fixed":
            raise ConfigError("fl.dp.accountant=pld does not support fl.sampling=fixed (dp-accounting's PLD has no "
                              "sampling without replacement); use fl.sampling=poisson or fl.dp.accountant=rdp")
        check_choice("fl.aggregator", self.aggregator, AGGREGATORS)
        if self.aggregator == "fedavg" and self.aggregator_params:
            key = sorted(self.aggregator_params)[0]
            raise ConfigError(f"fl.aggregator_params.{key} is set but fl.aggregator=fedavg has no parameters "
                              "(choose a robust rule, or leave fl.aggregator_params empty)")
        if self.aggregator != "fedavg" and self.dp.enabled:
            raise ConfigError(f"fl.aggregator={self.aggregator} does not work with fl.dp.enabled=true (DP-FedAvg "
                              "calibrates its noise to the sum of clipped updates); use fl.aggregator=fedavg")
        if self.aggregator != "fedavg" and self.mode != "federated":
            raise ConfigError(f"fl.aggregator={self.aggregator} needs fl.mode=federated (got fl.mode={self.mode!r})")
        if self.attack.active and self.mode != "federated":
            raise ConfigError(f"fl.attack.kind={self.attack.kind} needs fl.mode=federated (got fl.mode={self.mode!r})")
        check_fraction("fl.local_only_holdout", self.local_only_holdout)
        check_positive("fl.max_update_norm", self.max_update_norm)
        check_positive("fl.max_failed_clients_per_round", self.max_failed_clients_per_round, allow_zero=True)
        check_fraction("fl.inject_failure_rate", self.inject_failure_rate)
        check_choice("fl.weighting", self.weighting, ("samples", "uniform"))
        check_positive("fl.rounds", self.rounds)
        check_positive("fl.cohort_size", self.cohort_size)


@dataclass
class EvalConfig:
    every_rounds: int = 1
    """Evaluate the global model on the global test split every k rounds (and after the last)."""
    batch_size: int = 256
    at_round0: bool = False
    """Also evaluate the initial global model before round 1."""
    warn_loss_rise_rounds: int = 3
    """Warn (a log line and ``"train_loss_rising"`` in the round's ``warnings`` in metrics.jsonl) when the
    training loss has risen in each of this many consecutive rounds; 0 disables the check. The loss followed is
    ``train_loss_start`` (the global model's loss on the clients' first local batches) where the method reports
    it, else ``train_loss`` (:meth:`hpcfed.fl.loop.FederatedLoop.rise_loss_key`)."""
    warn_loss_rise_min_ratio: float = 1.1
    """... and when over those rounds the loss rose by at least (this − 1) × |the loss before the rise| (1.1: up
    10 %), so that a flat, noisy plateau does not trigger it; 1.0 flags any rise."""

    def __post_init__(self) -> None:
        check_positive("eval.every_rounds", self.every_rounds)
        check_positive("eval.batch_size", self.batch_size)
        check_positive("eval.warn_loss_rise_rounds", self.warn_loss_rise_rounds, allow_zero=True)
        if not self.warn_loss_rise_min_ratio >= 1.0:
            raise ConfigError(f"eval.warn_loss_rise_min_ratio must be >= 1.0 (a ratio of losses), got "
                              f"{self.warn_loss_rise_min_ratio}")


@dataclass
class DistConfig:
    device: str = "auto"
    """'auto' (CUDA by local rank when available, else CPU), 'cpu' or 'cuda'."""
    backend: str = "auto"
    """'auto' (nccl on CUDA, gloo on CPU), 'nccl' or 'gloo'."""
    timeout_s: float = 600.0
    """Collective timeout in seconds; a rank that dies makes the others fail after at most this."""
    num_threads: Optional[int] = None
    """CPU threads per rank; null divides the cores among the ranks of a node."""

    def __post_init__(self) -> None:
        check_choice("dist.device", self.device, ("auto", "cpu", "cuda"))
        check_choice("dist.backend", self.backend, ("auto", "nccl", "gloo"))
        check_positive("dist.timeout_s", self.timeout_s)
        check_positive("dist.num_threads", self.num_threads)


@dataclass
class CheckpointConfig:
    """Checkpoints for preemption and crashes (see hpcfed/checkpoint.py)."""

    every_rounds: int = 5
    """Write a checkpoint every k rounds (0: only on SIGTERM/SIGUSR1, at a failure stop and at the end)."""
    keep_last: int = 3
    """Checkpoints kept; older ones are deleted."""
    resume: str = "auto"
    """'auto' (newest valid checkpoint of this run, if any), 'none' (start afresh), or a checkpoint path."""
    force_resume: bool = False
    """Resume from a checkpoint written by a different config."""
    export_model: bool = True
    """Also write final/export/model/, the whole classifier loadable in one call by its library (a full copy of
    the model: ~90 MB for MiniLM-L6, ~340 MB for ViT-B); false keeps only the trained tensors (e.g. in studies)."""

    def __post_init__(self) -> None:
        check_positive("checkpoint.every_rounds", self.every_rounds, allow_zero=True)
        check_positive("checkpoint.keep_last", self.keep_last)


TRACKERS = ("csv", "tensorboard", "wandb", "mlflow")


@dataclass
class LoggingConfig:
    """Experiment trackers fed at the end of every round by rank 0 (hpcfed/tracking.py; docs/tracking.md)."""

    report_to: list[str] = field(default_factory=list)
    """Any of 'csv' (<run dir>/metrics.csv), 'tensorboard' (<run dir>/tensorboard/), 'wandb' (offline run in
    <run dir>/wandb/), 'mlflow' (<run dir>/mlruns/ file store, or ``mlflow_tracking_uri``). Each but csv needs
    its pip extra (``pip install 'hpcfed[tensorboard]'`` etc.)."""
    wandb_project: str = "hpcfed"
    """W&B project name of the offline run."""
    mlflow_experiment: str = "hpcfed"
    """MLflow experiment the run is logged under (created when missing)."""
    mlflow_tracking_uri: Optional[str] = None
    """null: the file store ``file:<run dir>/mlruns``; otherwise any MLflow tracking URI (sqlite:///..., http://...)."""

    def __post_init__(self) -> None:
        for name in self.report_to:
            check_choice("logging.report_to", name, TRACKERS)
        if len(set(self.report_to)) != len(self.report_to):
            raise ConfigError(f"logging.report_to={list(self.report_to)} names a tracker twice")
