"""The local optimizer of ``fl.local``: AdamW or SGD (+ momentum) over a flat buffer, one fused kernel a step.

One class serves every local trainer: the sequential :class:`~hpcfed.fl.client.LocalTrainer` (one client, an
(n,) buffer), the vmapped :class:`~hpcfed.fl.parallel.GroupTrainer` (G clients stacked as (G, n)), and methods
that train a second buffer of their own (FedDAT's client adapter, FedSimSiam). Optimizer state is reset at the
start of every client's local training: clients are stateless between rounds unless a method keeps state
itself (FedDAT's client adapters: :mod:`hpcfed.fl.state_store`).
"""

from __future__ import annotations

from typing import Optional

import torch

from hpcfed import kernels
from hpcfed.config import LocalConfig
from hpcfed.peft import FlatParams, is_head


def head_lr_scale(flat: FlatParams, cfg: LocalConfig) -> Optional[torch.Tensor]:
    """(n,) fp32 learning-rate multiplier: ``head_lr / lr`` on the classification head's entries, 1 elsewhere;
    None when ``fl.local.head_lr`` is unset or equal to ``lr``."""
    if cfg.head_lr is None or cfg.head_lr == cfg.lr:
        return None
    return flat.segment_mask(is_head, dtype=torch.float32) * (cfg.head_lr / cfg.lr - 1.0) + 1.0


def clip_rows_(grad: torch.Tensor, max_norm: Optional[float]) -> None:
    """Scale each row of ``grad`` in place to L2 norm ≤ ``max_norm`` (``torch.nn.utils.clip_grad_norm_``'s
    rule, ε = 1e-6). ``grad``: (n,) — one client — or (G, n) — one norm per client. None: no clipping."""
    if max_norm is None:
        return
    if grad.dim() == 1:
        norm = torch.linalg.vector_norm(grad)
    else:
        norm = torch.linalg.vector_norm(grad, dim=1, keepdim=True)
    grad.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))


class FlatOptimizer:
    """AdamW (Loshchilov & Hutter, ICLR 2019) or SGD with momentum over a flat fp32 buffer, with per-entry
    update masks and learning-rate scales, in one fused kernel (:func:`hpcfed.kernels.masked_adamw_step` /
    :func:`~hpcfed.kernels.masked_sgd_step`).

    Args:
        cfg: ``fl.local`` (optimizer, beta1/beta2/eps, momentum, weight_decay, max_grad_norm).
        shape: the parameter buffer's shape, (n,) or (G, n) for G clients trained at once.
        device: where the state lives.
        lr_scale: (n,) fp32 per-entry learning-rate multiplier (e.g. ``fl.local.head_lr``), or None; repeated
            over the G rows of a (G, n) buffer.
        backend: kernel backend forwarded to the dispatchers (None: auto).

    State: ``exp_avg`` (first moment / momentum) and ``exp_avg_sq`` (AdamW only), fp32, of ``shape``.
    """

    def __init__(self, cfg: LocalConfig, shape: tuple[int, ...] | torch.Size, device: torch.device, *,
                 lr_scale: Optional[torch.Tensor] = None, backend: Optional[str] = None):
        self.cfg, self.backend = cfg, backend
        self.exp_avg = torch.zeros(shape, device=device)
        self.exp_avg_sq = torch.zeros(shape, device=device) if cfg.optimizer == "adamw" else None
        rows = self.exp_avg.shape[0] if self.exp_avg.dim() == 2 else 1
        self.lr_scale = None
        if lr_scale is not None:
            self.lr_scale = lr_scale.to(device).repeat(rows) if rows > 1 else lr_scale.to(device)

    def reset(self) -> None:
        """Zero the state (a client starts its local training)."""
        self.exp_avg.zero_()
        if self.exp_avg_sq is not None:
            self.exp_avg_sq.zero_()

    def step(self, params: torch.Tensor, grad: torch.Tensor, *, step: int, lr: float,
             mask: Optional[torch.Tensor] = None, clip: bool = True) -> None:
        """One update of ``params`` in place.

        Args:
            params, grad: fp32 of the optimizer's shape (contiguous).
            step: 1-based step count within the client's local training (AdamW bias correction).
            lr: the learning rate of this step.
            mask: bool of ``params.numel()`` entries; False entries keep their value and state. None: all.
            clip: first clip ``grad`` per row to ``cfg.max_grad_norm`` (False: the caller already did).
        """
        c = self.cfg
        if clip:
            clip_rows_(grad, c.max_grad_norm)
        if c.optimizer == "adamw":
            kernels.masked_adamw_step(
                params.view(-1), grad.view(-1), self.exp_avg.view(-1), self.exp_avg_sq.view(-1), lr=lr,
                beta1=c.beta1, beta2=c.beta2, eps=c.eps, weight_decay=c.weight_decay, step=step, mask=mask,
                lr_scale=self.lr_scale, backend=self.backend)
        else:
            kernels.masked_sgd_step(
                params.view(-1), grad.view(-1), self.exp_avg.view(-1) if c.momentum > 0 else None, lr=lr,
                momentum=c.momentum, weight_decay=c.weight_decay, step=step, mask=mask, lr_scale=self.lr_scale,
                backend=self.backend)
