"""FedProx: FedAvg with a proximal term (μ/2)·‖θ − θ_global‖² in each client's local objective.

Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith, "Federated Optimization in Heterogeneous Networks",
MLSys 2020, Eq. (2). The term's gradient μ(θ − θ_global) is added to the flat gradient directly (no autograd).
"""

from __future__ import annotations

import torch

from hpcfed.fl.client import GradHook
from hpcfed.algorithms.registry import register
from hpcfed.algorithms.fedavg import FedAvg
from hpcfed.peft import FlatParams


@register
class FedProx(FedAvg):
    """FedAvg whose local objective adds (μ/2)‖θ − θ_global‖², μ = ``fl.prox_mu``."""

    name = "fedprox"

    def grad_hook(self, theta_global: torch.Tensor) -> GradHook:
        mu = self.cfg.prox_mu

        def hook(flat: FlatParams) -> None:
            flat.grad.add_(flat.data - theta_global, alpha=mu)  # ∇ (μ/2)‖θ − θg‖² = μ(θ − θg)

        return hook
