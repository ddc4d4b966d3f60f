"""The config sections (``data``, ``model``, ``peft``, ``fl`` with ``fl.local`` / ``fl.server_opt``, ``eval``, ``dist``,
``checkpoint``): dataclasses with defaults and field docstrings, each validating its own values in
``__post_init__``. Cross-section checks live in :class:`hpcfed.config.Config` and at the composition root."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hpcfed.config.checks import REPO_ROOT, ConfigError, check_choice, check_fraction, check_positive

PARTITIONS = ("iid", "dirichlet", "pathological", "fewshot")
DATA_KINDS = ("text", "image")


@dataclass
class DataConfig:
    """Where client data comes from and how it is split into clients and HDF5 shards."""

    name: str = "sst2"
    """Data set name; recorded in the shard index and checked when shards are opened."""
    kind: str = "text"
    """'text' (CSV/TSV, tokenized at prepare time) or 'image' (ImageFolder directory or .zip of one)."""
    source: str = "${hpcfed_data_root:}/sst2/train.tsv"
    """Training source: a CSV/TSV file (text), or an ImageFolder dir / .zip with train/ and test/ (image)."""
    test_source: Optional[str] = "${hpcfed_data_root:}/sst2/dev.tsv"
    """Global test split. Text: a CSV/TSV file. Image: null uses the source's test/ folder."""
    text_column: str = "sentence"
    label_column: str = "label"
    max_length: int = 64
    """Text: tokens kept per example (truncation) at prepare time."""
    tokenizer: Optional[str] = None
    """Text: tokenizer path or name; null uses model.path."""
    image_size: Optional[int] = None
    """Image: resize to this square size (pixels) at prepare time; null keeps the source size."""
    partition: str = "dirichlet"
    """'iid', 'dirichlet' (label skew with concentration alpha), 'pathological' (k classes per client),
    'fewshot' (shots_per_class examples of each class per client)."""
    alpha: float = 0.5
    """Dirichlet concentration α; smaller is more skewed."""
    classes_per_client: int = 2
    shots_per_class: int = 16
    num_clients: int = 20
    num_shards: int = 4
    max_train_samples: Optional[int] = None
    """Keep only the first N training examples (after a seeded shuffle); null keeps all."""
    max_test_samples: Optional[int] = None
    reserve_train_samples: int = 0
    """Rows of the train source withheld from every client (the first N of a seeded permutation, chosen before
    ``max_train_samples``): public data no client holds, e.g. FedPFT's distillation set
    (:func:`hpcfed.data.reserved_rows`)."""
    seed: int = 0
    """Partition seed (independent of the training seed)."""
    shard_dir: Optional[str] = None
    """Where the shards live; null derives data_cache/<name>-<hash of this section> under the repo."""

    def __post_init__(self) -> None:
        check_choice("data.kind", self.kind, DATA_KINDS)
        check_choice("data.partition", self.partition, PARTITIONS)
        check_positive("data.alpha", self.alpha)
        check_positive("data.num_clients", self.num_clients)
        check_positive("data.num_shards", self.num_shards)
        check_positive("data.max_length", self.max_length)
        check_positive("data.classes_per_client", self.classes_per_client)
        check_positive("data.shots_per_class", self.shots_per_class)
        check_positive("data.max_train_samples", self.max_train_samples)
        check_positive("data.max_test_samples", self.max_test_samples)
        check_positive("data.reserve_train_samples", self.reserve_train_samples, allow_zero=True)
        if self.num_shards > self.num_clients:
            raise ConfigError(
                f"data.num_shards={self.num_shards} must be <= data.num_clients={self.num_clients}"
            )

    def identity(self) -> dict:
        """The fields that determine the shards' content (everything except where they are stored)."""
        d = dataclasses.asdict(self)
        d.pop("shard_dir")
        if not d["reserve_train_samples"]:  # absent = 0: shards prepared before the key existed stay current
            d.pop("reserve_train_samples")
        return d

    def resolved_shard_dir(self) -> Path:
        if self.shard_dir:
            return Path(self.shard_dir)
        digest = hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:12]
        return REPO_ROOT / "data_cache" / f"{self.name}-{digest}"


MODEL_FAMILIES = ("hf_text", "timm_vit", "open_clip")


@dataclass
class ModelConfig:
    """Backbone and classification head."""

    family: str = "hf_text"
    """'hf_text' (transformers encoder: BERT, RoBERTa, MiniLM), 'timm_vit', or 'open_clip' (CLIP's vision
    tower with a head initialised from the text tower's class-name prompt embeddings)."""
    path: Optional[str] = "${minilm_path:}"
    """Local folder with pre-trained weights (transformers folder, or a timm .safetensors/.pth file).
    null with pretrained=false builds from `arch` with random init."""
    arch: str = "bert"
    """Architecture for random init: a transformers model_type with `tiny` sizes below, or a timm name."""
    pretrained: bool = True
    """Load the weights at `path`; false keeps the architecture (from path or arch) with random init."""
    allow_download: bool = False
    """Allow hub names for `path` (off: nothing is downloaded at run time)."""
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
    img_size: int = 32
    patch_size: int = 4
    dropout: float = 0.1
    """Classifier dropout before the head."""
    clip_prompt_template: str = "a photo of a {}."
    """open_clip: text prompt per class name used to initialise the head (zero-shot classifier)."""

    def __post_init__(self) -> None:
        check_choice("model.family", self.family, MODEL_FAMILIES)
        check_choice("model.pooling", self.pooling, ("mean", "cls"))
        check_fraction("model.dropout", self.dropout)
        for k in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "vocab_size", "img_size",
                  "patch_size"):
            check_positive(f"model.{k}", getattr(self, k))
        if not self.pretrained and not self.path and not self.arch:
            raise ConfigError("model.arch must be set when model.path is null")
        if self.pretrained and not self.path:
            raise ConfigError("model.path must name a local folder/file when model.pretrained=true")




@dataclass
class PeftConfig:
    """Which parameters are trained and federated. The classification head is always trained."""

    method: str = "bias"
    """'bias' (BitFit), 'lora' (peft library), 'adapter' (bottleneck adapters), 'prompt' (learnable prompt
    tokens), 'head' (linear probe), 'full' (all parameters); checked against the registry
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
    """Clients sampled per round (without replacement, seeded by (seed, round))."""
    weighting: str = "samples"
    """Aggregation weight of a client: 'samples' (its number of training examples) or 'uniform'."""
    max_update_norm: Optional[float] = None
    """Drop a client whose update ‖θ_c − θ_global‖₂ exceeds this (null: no bound)."""
    max_failed_clients_per_round: Optional[int] = None
    """Past this many dropped clients in one round the run checkpoints and stops (null: half the cohort)."""
    inject_failure_rate: float = 0.0
    """Testing aid: each client update fails (NaN) with this probability, seeded by (seed, round, client)."""
    local: LocalConfig = field(default_factory=LocalConfig)
    server_opt: ServerOptConfig = field(default_factory=ServerOptConfig)

    def __post_init__(self) -> None:
        check_choice("fl.mode", self.mode, ("federated", "centralized", "local_only"))
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

    def __post_init__(self) -> None:
        check_positive("eval.every_rounds", self.every_rounds)
        check_positive("eval.batch_size", self.batch_size)


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

    def __post_init__(self) -> None:
        check_positive("checkpoint.every_rounds", self.every_rounds, allow_zero=True)
        check_positive("checkpoint.keep_last", self.keep_last)
