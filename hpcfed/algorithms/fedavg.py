"""FedAvg: clients run local SGD/AdamW from the global model; the server averages their deltas weighted by
their number of training examples.

McMahan, Moore, Ramage, Hampson, Agüera y Arcas, "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017, Algorithm 1: θ ← Σ_c (n_c / n) θ_c, written here as
θ ← θ + η · Σ_c w_c Δ_c / Σ_c w_c with Δ_c = θ_c − θ, η the server learning rate (1 for the paper's rule).
"""

from __future__ import annotations

from hpcfed.algorithms.registry import register
from hpcfed.fl.algorithm import Algorithm


@register
class FedAvg(Algorithm):
    """FedAvg: every hook of :class:`~hpcfed.fl.algorithm.Algorithm` as it is (clients train all of the flat
    buffer from θ_global; weights = examples or uniform; server step from ``fl.server_opt``).

    Args:
        cfg: the run config.
    """

    name = "fedavg"
