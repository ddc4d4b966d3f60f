"""FedAvg: clients run local SGD/AdamW from the global model; the server averages their deltas weighted by
their number of training examples.

McMahan, Moore, Ramage, Hampson, Agüera y Arcas, "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017, Algorithm 1: θ ← Σ_c (n_c / n) θ_c, written here as
θ ← θ + η · Σ_c w_c Δ_c / Σ_c w_c with Δ_c = θ_c − θ, η the server learning rate (1 for the paper's rule).
"""

from __future__ import annotations

from typing import Optional

import torch

from hpcfed.config import FLConfig
from hpcfed.data import ClientData
from hpcfed.fl.client import GradHook, LocalResult, LocalTrainer


class FedAvg:
    """An algorithm implements "train one client" and "weight of a client"; it never sees ranks.

    Args:
        cfg: the ``fl`` config section.
    """

    name = "fedavg"

    def __init__(self, cfg: FLConfig):
        self.cfg = cfg

    def client_weight(self, num_samples: int) -> float:
        """Aggregation weight w_c: the client's number of examples, or 1 with ``fl.weighting=uniform``."""
        return float(num_samples) if self.cfg.weighting == "samples" else 1.0

    def grad_hook(self, theta_global: torch.Tensor) -> Optional[GradHook]:
        """Extra gradient term added after each local backward (None for FedAvg)."""
        return None

    def client_mask(self, client_id: int) -> Optional[torch.Tensor]:
        """(n,) bool entries the client trains and sends; None = all."""
        return None

    def local_update(self, trainer: LocalTrainer, theta_global: torch.Tensor, data: ClientData,
                     seed: int, client_id: int) -> LocalResult:
        """Load θ_global into the model's flat buffer and train it on ``data``; θ_c is left in the buffer."""
        trainer.flat.data.copy_(theta_global)
        return trainer.train(data, seed, grad_hook=self.grad_hook(theta_global),
                             mask=self.client_mask(client_id))
