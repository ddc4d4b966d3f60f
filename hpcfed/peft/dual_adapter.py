"""FedDAT's dual adapter (Chen et al., "FedDAT: An Approach for Foundation Model Finetuning in Multi-Modal
Heterogeneous Federated Learning", AAAI 2024): at each adapter site, three adapters and a mode switch.

A_S is the shared adapter (federated), A_C the client's own adapter (kept per client between rounds), Â_S a
frozen copy of the global A_S; in mode DAT the site adds ½·A_C(h) + ½·Â_S(h) (the Dual-Adapter Teacher).
Inserted by :func:`hpcfed.peft.adapter.insert_adapters`, so the placement is the single adapter's.
Authors' code: https://github.com/HaokunChen245/FedDAT.
"""

from __future__ import annotations

import enum
from typing import Sequence

import torch
from torch import nn

from hpcfed.peft.adapter import ADAPTER_SITES, Adapter, insert_adapters


class Mode(str, enum.Enum):
    STUDENT = "student"
    """h + A_S(h): the shared adapter (the global model when A_S holds θ_global)."""
    DAT = "dat"
    """h + ½·A_C(h) + ½·Â_S(h): the Dual-Adapter Teacher."""
    CLIENT = "client"
    """h + A_C(h): the client adapter alone."""
    GLOBAL = "global"
    """h + Â_S(h): the frozen global copy alone."""


class DualAdapter(nn.Module):
    """The three adapters of one site and the mode switch: (..., D) -> (..., D), the term added to ``h``.

    Args:
        dim: D; bottleneck: the adapters' inner width.

    Attributes:
        shared, client, global_copy: :class:`~hpcfed.peft.adapter.Adapter` modules A_S, A_C, Â_S (up
            projection zero: each starts as the identity).
        mode: a :class:`Mode`.
    """

    def __init__(self, dim: int, bottleneck: int):
        super().__init__()
        self.shared = Adapter(dim, bottleneck)
        self.client = Adapter(dim, bottleneck)
        self.global_copy = Adapter(dim, bottleneck)
        self.mode = Mode.STUDENT

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.mode == Mode.STUDENT:
            return self.shared(h)
        if self.mode == Mode.DAT:
            return 0.5 * self.client(h) + 0.5 * self.global_copy(h)
        if self.mode == Mode.CLIENT:
            return self.client(h)
        return self.global_copy(h)

    # the same hooks as a single adapter (they call ``self(h)``)
    add_to_output = Adapter.add_to_output
    add_input_to_output = Adapter.add_input_to_output
    add_to_residual = Adapter.add_to_residual


def init_bert_weights_(module: nn.Module, std: float = 0.02) -> None:
    """In place: every ``nn.Linear`` of ``module`` gets weight ~ normal(0, ``std``) and bias 0 (BERT's init; FedDAT's
    reference code ``src/modeling/models/adapter.py:init_bert_weights``, applied to both projections), drawn
    from the global RNG in module order."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def add_dual_adapters(model: nn.Module, reduction_factor: int, variant: str, *,
                      sites: Sequence[str] = ADAPTER_SITES) -> list[DualAdapter]:
    """Insert a :class:`DualAdapter` at ``sites`` of every block of ``model.backbone`` (the placement of
    :func:`hpcfed.peft.adapter.insert_adapters`: ``sequential`` or ``parallel``); returns them in block order.

    Raises:
        ConfigError: unsupported backbone, an empty bottleneck, or adapters already present.
    """
    return insert_adapters(model, reduction_factor, variant, factory=DualAdapter, sites=sites)
