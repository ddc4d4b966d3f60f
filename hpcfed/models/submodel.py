"""Sub-model surgery for FedPFT (Peng et al., "FedPFT: Federated Proxy Fine-Tuning of Foundation Models", IJCAI
2024, arXiv:2404.11536, Sec. 4.1): layer-wise FFN compression of a BERT-like encoder by neuron saliency.

Works on a Hugging Face BERT-like encoder (``encoder.layer[i].intermediate.dense`` / ``.output.dense``), bare
or wrapped by ``peft``; nothing here knows about FL, training or processes (the method, its distillation and
alignment are in :mod:`hpcfed.algorithms.fedpft` and :mod:`hpcfed.algorithms.fedpft_submodel`).
Authors' code: https://github.com/pzp-dzd/FedPFT.

Notation for one transformer layer's FFN with hidden size D and F neurons:
``W1`` = ``intermediate.dense.weight`` (F, D), ``b1`` (F,), ``W2`` = ``output.dense.weight`` (D, F), ``b2`` (D,);
neuron j is row ``W1[j]``, entry ``b1[j]`` and column ``W2[:, j]``.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn


# ------------------------------------------------------------------------------------------ navigation
def encoder_layers(backbone: nn.Module) -> nn.ModuleList:
    """The ``encoder.layer`` ModuleList of a BERT-like backbone (bare, or inside a ``peft`` wrapper).

    Raises:
        ValueError: no module named ``...encoder`` with a ``layer`` list whose items have an ``intermediate``.
    """
    for name, m in backbone.named_modules():
        if (name == "encoder" or name.endswith(".encoder")) and isinstance(getattr(m, "layer", None), nn.ModuleList):
            if len(m.layer) and hasattr(m.layer[0], "intermediate"):
                return m.layer
    raise ValueError("FedPFT needs a BERT-like encoder (encoder.layer[i].intermediate / .output)")


def default_compressed_layers(num_layers: int, spec: str = "inner") -> list[int]:
    """Indices of the layers whose FFN is compressed.

    Args:
        num_layers: the encoder depth N.
        spec: 'inner' (every layer but the first and the last, the paper's default), 'all', or comma-separated
            indices such as '1,2,3'.

    Raises:
        ValueError: an index outside [0, N), or a spec that is none of these.
    """
    if spec == "inner":
        return list(range(1, num_layers - 1))
    if spec == "all":
        return list(range(num_layers))
    try:
        idx = sorted({int(s) for s in spec.split(",") if s.strip()})
    except ValueError:
        raise ValueError(f"{spec!r}: expected 'inner', 'all' or comma-separated layer indices") from None
    bad = [i for i in idx if not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"{spec!r}: layer index {bad[0]} outside [0, {num_layers})")
    return idx


# ------------------------------------------------------------------------------------------ construction
def neuron_saliency(w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """Saliency of each FFN neuron: the L2 norm of its incoming row and outgoing column together.

    s_j = ‖[W1[j, :], W2[:, j]]‖₂ (the authors' code: ``cat([W1, W2ᵀ], dim=1).norm(dim=1)``).

    Args:
        w1: (F, D) ``intermediate.dense.weight``.
        w2: (D, F) ``output.dense.weight``.

    Returns:
        (F,) float32 saliencies.
    """
    if w1.shape[0] != w2.shape[1] or w1.shape[1] != w2.shape[0]:
        raise ValueError(f"W1 {tuple(w1.shape)} and W2 {tuple(w2.shape)} are not (F, D) and (D, F)")
    return torch.cat([w1.float(), w2.float().t()], dim=1).norm(dim=1)  # (F,)


def top_k_neurons(saliency: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (int64 (k,), ascending) of the ``k`` most salient neurons; ties go to the lower index.

    Raises:
        ValueError: k outside [1, F].
    """
    f = saliency.numel()
    if not 1 <= k <= f:
        raise ValueError(f"k={k} outside [1, {f}]")
    order = torch.sort(saliency, descending=True, stable=True).indices  # stable: equal saliency -> lower index first
    return torch.sort(order[:k]).values


def num_kept(num_neurons: int, keep_ratio: float) -> int:
    """k = round(keep_ratio · F), at least 1 and at most F."""
    return min(num_neurons, max(1, int(round(keep_ratio * num_neurons))))


def _sub_linear(lin: nn.Linear, idx: torch.Tensor, dim: int) -> nn.Linear:
    """A new nn.Linear keeping output rows (dim=0) or input columns (dim=1) ``idx`` of ``lin``."""
    w = lin.weight.detach().index_select(dim, idx).clone()
    if dim == 0:
        new = nn.Linear(lin.in_features, len(idx), bias=lin.bias is not None)
        b = None if lin.bias is None else lin.bias.detach()[idx].clone()
    else:
        new = nn.Linear(len(idx), lin.out_features, bias=lin.bias is not None)
        b = None if lin.bias is None else lin.bias.detach().clone()
    new = new.to(device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    return new


def compress_ffn_(layer: nn.Module, keep: torch.Tensor) -> None:
    """In place: keep only neurons ``keep`` (int64 (k,)) of ``layer``'s FFN (W1 rows, b1, W2 columns; b2 and the
    LayerNorm unchanged)."""
    layer.intermediate.dense = _sub_linear(layer.intermediate.dense, keep, 0)
    layer.output.dense = _sub_linear(layer.output.dense, keep, 1)


def build_submodel(full: nn.Module, keep_ratio: float, layers: Sequence[int]) -> tuple[nn.Module, dict[int, torch.Tensor]]:
    """A deep copy of ``full`` (a classifier whose ``.backbone`` is a BERT-like encoder) with the FFN of each
    layer in ``layers`` cut to its top-k neurons by :func:`neuron_saliency` (FedPFT Sec. 4.1). Attention,
    LayerNorms, embeddings, the other layers and the head are copied unchanged.

    Returns:
        (sub-model, {layer index: kept neuron indices of the full layer, int64 (k,) ascending}).
    """
    sub = copy.deepcopy(full)
    kept = {}
    full_layers, sub_layers = encoder_layers(full.backbone), encoder_layers(sub.backbone)
    for i in layers:
        fl = full_layers[i]
        w1, w2 = fl.intermediate.dense.weight.detach(), fl.output.dense.weight.detach()
        keep = top_k_neurons(neuron_saliency(w1, w2), num_kept(w1.shape[0], keep_ratio))
        compress_ffn_(sub_layers[i], keep)
        kept[i] = keep
    return sub, kept
