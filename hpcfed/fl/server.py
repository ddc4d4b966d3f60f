"""Server optimizers over the aggregated pseudo-gradient Δ = acc / cnt (per element, where cnt > 0).

* avg   — FedAvg: θ ← θ + η·Δ (η = 1 is plain averaging). McMahan et al., AISTATS 2017.
* avgm  — FedAvgM, server momentum: m ← μ·m + Δ; θ ← θ + η·m. Hsu, Qi, Brown, arXiv:1909.06335, 2019.
* adam  — FedAdam; yogi — FedYogi. Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Alg. 2.

One fused kernel pass (:func:`hpcfed.kernels.server_update`), identical on every rank.
"""

from __future__ import annotations

from typing import Optional

import torch

from hpcfed import kernels
from hpcfed.config import ServerOptConfig


class ServerOptimizer:
    """Stateful server step. ``state`` holds the flat ``m``/``v`` buffers; ``step`` counts updates."""

    def __init__(self, cfg: ServerOptConfig, numel: int, device: torch.device,
                 kernel_backend: Optional[str] = None):
        self.cfg = cfg
        self.state = kernels.init_server_state(cfg.name, numel, device)
        self.step_count = 0
        self.kernel_backend = kernel_backend

    def step(self, theta: torch.Tensor, acc: torch.Tensor, cnt: torch.Tensor,
             mask: Optional[torch.Tensor] = None) -> None:
        """Update ``theta`` (n,) fp32 in place from the reduced ``acc``, ``cnt`` (n,) fp32."""
        c = self.cfg
        self.step_count += 1
        kernels.server_update(theta, acc, cnt, self.state, optimizer=c.name, lr=c.lr, step=self.step_count,
                              momentum=c.momentum, beta1=c.beta1, beta2=c.beta2, eps=c.eps,
                              bias_correction=c.bias_correction, mask=mask, backend=self.kernel_backend)

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {f"server_opt.{k}": v for k, v in self.state.items()}
        out["server_opt.step"] = torch.tensor(self.step_count, dtype=torch.int64)
        return out

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        for k in self.state:
            self.state[k].copy_(sd[f"server_opt.{k}"])
        self.step_count = int(sd["server_opt.step"])
