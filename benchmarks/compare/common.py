"""What the framework comparison shares: the workload, the clients' data, the model and the report line.

Every framework (plain PyTorch, pfl-research, Flower) trains the same model on the same clients:

* data: hpcfed's own prepared shards of the workload (:func:`benchmarks.workloads.prepare_workload_data`), so
  client ``c`` holds exactly the same token ids and labels in every framework; the SST-2 dev set is the test
  split of the same shards;
* model: :class:`SentenceClassifier`, all-MiniLM-L6-v2 (``transformers.AutoModel``) + mean pooling over real
  tokens + dropout 0.1 + a linear head (torch seed 0), BitFit by ``requires_grad`` or LoRA by
  ``peft.get_peft_model`` (r, α, query/value) — the same architecture hpcfed builds;
* local training: 4 AdamW steps of batch 32 (lr 1e-3, head 5e-3, no weight decay, fresh optimizer state per
  client), dynamic padding (each batch trimmed to its longest sequence), fp32 unless said otherwise; the
  batches are hpcfed's own draw (:func:`client_batches`: exactly ``steps`` batches of ``min(32, n)`` from a
  stream of shuffled passes, seeded by ``client_seed(seed, round, client)``), so every framework runs the same
  number of steps on the same examples, small clients included;
* aggregation: FedAvg weighted by client sample counts, server lr 1.

Each script prints ONE JSON line (:func:`report`): median (min, max) seconds per round over rounds 2..R, client
updates/s, real tokens/s, the local steps each round ran (summed over its clients), final SST-2 dev accuracy
after R rounds, start-up time, load average, and the hardware / versions record
(:func:`benchmarks.throughput.hardware_record`).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def add_common_args(parser, *, cohorts: bool = False) -> None:
    """The arguments every comparison script shares: ``--workload``, ``--rounds``, ``--bf16``, ``--threads``,
    ``--eval-every``, ``--set key=value`` (repeatable; hpcfed config words changing the workload, for smoke
    tests: smaller cohort / fewer steps; the comparison itself runs the workload unchanged) and, for the
    frameworks that sample their own cohorts (``cohorts=True``), ``--cohorts hpcfed|native``."""
    parser.add_argument("--workload", default="text-bitfit", choices=["text-bitfit", "text-lora"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast in local training")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per process (default: all cores / processes on this node)")
    parser.add_argument("--eval-every", type=int, default=0, metavar="K",
                        help="also test accuracy after every K-th round (acc_curve; not in the round times)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    if cohorts:
        parser.add_argument("--cohorts", choices=["hpcfed", "native"], default="hpcfed",
                            help="hpcfed: train round r on hpcfed's cohort_for_round(seed, r) (same clients in "
                                 "every framework, so accuracies are comparable); native: the framework's own "
                                 "sampler")


def default_threads(processes: int = 1) -> int:
    """Cores of this node divided among ``processes`` processes (at least 1)."""
    return max(1, (os.cpu_count() or 1) // max(1, processes))


def hpcfed_cohorts(cfg, num_clients: int):
    """hpcfed's cohorts in round order: an endless iterator of ``cohort_for_round(seed, r, ...)``, r = 1, 2,
    ... (lists of client ids, ascending)."""
    from itertools import count

    from hpcfed.fl.sampling import cohort_for_round

    return (cohort_for_round(cfg.seed, r, num_clients, cfg.fl.cohort_size) for r in count(1))


def setup(workload: str = "text-bitfit", overrides: Sequence[str] = (), threads: int | None = None):
    """(hpcfed Config, ShardedDataset) of ``workload`` (+ ``overrides``); sets torch threads (default: all
    cores)."""
    from benchmarks.workloads import load_workload_config, prepare_workload_data

    torch.set_num_threads(threads or os.cpu_count() or 1)
    cfg = load_workload_config(workload, overrides)
    return cfg, prepare_workload_data(cfg)


class SentenceClassifier(nn.Module):
    """Encoder + mean pooling over real tokens + dropout + linear head.

    forward(x int (B, L) token ids, lengths int (B,)) → logits float (B, K); ``x`` is trimmed to the
    longest real length in the batch (dynamic padding), positions past a length are masked.
    """

    def __init__(self, path: str, num_classes: int = 2, dropout: float = 0.1):
        super().__init__()
        from transformers import AutoModel

        self.backbone = AutoModel.from_pretrained(path, local_files_only=True, add_pooling_layer=False)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.backbone.config.hidden_size, num_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = x[:, : int(lengths.max())].long()
        mask = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]).long()
        h = self.backbone(input_ids=x, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
        return self.head(self.dropout(pooled))


def build_model(cfg, peft_method: str) -> SentenceClassifier:
    """The workload's model with ``peft_method`` ('bias' = BitFit, 'lora') applied; head seeded by cfg.seed."""
    torch.manual_seed(cfg.seed)
    model = SentenceClassifier(cfg.model.path, 2, cfg.model.dropout)
    for p in model.parameters():
        p.requires_grad_(False)
    if peft_method == "bias":
        for n, p in model.named_parameters():
            if n.endswith(".bias") or n.startswith("head."):
                p.requires_grad_(True)
    elif peft_method == "lora":
        from peft import LoraConfig, get_peft_model

        lc = LoraConfig(r=cfg.peft.lora_rank, lora_alpha=cfg.peft.lora_alpha, lora_dropout=cfg.peft.lora_dropout,
                        target_modules=["query", "value"], bias="none")
        model.backbone = get_peft_model(model.backbone, lc)
        for p in model.head.parameters():
            p.requires_grad_(True)
    else:
        raise ValueError(f"peft method {peft_method!r}: the comparison implements 'bias' and 'lora'")
    return model


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of the trainable parameters (what a client sends)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def make_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """AdamW with the workload's lr for the PEFT parameters and head_lr for the head."""
    c = cfg.fl.local
    head = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("head.")]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")]
    return torch.optim.AdamW([{"params": rest, "lr": c.lr}, {"params": head, "lr": c.head_lr or c.lr}],
                             lr=c.lr, betas=(c.beta1, c.beta2), eps=c.eps, weight_decay=c.weight_decay)


def client_batches(n: int, batch_size: int, steps: int, generator: torch.Generator) -> list[torch.Tensor]:
    """The index batches one client trains on: hpcfed's own draw (:func:`hpcfed.fl.client.local_batches` with
    ``steps``), exactly ``steps`` batches of ``min(batch_size, n)`` indices from a stream of shuffled passes
    over the ``n`` examples, so a client smaller than ``steps × batch_size`` still runs ``steps`` steps.

    Raises:
        ValueError: ``n``, ``batch_size`` or ``steps`` below 1.
    """
    from hpcfed.fl.client import local_batches

    if n < 1 or batch_size < 1 or steps < 1:
        raise ValueError(f"n={n}, batch_size={batch_size}, steps={steps}: each must be >= 1")
    return local_batches(n, batch_size, epochs=1, steps=steps, generator=generator)


@dataclass(frozen=True)
class LocalWork:
    """What one client's local training did: optimizer steps, examples and real (unpadded) tokens."""

    steps: int
    samples: int
    tokens: int


def local_train(model: nn.Module, opt: torch.optim.Optimizer, data, steps: int, batch_size: int,
                generator: torch.Generator, bf16: bool = False) -> LocalWork:
    """``steps`` AdamW steps on :func:`client_batches` of ``data`` (hpcfed ClientData), bf16 autocast if
    ``bf16``; returns the :class:`LocalWork` done."""
    model.train()
    seen = tokens = done = 0
    for idx in client_batches(len(data), batch_size, steps, generator):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(data.x[idx], data.lengths[idx])
        F.cross_entropy(logits.float(), data.y[idx]).backward()
        opt.step()
        done, seen, tokens = done + 1, seen + len(idx), tokens + int(data.lengths[idx].sum())
    return LocalWork(done, seen, tokens)


@torch.no_grad()
def accuracy(model: nn.Module, test, batch_size: int = 256) -> float:
    """Accuracy of ``model`` on ``test`` (ClientData), batches sorted by length (padding is masked)."""
    model.eval()
    order = torch.argsort(test.lengths, stable=True)
    correct = 0
    for b in order.split(batch_size):
        correct += int((model(test.x[b], test.lengths[b]).argmax(-1) == test.y[b]).sum())
    return correct / len(test)


def fedavg_(model: nn.Module, updates: Sequence[tuple[dict[str, torch.Tensor], float]]) -> None:
    """Set the trainable parameters of ``model`` to the ``weight``-weighted mean of the clients' states."""
    total = sum(w for _, w in updates)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(sum(sd[n] * (w / total) for sd, w in updates))


def report(framework: str, workload: str, round_s: Sequence[float], cohort: int, final_acc: float,
           startup_s: float, *, bf16: bool = False, processes: int = 1,
           local_steps: Sequence[int] | None = None, tokens: Sequence[int] | None = None, **extra) -> dict:
    """Print and return the one JSON line of a framework run.

    Args:
        framework: the row's framework label.
        workload: the workload name.
        round_s: wall seconds of every round, round 1 (the warm-up) first; the row's ``round_s`` is the median
            of rounds 2..R, with ``round_s_min`` / ``round_s_max``.
        cohort: clients per round (client updates/s = cohort / round_s).
        final_acc: test accuracy after the last round (fraction).
        startup_s: seconds before round 1.
        bf16: local training under bf16 autocast (``precision``).
        processes: processes of the run (``layout`` = processes x this process's torch threads).
        local_steps: per round, the local optimizer steps its clients ran, summed (``local_steps_per_round``).
        tokens: per round, the real tokens its local steps consumed (``tokens_per_round``; ``tokens_per_s``
            = median of tokens / round seconds over rounds 2..R).
        extra: more keys (``acc_curve`` = [[round, accuracy], ...], versions, ...).

    ``local_steps`` or ``tokens`` with not one value per round are recorded as they are, with a line in the
    row's ``warnings`` (and no ``tokens_per_s``): the measured row is kept.

    Raises:
        ValueError: ``round_s`` is empty.
    """
    from benchmarks.throughput import hardware_record

    if not round_s:
        raise ValueError("no round was timed")
    warnings = [f"{name}: {len(seq)} values for {len(round_s)} rounds"
                for name, seq in (("local_steps", local_steps), ("tokens", tokens))
                if seq is not None and len(seq) != len(round_s)]
    timed = list(round_s[1:]) if len(round_s) > 1 else list(round_s)
    med = statistics.median(timed)
    threads = torch.get_num_threads()
    out = {"framework": framework, "workload": workload, "rounds": len(round_s), "round_s": med,
           "round_s_min": min(timed), "round_s_max": max(timed),
           "round_s_all": list(round_s), "client_updates_per_s": cohort / med, "final_acc": final_acc,
           "startup_s": startup_s, "loadavg": list(os.getloadavg()), "threads": threads,
           "processes": processes, "layout": f"{processes}x{threads}",
           "precision": "bf16-autocast" if bf16 else "fp32", "torch": torch.__version__}
    if local_steps is not None:
        out["local_steps_per_round"] = [int(x) for x in local_steps]
    if tokens is not None:
        out["tokens_per_round"] = [int(x) for x in tokens]
    if tokens is not None and len(tokens) == len(round_s):
        out["tokens_per_s"] = statistics.median(t / s for t, s in zip(list(tokens)[1:] or tokens, timed))
    if warnings:
        out["warnings"] = warnings
    out.update(extra)
    out["hardware"] = hardware_record("cpu", cores_used=processes * threads)
    print(json.dumps(out))
    sys.stdout.flush()
    return out


class Timer:
    """``with Timer() as t: ...; t.s`` — wall seconds."""

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.s = time.perf_counter() - self.t0
