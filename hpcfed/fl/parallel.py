"""Client-parallel local training: G clients of a round trained at once on the shared frozen backbone.

The frozen backbone is the same for every client; only the flat PEFT buffer differs. So a rank stacks the
flat buffers of G clients into Θ (G, n) and runs ONE batched forward and backward over their G batches with
``torch.func.vmap(grad_and_value(loss))`` over ``functional_call`` — every frozen matmul becomes G times
larger (what a CPU's AMX units and a GPU's tensor cores need), and the per-op Python/dispatch cost is paid
once per group instead of once per client. Per-client optimizer state is (G, n) and is stepped by the same
fused kernels as one client (``masked_adamw_step`` / ``masked_sgd_step`` over the flattened (G·n) views).

Sequential semantics are kept: client g draws exactly the batches it would draw alone (its own generator
from :func:`hpcfed.fl.sampling.client_seed`), the same length-bucketed micro-batches (each micro-batch padded
to the longest of the group; padding is masked, so this is exact), the same optimizer, lr schedule, head lr,
gradient clipping (per client) and logit adjustment. What differs: dropout masks are drawn for the whole
group (``randomness="different"`` under a generator seeded by the group's first client), so with dropout
active a client's update depends on its group; groups are formed from the cohort *before* placement on
ranks (:func:`make_groups`), which keeps results independent of the number of ranks. With dropout off the
group path equals the sequential path within fp tolerance (tested).

With ``fl.local.bf16`` the group path does not use autocast (whose backward vmap does not support): the
frozen weights are held as a bf16 copy, the fp32 master buffer Θ is cast to bf16 inside the forward, and
gradients come back in fp32 to Θ — "bf16 backbone, fp32 master weights".

Not vectorized (the loop falls back to one client at a time and says so once): epoch-based local training
(clients' step counts differ), algorithms with their own ``local_update`` or a gradient hook (FedProx,
FedDAT, ...), soft prompts on text encoders (peft concatenates a 2-D mask), and backbones other than the
transformers text encoders and timm ViTs.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from hpcfed.config import Config, LocalConfig
from hpcfed.data import ClientData
from hpcfed.fl.client import LocalResult, batch_to, length_buckets, local_batches
from hpcfed.fl.optim import FlatOptimizer, head_lr_scale
from hpcfed.peft import FlatParams

log = logging.getLogger("hpcfed.fl")


def unsupported_reason(cfg: Config, model: nn.Module, algorithm) -> Optional[str]:
    """Why the group path cannot train this job (None: it can)."""
    from hpcfed.fl.algorithm import Algorithm
    from hpcfed.models import ImageClassifier, TextClassifier

    c = cfg.fl.local
    if c.steps is None:
        return "local training by epochs (clients' step counts differ); set fl.local.steps"
    if type(algorithm).local_update is not Algorithm.local_update:
        return f"algorithm {algorithm.name!r} has its own local update"
    if type(algorithm).grad_hook is not Algorithm.grad_hook:
        return f"algorithm {algorithm.name!r} adds a gradient term"
    if isinstance(model, TextClassifier):
        if cfg.peft.method == "prompt":
            return "soft prompts on a text encoder"
        return None
    if isinstance(model, ImageClassifier):
        return None
    return f"backbone family {cfg.model.family!r}"


def make_groups(cohort: list[int], batch_sizes: dict[int, int], group_size: int) -> list[list[int]]:
    """Split a round's cohort into groups of at most ``group_size`` clients that can be stacked.

    Clients are stacked only with clients of the same local batch size (``min(batch_size, n_c)``); within a
    batch size they are grouped in cohort order. The groups depend only on the cohort, never on the ranks.

    Args:
        cohort: client ids in sampling order.
        batch_sizes: client id -> its local batch size.
        group_size: G ≥ 1.

    Returns:
        the groups, ordered by their first client's position in the cohort.
    """
    by_bs: dict[int, list[int]] = {}
    for cid in cohort:
        by_bs.setdefault(batch_sizes[cid], []).append(cid)
    groups = [members[i:i + group_size] for members in by_bs.values()
              for i in range(0, len(members), group_size)]
    pos = {c: i for i, c in enumerate(cohort)}
    return sorted(groups, key=lambda g: pos[g[0]])


class GroupTrainer:
    """Trains a group of clients at once from a common starting point.

    Args:
        model: the classifier whose trainable parameters are the views of ``flat`` (TextClassifier or
            ImageClassifier).
        flat: the flat buffer (its layout names the trainable tensors; its values are not touched).
        cfg: local training hyperparameters (``steps`` must be set).
        device: compute device.
        kernel_backend: forwarded to the fused optimizer kernels.
    """

    def __init__(self, model: nn.Module, flat: FlatParams, cfg: LocalConfig, device: torch.device,
                 kernel_backend: Optional[str] = None):
        self.model, self.flat, self.cfg, self.device = model, flat, cfg, device
        self.kernel_backend = kernel_backend
        self.lr = cfg.lr
        self.compute_dtype = torch.bfloat16 if cfg.bf16 else torch.float32
        self.lr_scale = head_lr_scale(flat, cfg)
        self._frozen: Optional[dict[str, torch.Tensor]] = None
        self._grad_fn = vmap(grad_and_value(self._loss), in_dims=(0, 0, 0, 0, 0), randomness="different")

    def set_lr(self, lr: float) -> None:
        """The local learning rate of this round (from the sequential trainer's schedule)."""
        self.lr = lr

    def frozen_params(self) -> dict[str, torch.Tensor]:
        """Every non-trainable parameter, in the compute dtype (a bf16 copy, made once, with ``bf16``)."""
        if self._frozen is None:
            train = {s.name for s in self.flat.layout}
            self._frozen = {n: p.detach().to(self.compute_dtype)
                            for n, p in self.model.named_parameters(remove_duplicate=False) if n not in train}
        return self._frozen

    def _loss(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lengths: torch.Tensor,
              adjust: torch.Tensor) -> torch.Tensor:
        """One client's mean cross-entropy on one micro-batch (runs under vmap: no data-dependent Python).

        theta (n,) fp32; x (B, L) int / (B, H, W, C) uint8; y (B,) int64; lengths (B,) int (zeros for
        images); adjust (K,) fp32 logit adjustment (zeros when off).
        """
        params = dict(self.frozen_params())
        for s in self.flat.layout:
            params[s.name] = theta[s.offset:s.end].view(s.shape).to(self.compute_dtype)
        lens = lengths if x.dim() == 2 else None  # text (B, L); images are (B, H, W, C)
        logits = functional_call(self.model, params, (x, lens), {"compute_dtype": self.compute_dtype})
        return F.cross_entropy(logits.float() + adjust, y)

    def _adjustment(self, data: ClientData) -> torch.Tensor:
        k = self.model.head.out_features
        if self.cfg.logit_adjust_tau <= 0:
            return torch.zeros(k, device=self.device)
        counts = torch.bincount(data.y, minlength=k).double() + 1.0
        return (self.cfg.logit_adjust_tau * torch.log(counts / counts.sum())).float().to(self.device)

    def train_group(self, datas: list[ClientData], seeds: list[int], theta_start: torch.Tensor,
                    masks: list[Optional[torch.Tensor]]) -> tuple[torch.Tensor, list[LocalResult]]:
        """Train G clients from ``theta_start``.

        Args:
            datas: the G clients' examples (CPU tensors), all with the same local batch size.
            seeds: their seeds for this round (:func:`client_seed`).
            theta_start: (n,) fp32, the global model.
            masks: per client an (n,) bool mask of the entries it may update, or None (all).

        Returns:
            (Θ, results): Θ (G, n) fp32, the trained flat buffers; one :class:`LocalResult` per client.

        Raises:
            ValueError: the clients' batch sizes differ (see :func:`make_groups`).
        """
        c, dev = self.cfg, self.device
        g_count, n = len(datas), theta_start.numel()
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        plans = [local_batches(len(d), c.batch_size, epochs=c.epochs, steps=c.steps, generator=gen)
                 for d, gen in zip(datas, gens)]
        if len({len(p[0]) for p in plans}) != 1:
            raise ValueError("a client group must share one local batch size")
        torch.manual_seed(seeds[0])  # the group's dropout masks
        theta = theta_start.detach().to(dev).unsqueeze(0).repeat(g_count, 1).contiguous()  # (G, n)
        grads = torch.zeros_like(theta)
        opt = FlatOptimizer(c, theta.shape, dev, lr_scale=self.lr_scale, backend=self.kernel_backend)
        mask = None
        if any(m is not None for m in masks):
            mask = torch.stack([m.to(dev) if m is not None else torch.ones(n, dtype=torch.bool, device=dev)
                                for m in masks]).view(-1)
        adjust = torch.stack([self._adjustment(d) for d in datas])  # (G, K)
        text = datas[0].lengths is not None
        self.model.train()
        loss_sum = torch.zeros(g_count, device=dev)
        last = first = torch.zeros(g_count, device=dev)
        for step in range(len(plans[0])):
            grads.zero_()
            loss = torch.zeros(g_count, device=dev)
            idxs = [p[step] for p in plans]
            parts = [length_buckets(d, idx, c.length_buckets) for d, idx in zip(datas, idxs)]
            for j in range(len(parts[0])):
                xs, ys, ls = [], [], []
                for d, p in zip(datas, parts):
                    x, y, lengths = batch_to(d, p[j], dev)
                    xs.append(x)
                    ys.append(y)
                    ls.append(lengths if lengths is not None else torch.zeros(len(y), dtype=torch.int32,
                                                                              device=dev))
                if text:  # pad the micro-batches to the group's longest (masked, so exact)
                    lmax = max(x.shape[1] for x in xs)
                    xs = [F.pad(x, (0, lmax - x.shape[1])) for x in xs]
                share = len(parts[0][j]) / len(idxs[0])
                g_j, l_j = self._grad_fn(theta, torch.stack(xs), torch.stack(ys), torch.stack(ls), adjust)
                grads.add_(g_j, alpha=share)
                loss.add_(l_j.detach(), alpha=share)
            opt.step(theta, grads, step=step + 1, lr=self.lr, mask=mask)
            last = loss
            if step == 0:
                first = loss
            loss_sum += loss * len(idxs[0])
        bs = len(plans[0][0])
        steps = len(plans[0])
        results = [LocalResult(float(loss_sum[g]), bs * steps, steps, float(last[g]), float(first[g]))
                   for g in range(g_count)]
        return theta, results


def group_batch_size(cfg: LocalConfig, num_samples: int) -> int:
    """A client's local batch size: ``min(batch_size, n_c)`` (what :func:`local_batches` uses)."""
    return min(cfg.batch_size, num_samples)

