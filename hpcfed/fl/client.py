"""Local training of one client on the model's flat buffer, and evaluation.

The trainer owns the local optimizer state as flat buffers of the PEFT layout and steps them with the fused
kernels of :mod:`hpcfed.kernels` (``masked_adamw_step`` / ``masked_sgd_step``). A client's data order and
dropout come only from its seed (see :func:`hpcfed.fl.sampling.client_seed`), so the same client trained on
any rank gives the same update.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from hpcfed.config import LocalConfig
from hpcfed.data import ClientData
from hpcfed.fl.optim import FlatOptimizer, head_lr_scale
from hpcfed.peft import FlatParams

log = logging.getLogger("hpcfed.fl")

GradHook = Callable[[FlatParams], None]


@dataclass
class LocalResult:
    """What local training reports besides the trained parameters (left in the flat buffer)."""

    loss_sum: float
    """Sum over all local steps of (mean batch loss × batch size)."""
    samples_seen: int
    """Examples processed (counting repeats over epochs)."""
    steps: int
    final_loss: float
    """Mean loss of the last local step."""
    first_loss: float = math.nan
    """Mean loss of the first local step's batch, computed from the parameters the client received (before any
    local update): a sample of the global model's training loss on this client's data. Unlike ``loss_sum`` it does
    not depend on how far the local steps move (the local lr); NaN where a method does not report it."""


def autocast_ctx(device: torch.device, bf16: bool):
    """bf16 autocast on ``device`` when ``bf16``, else a no-op context."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def batch_to(data: ClientData, idx: torch.Tensor, device: torch.device):
    """Gather examples ``idx`` (int64 (B,)) of ``data``: (x, y, lengths) on ``device``.

    Text rows are trimmed to the longest real length in the batch (dynamic padding).
    """
    x = data.x[idx]
    lengths = None
    if data.lengths is not None:
        lengths = data.lengths[idx]
        x = x[:, : int(lengths.max())]  # (B, Lmax)
        lengths = lengths.to(device, non_blocking=True)
    return x.to(device, non_blocking=True), data.y[idx].to(device, non_blocking=True), lengths


def local_batches(n: int, batch_size: int, *, epochs: int, steps: Optional[int],
                  generator: torch.Generator) -> list[torch.Tensor]:
    """Index batches for local training: ``epochs`` shuffled passes (last batch may be short), or, when
    ``steps`` is set, exactly ``steps`` batches of ``min(batch_size, n)`` drawn from a stream of shuffled
    passes."""
    bs = min(batch_size, n)
    if steps is None:
        out = []
        for _ in range(epochs):
            perm = torch.randperm(n, generator=generator)
            out.extend(perm.split(bs))
        return out
    need = steps * bs
    perms = [torch.randperm(n, generator=generator) for _ in range(math.ceil(need / n))]
    stream = torch.cat(perms)[:need]
    return list(stream.view(steps, bs))


_PACKING_WARNED: set[str] = set()


def packing_supported(model: nn.Module, where: str) -> bool:
    """Whether ``model`` can run packed text batches (``fl.local.packing``); logs once per reason why not.

    Image models and models without a text backbone answer False silently (nothing to pack).
    """
    check = getattr(model, "packing_unsupported", None)
    if check is None:
        return False
    reason = check()
    if reason is not None and reason not in _PACKING_WARNED:
        _PACKING_WARNED.add(reason)
        log.warning("fl.local.packing: %s: %s; using length buckets for %s", type(model).__name__, reason, where)
    return reason is None


def length_buckets(data: ClientData, idx: torch.Tensor, buckets: int) -> list[torch.Tensor]:
    """Split batch ``idx`` into at most ``buckets`` micro-batches of similar length (text only).

    Examples are ordered by length (stable) and cut into near-equal chunks, so each micro-batch is padded only
    to its own longest example. Images, or ``buckets == 1``, give ``[idx]``.
    """
    if data.lengths is None or buckets <= 1 or len(idx) <= 1:
        return [idx]
    order = idx[torch.argsort(data.lengths[idx], stable=True)]
    return [p for p in order.tensor_split(min(buckets, len(idx))) if len(p)]


class LocalTrainer:
    """Trains ``flat`` (the model's trainable parameters) on one client's data.

    Args:
        model: classifier whose trainable parameters are the views of ``flat``.
        flat: the flat buffer.
        cfg: local training hyperparameters.
        device: compute device.
        kernel_backend: forwarded to the kernel dispatchers (None = auto).
        head_only: only the classification head is trained (``peft.method=head``); with
            ``cfg.cache_frozen_features`` the backbone's features are then computed once per client and reused
            (:meth:`client_features`).
    """

    def __init__(self, model: nn.Module, flat: FlatParams, cfg: LocalConfig, device: torch.device,
                 kernel_backend: Optional[str] = None, head_only: bool = False):
        self.model, self.flat, self.cfg, self.device = model, flat, cfg, device
        self.kernel_backend = kernel_backend
        self.forward = torch.compile(model, dynamic=True) if cfg.compile else model
        self.cache_features = head_only and cfg.cache_frozen_features
        self.pack = cfg.packing and packing_supported(model, "local training")
        self._features: OrderedDict[int, tuple[ClientData, torch.Tensor]] = OrderedDict()
        self.lr = cfg.lr
        self.lr_scale = head_lr_scale(flat, cfg)
        self.optimizer = FlatOptimizer(cfg, (flat.numel,), device, lr_scale=self.lr_scale, backend=kernel_backend)

    def set_round(self, round_idx: int, total_rounds: int) -> None:
        """Set the local learning rate of round ``round_idx`` (1-based) from ``cfg.lr_schedule``."""
        c = self.cfg
        if c.lr_schedule == "cosine" and total_rounds > 1:
            t = (round_idx - 1) / (total_rounds - 1)
            self.lr = c.lr * (c.lr_min_ratio + (1 - c.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * t)))
        else:
            self.lr = c.lr

    def step(self, step: int, mask: Optional[torch.Tensor] = None) -> None:
        """Clip ``flat.grad`` to ``fl.local.max_grad_norm`` and take one optimizer step on ``flat.data`` at this
        round's learning rate (``step``: 1-based within the client's local training; ``mask``: (n,) bool)."""
        self.optimizer.step(self.flat.data, self.flat.grad, step=step, lr=self.lr, mask=mask)

    def _logit_adjustment(self, data: ClientData) -> torch.Tensor:
        """τ·log p (K,) of the client's label prior, add-one smoothed (every class keeps p > 0)."""
        k = self.model.head.out_features
        counts = torch.bincount(data.y, minlength=k).double() + 1.0
        return (self.cfg.logit_adjust_tau * torch.log(counts / counts.sum())).float().to(self.device)

    @torch.no_grad()
    def client_features(self, data: ClientData, batch_size: int = 256) -> torch.Tensor:
        """The frozen backbone's pooled features of every example of ``data``: (N, D) fp32 on the device.

        Computed once per client (backbone in eval mode, length-sorted batches; exact, padding is masked) and
        kept for the 256 most recently used clients.
        """
        key = id(data)
        hit = self._features.get(key)
        if hit is not None and hit[0] is data:
            self._features.move_to_end(key)
            return hit[1]
        was_training = self.model.training
        self.model.eval()
        out = torch.empty(0)
        idx = torch.arange(len(data))
        if data.lengths is not None:
            idx = idx[torch.argsort(data.lengths, stable=True)]
        parts = []
        for b in idx.split(batch_size):
            x, _, lengths = batch_to(data, b, self.device)
            with autocast_ctx(self.device, self.cfg.bf16):
                parts.append(self.model.features(x, lengths).float())
        if parts:
            feats = torch.cat(parts)
            out = torch.empty_like(feats)
            out[idx.to(self.device)] = feats
        self.model.train(was_training)
        self._features[key] = (data, out)
        if len(self._features) > 256:
            self._features.popitem(last=False)
        return out

    def train(self, data: ClientData, seed: int, *, grad_hook: Optional[GradHook] = None,
              mask: Optional[torch.Tensor] = None) -> LocalResult:
        """Run local training from the current values of the flat buffer.

        Args:
            data: the client's examples (CPU tensors).
            seed: the client's seed for this round; fixes data order and dropout.
            grad_hook: called after each backward with the flat buffer (e.g. FedProx adds μ(θ − θ_global)).
            mask: (n,) bool — entries the client may update (None: all).

        Returns:
            :class:`LocalResult`; the trained parameters are left in ``flat.data``.
        """
        c = self.cfg
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)  # dropout and any other stochastic layer
        self.optimizer.reset()
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        seen = 0
        batches = local_batches(len(data), c.batch_size, epochs=c.epochs, steps=c.steps, generator=gen)
        adjust = self._logit_adjustment(data) if c.logit_adjust_tau > 0 else None
        last = first = torch.zeros(())
        feats = self.client_features(data) if self.cache_features else None
        for step, idx in enumerate(batches, start=1):
            self.flat.zero_grad()
            loss = torch.zeros((), device=self.device)
            pack = self.pack and data.lengths is not None
            parts = [idx] if feats is not None or pack else length_buckets(data, idx, c.length_buckets)
            for part in parts:
                if feats is not None:  # head only: the backbone's cached features
                    y = data.y[part].to(self.device)
                    logits = self.model.head(self.model.dropout(feats[part.to(self.device)]))
                else:
                    x, y, lengths = batch_to(data, part, self.device)
                    with autocast_ctx(self.device, c.bf16):
                        logits = self.forward(x, lengths, pack=True) if pack else self.forward(x, lengths)
                # mean over the whole batch = sum over micro-batches of (size share × their mean)
                logits = logits.float() if adjust is None else logits.float() + adjust
                part_loss = F.cross_entropy(logits, y) * (len(part) / len(idx))
                part_loss.backward()
                loss += part_loss.detach()
            if grad_hook is not None:
                grad_hook(self.flat)
            self.step(step, mask)
            last = loss.detach()
            if step == 1:
                first = last
            loss_sum += last * len(idx)
            seen += len(idx)
        return LocalResult(float(loss_sum), seen, len(batches), float(last),
                           float(first) if batches else math.nan)


@torch.no_grad()
def evaluate(model: nn.Module, data: ClientData, device: torch.device, *, batch_size: int = 256,
             bf16: bool = False, shard: tuple[int, int] = (0, 1), num_classes: Optional[int] = None) -> torch.Tensor:
    """Loss and accuracy sums of ``model`` on the examples ``shard[0]::shard[1]`` of ``data``, and with
    ``num_classes`` K the confusion counts too.

    Text is sorted by length so batches carry little padding (exact: padding is masked).

    Returns:
        float64 tensor on ``device``: [sum of losses, number correct, number of examples] (3,), followed, when
        ``num_classes`` is given, by the K×K confusion matrix flattened row-major (entry [t, p]: examples of
        true class t predicted as p), (3 + K²,) in all. Every entry is a sum: add the tensors of the shards
        (one all-reduce) and divide to get the mean loss and the accuracy; :func:`confusion_metrics` turns the
        summed confusion matrix into balanced accuracy and macro-F1.

    Raises:
        ValueError: the model has more outputs, or the data a larger label, than ``num_classes``.
    """
    model.eval()
    idx = torch.arange(shard[0], len(data), shard[1])
    if data.lengths is not None and len(idx):
        idx = idx[torch.argsort(data.lengths[idx], stable=True)]
    k = num_classes or 0
    out = torch.zeros(3 + k * k, dtype=torch.float64, device=device)
    for b in idx.split(batch_size):
        x, y, lengths = batch_to(data, b, device)
        with autocast_ctx(device, bf16):
            logits = model(x, lengths)
        logits = logits.float()
        pred = logits.argmax(-1)
        out[0] += F.cross_entropy(logits, y, reduction="sum").double()
        out[1] += (pred == y).sum()
        out[2] += len(b)
        if k:
            if logits.shape[-1] > k or int(y.max()) >= k:
                raise ValueError(f"evaluate: {logits.shape[-1]} model outputs / label {int(y.max())} do not fit "
                                 f"num_classes={k}")
            out[3:] += torch.bincount(y * k + pred, minlength=k * k).double()  # (K*K,) row = true class
    return out


def confusion_metrics(confusion: torch.Tensor) -> dict[str, float]:
    """Class-balanced metrics of a confusion matrix (counts; entry [t, p] = true class t predicted as p).

    Args:
        confusion: (K, K) counts, any real dtype.

    Returns:
        ``balanced_acc``: mean over the classes present in the labels (row sum > 0) of their recall, as
        sklearn's ``balanced_accuracy_score``; ``macro_f1``: mean over the classes present in the labels or
        the predictions of F1 = 2·TP / (2·TP + FP + FN), as sklearn's ``f1_score(average="macro")``;
        ``pred_classes``: the number of classes predicted at least once. An empty matrix gives NaN metrics.
    """
    c = confusion.double()
    tp, true_n, pred_n = c.diagonal(), c.sum(1), c.sum(0)
    present = true_n > 0
    seen = present | (pred_n > 0)
    nan = float("nan")
    bal = float((tp[present] / true_n[present]).mean()) if present.any() else nan
    f1 = float((2 * tp[seen] / (true_n[seen] + pred_n[seen])).mean()) if seen.any() else nan
    return {"balanced_acc": bal, "macro_f1": f1, "pred_classes": int((pred_n > 0).sum())}
