"""FedProx: FedAvg with a proximal term (μ/2)·‖θ − θ_global‖² in each client's local objective.

Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith, "Federated Optimization in Heterogeneous Networks",
MLSys 2020, Eq. (2). The term's gradient μ(θ − θ_global) is added to the flat gradient directly (no autograd).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hpcfed.config import ConfigError
from hpcfed.fl.client import GradHook
from hpcfed.algorithms.registry import register
from hpcfed.algorithms.fedavg import FedAvg
from hpcfed.peft import FlatParams


@dataclass(frozen=True)
class FedProxParams:
    """FedProx's hyperparameter (``fl.algo.mu``)."""

    mu: float = 0.01
    """μ ≥ 0, the proximal weight (the paper sweeps {0.001, 0.01, 0.1, 1}; 0 is FedAvg)."""

    def __post_init__(self) -> None:
        if not self.mu >= 0:
            raise ConfigError(f"fl.algo.mu={self.mu} must be >= 0")


@register
class FedProx(FedAvg):
    """FedAvg whose local objective adds (μ/2)‖θ − θ_global‖², μ = ``fl.algo.mu``."""

    name = "fedprox"
    Params = FedProxParams

    def grad_hook(self, theta_global: torch.Tensor) -> GradHook:
        mu = self.params.mu

        def hook(flat: FlatParams) -> None:
            flat.grad.add_(flat.data - theta_global, alpha=mu)  # ∇ (μ/2)‖θ − θg‖² = μ(θ − θg)

        return hook
