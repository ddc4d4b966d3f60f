"""Knowledge-distillation losses of FedDAT's mutual knowledge distillation (Chen et al., AAAI 2024; reference
code ``task_trainer.py:kl_loss`` and ``train_step``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_kl(logits: torch.Tensor, target_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T²·KL(softmax(target/T) ‖ softmax(logits/T)), mean over the batch; gradient flows into ``logits`` only.

    Args:
        logits: (B, K) float — the side being trained.
        target_logits: (B, K) float — the reference (detached here).
        temperature: T > 0.

    Returns:
        scalar float32.
    """
    t = temperature
    logp = F.log_softmax(logits.float() / t, dim=-1)
    q = F.softmax(target_logits.detach().float() / t, dim=-1)
    return F.kl_div(logp, q, reduction="batchmean") * (t * t)


def mkd_loss(logits: torch.Tensor, y: torch.Tensor, reference_logits: torch.Tensor | None, temperature: float,
             kd_weight: float) -> torch.Tensor:
    """One MKD objective: ½·(CE(logits, y) + λ·KL_T(reference → logits)); plain CE without a reference.

    Args:
        logits: (B, K); y: int64 (B,); reference_logits: (B, K) or None.
    """
    ce = F.cross_entropy(logits.float(), y)
    if reference_logits is None:
        return ce
    return 0.5 * (ce + kd_weight * kd_kl(logits, reference_logits, temperature))
