"""The standard benchmark workloads, defined once as hpcfed config words.

Every benchmark (``benchmarks.throughput``, ``benchmarks.scaling``, ``benchmarks.compare.*``) takes its
workload from here, so hpcfed and the other frameworks train the same model on the same clients with the same
hyperparameters.

* ``text-bitfit``: all-MiniLM-L6-v2 (real pre-trained weights, mean pooling, linear head), BitFit (biases +
  head), SST-2 split into 100 clients by Dirichlet(0.5) label skew, cohort of 16 clients per round, 4 local
  AdamW steps of batch 32 (lr 1e-3 for the biases, 5e-3 for the head), fp32 master weights.
* ``text-lora``: the same with LoRA rank 8 (α = 16) on query/value (Hu et al., ICLR 2022) instead of BitFit.
* ``vit-cifar``: timm ViT-Tiny (embed 192, 12 layers, 3 heads; random init, no download) at 32×32 with 4×4
  patches (64 tokens + class token) on CIFAR-10, 100 clients Dirichlet(0.5), full fine-tuning, same cohort and
  local schedule.

The workload words describe the *job*; how hpcfed runs it (bf16 autocast, length buckets, client groups) is
left at hpcfed's defaults or set with extra ``key=value`` words, e.g. ``fl.local.bf16=false``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Common FL schedule of all workloads (the numbers).
NUM_CLIENTS = 100
DIRICHLET_ALPHA = 0.5
COHORT = 16
LOCAL_STEPS = 4
BATCH = 32
LR = 1e-3
HEAD_LR = 5e-3

_TEXT = [
    "data.name=sst2", "data.kind=text",
    "data.source=${hpcfed_data_root:}/sst2/train.tsv", "data.test_source=${hpcfed_data_root:}/sst2/dev.tsv",
    "data.text_column=sentence", "data.label_column=label", "data.max_length=64",
    "data.partition=dirichlet", f"data.alpha={DIRICHLET_ALPHA}", f"data.num_clients={NUM_CLIENTS}",
    "data.num_shards=4", "data.seed=0",
    "model.family=hf_text", "model.path=${minilm_path:}", "model.pretrained=true", "model.pooling=mean",
    "model.dropout=0.1",
]

_SCHEDULE = [
    "fl.algorithm=fedavg", f"fl.cohort_size={COHORT}", f"fl.local.steps={LOCAL_STEPS}",
    f"fl.local.batch_size={BATCH}", "fl.local.optimizer=adamw", f"fl.local.lr={LR}", f"fl.local.head_lr={HEAD_LR}",
    "fl.local.weight_decay=0.0", "fl.local.lr_schedule=constant", "fl.server_opt.name=avg", "fl.server_opt.lr=1.0",
    "seed=0", "progress=false", "checkpoint.every_rounds=0", "checkpoint.resume=none",
]


@dataclass(frozen=True)
class Workload:
    """One standard workload.

    Attributes:
        name: the CLI name.
        words: hpcfed config words (``key=value``) describing the job.
        description: one line for reports.
        kind: 'text' (tokens: MFU on real tokens) or 'image'.
        peft: the PEFT method (for the comparison scripts).
    """

    name: str
    words: list[str]
    description: str
    kind: str
    peft: str
    extra: dict = field(default_factory=dict)


WORKLOADS: dict[str, Workload] = {
    "text-bitfit": Workload(
        "text-bitfit", _TEXT + ["peft.method=bias"] + _SCHEDULE,
        "all-MiniLM-L6-v2 + mean pool + linear head, BitFit, SST-2 100 clients Dir(0.5), cohort 16, "
        "4 AdamW steps x batch 32", "text", "bias"),
    "text-lora": Workload(
        "text-lora", _TEXT + ["peft.method=lora", "peft.lora_rank=8", "peft.lora_alpha=16", "peft.lora_dropout=0.0"]
        + _SCHEDULE,
        "all-MiniLM-L6-v2, LoRA r=8 (q,v), SST-2 100 clients Dir(0.5), cohort 16, 4 AdamW steps x batch 32",
        "text", "lora", {"lora_rank": 8, "lora_alpha": 16.0}),
    "vit-cifar": Workload(
        "vit-cifar", [
            "data.name=cifar10", "data.kind=image", "data.source=${hpcfed_data_root:}/cifar10-jpeg.zip",
            "data.test_source=null", "data.partition=dirichlet", f"data.alpha={DIRICHLET_ALPHA}",
            f"data.num_clients={NUM_CLIENTS}", "data.num_shards=4", "data.max_test_samples=2000",
            "model.family=timm_vit", "model.arch=vit_tiny_patch16_224", "model.path=null",
            "model.pretrained=false", "model.img_size=32", "model.patch_size=4", "model.dropout=0.0",
            "peft.method=full",
        ] + _SCHEDULE,
        "timm ViT-Tiny (192x12, random init) at 32x32 / patch 4, full FT, CIFAR-10 100 clients Dir(0.5), "
        "cohort 16, 4 AdamW steps x batch 32", "image", "full"),
}


def workload_words(name: str, overrides: list[str] | tuple[str, ...] = (), *, rounds: int | None = None,
                   device: str = "cpu") -> list[str]:
    """Config words of workload ``name`` plus ``overrides`` (later words win).

    Raises:
        KeyError: unknown workload (the message lists the known ones).
    """
    if name not in WORKLOADS:
        raise KeyError(f"unknown workload {name!r}; choose one of: {', '.join(WORKLOADS)}")
    words = list(WORKLOADS[name].words) + [f"dist.device={device}", f"name=bench-{name}", "out_dir=runs/bench"]
    if rounds is not None:
        words.append(f"fl.rounds={rounds}")
    return words + list(overrides)


def load_workload_config(name: str, overrides=(), *, rounds: int | None = None, device: str = "cpu"):
    """The validated hpcfed :class:`~hpcfed.config.Config` of workload ``name`` (see :func:`workload_words`)."""
    from hpcfed.config import load_config

    return load_config(workload_words(name, overrides, rounds=rounds, device=device))


def prepare_workload_data(cfg):
    """Make sure the workload's client shards exist (hpcfed's own prepare, so every framework reads the same
    partition) and return the opened :class:`~hpcfed.data.ShardedDataset`."""
    from hpcfed.data import ShardedDataset, ensure_prepared

    tok = cfg.data.tokenizer or cfg.model.path
    root = ensure_prepared(cfg.data, tok)
    return ShardedDataset(root, expect_name=cfg.data.name)
