"""Bottleneck adapters after (sequential) or beside (parallel) the attention and MLP sublayers of every block.

* sequential — Houlsby et al., "Parameter-Efficient Transfer Learning for NLP", ICML 2019: the sublayer's
  output ``o`` becomes ``o + up(act(down(o)))`` before the residual connection;
* parallel — He et al., "Towards a Unified View of Parameter-Efficient Transfer Learning", ICLR 2022: the
  adapter reads the sublayer's input ``x`` and ``up(act(down(x)))`` is added to the sublayer's output.

``down``: Linear(D, D // peft.adapter_reduction_factor) with PyTorch's default init (global RNG), ``act``:
ReLU, ``up``: Linear(D // r, D) with weight and bias ZERO, so the model starts exactly as the backbone
(invariant 4). Scaling is 1.

Adapters are registered as submodules ``adapter_attn`` and ``adapter_mlp`` of each block (parameter names
such as ``backbone.blocks.3.adapter_mlp.down.weight``) and attached to the sublayers with forward hooks
rather than wrapper modules: every original parameter keeps its name, so exports are the backbone's own
``state_dict`` names plus the adapters', and LoRA-style name targets keep working. Where the hooks sit:

=========================  ==================================  ==========================================
family                     sequential                          parallel
=========================  ==================================  ==========================================
timm_vit / open_clip       output of ``attn`` / ``mlp``        output of ``attn`` / ``mlp`` += A(their input)
hf_text (post-LN BERT)     output of ``attention.output.dense``  ``attention.output`` / ``output``:
                           / ``output.dense`` (before dropout,   residual ``input_tensor`` += A(input_tensor),
                           residual add and LayerNorm)           i.e. LN(sublayer(x) + A(x) + x)
hf_text (MPNet)            output of ``attention.attn.o`` /      attention: ``attention.attn``'s output
                           ``output.dense`` (as BERT)            += A(its input x), before dropout; FFN: as BERT
=========================  ==================================  ==========================================

(In BERT the sublayer's input is the ``input_tensor`` handed to ``BertSelfOutput`` / ``BertOutput``, so adding
A(x) to the residual term before the LayerNorm equals adding it to the sublayer's output. MPNet's attention adds
its residual inside ``MPNetAttention``, so the parallel attention adapter's term joins the self-attention output
and passes through its dropout: LN(dropout(attn(x) + A(x)) + x); identical at evaluation, and in training the
term is dropped with the output it joins.)
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from hpcfed.config import ConfigError, PeftConfig
from hpcfed.peft.arch import find_encoder
from hpcfed.peft.registry import is_head, register

ADAPTER_PREFIX = "adapter_"


def is_adapter(name: str) -> bool:
    return ADAPTER_PREFIX in name


class Adapter(nn.Module):
    """``h -> up(act(down(h)))``: (..., D) -> (..., D); ``up`` starts at zero so the output starts at zero."""

    def __init__(self, dim: int, bottleneck: int):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.act = nn.ReLU()
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(h)))

    # -- hooks (bound methods, so a deepcopy of the model copies them with the adapter) -----------------------
    def add_to_output(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        """Forward hook, sequential: ``o -> o + A(o)`` (``o`` may be the first item of a tuple)."""
        if isinstance(output, tuple):
            return (output[0] + self(output[0]),) + output[1:]
        return output + self(output)

    def add_input_to_output(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        """Forward hook, parallel: ``o -> o + A(x)`` with ``x`` the sublayer's first input."""
        x = args[0] if args else next(iter(kwargs.values()))
        if isinstance(output, tuple):
            return (output[0] + self(x),) + output[1:]
        return output + self(x)

    def add_to_residual(self, module: nn.Module, args: tuple, kwargs: dict):
        """Forward pre-hook on BertSelfOutput/BertOutput ``(hidden_states, input_tensor)``, parallel:
        ``input_tensor -> input_tensor + A(input_tensor)``."""
        if len(args) >= 2:
            x = args[1]
            return (args[0], x + self(x)) + tuple(args[2:]), kwargs
        x = kwargs["input_tensor"]
        return args, {**kwargs, "input_tensor": x + self(x)}


AdapterFactory = Callable[[int, int], nn.Module]
"""``(dim, bottleneck) -> module`` with :class:`Adapter`'s hook methods (``add_to_output``,
``add_input_to_output``, ``add_to_residual``) that compute ``h -> term added to h``."""

ADAPTER_SITES = ("attn", "mlp")
"""The sublayers of a block an adapter can sit at: attention output, MLP (FFN) output."""


def insert_adapters(model: nn.Module, reduction_factor: int, variant: str, *,
                    factory: AdapterFactory = Adapter, sites: Sequence[str] = ADAPTER_SITES) -> list[nn.Module]:
    """Insert one ``factory(D, D // reduction_factor)`` module at each of ``sites`` of every block of
    ``model.backbone`` (placement: module docstring's table; ``variant``: 'sequential' or 'parallel'), on the
    backbone's device and dtype, registered as ``<block>.adapter_<site>``.

    Args:
        model: a classifier with a supported transformer ``backbone`` (timm ViT, open_clip, HF BERT-like, MPNet).
        reduction_factor: D / bottleneck (``peft.adapter_reduction_factor``).
        variant: 'sequential' (Houlsby) or 'parallel' (He et al.).
        factory: builds one site's module (default :class:`Adapter`; FedDAT passes its dual adapter).
        sites: which sublayers, in block order (default both; FedDAT's authors use the FFN output only).

    Returns:
        the inserted modules in (block, site) order.

    Raises:
        ConfigError: the backbone is not a supported transformer, a site already has an adapter, an unknown
            site, or the bottleneck would be empty.
    """
    enc = find_encoder(model, "adapter")
    bottleneck = enc.dim // reduction_factor
    if bottleneck < 1:
        raise ConfigError(f"peft.adapter_reduction_factor={reduction_factor} is larger than the "
                          f"hidden size {enc.dim}")
    unknown = sorted(set(sites) - set(ADAPTER_SITES))
    if unknown:
        raise ConfigError(f"adapter sites {unknown} unknown; choose from {list(ADAPTER_SITES)}")
    ref = next(enc.root.parameters())
    out = []
    for blk in enc.blocks:
        subs = {"attn": blk.attn_out, "mlp": blk.mlp_out}
        for kind in sites:
            sub, attr = subs[kind], f"{ADAPTER_PREFIX}{kind}"
            if hasattr(blk.module, attr):
                raise ConfigError(f"{blk.name} already has an adapter (peft applied twice?)")
            a = factory(enc.dim, bottleneck).to(device=ref.device, dtype=ref.dtype)
            blk.module.add_module(attr, a)
            if enc.family == "hf_text":
                proj = blk.attn_proj if kind == "attn" else blk.mlp_proj
                residual = blk.attn_residual if kind == "attn" else blk.mlp_residual
                if variant == "sequential":
                    proj.register_forward_hook(a.add_to_output, with_kwargs=True)
                elif residual:
                    sub.register_forward_pre_hook(a.add_to_residual, with_kwargs=True)
                else:
                    sub.register_forward_hook(a.add_input_to_output, with_kwargs=True)
            elif variant == "sequential":
                sub.register_forward_hook(a.add_to_output, with_kwargs=True)
            else:
                sub.register_forward_hook(a.add_input_to_output, with_kwargs=True)
            out.append(a)
    return out


def add_adapters(model: nn.Module, cfg: PeftConfig) -> list[nn.Module]:
    """Insert the adapters of ``cfg`` (two per block, :class:`Adapter`); returns them in block order.

    Raises:
        ConfigError: see :func:`insert_adapters`.
    """
    return insert_adapters(model, cfg.adapter_reduction_factor, cfg.adapter_variant)


@register("adapter")
def adapter(model: nn.Module, cfg: PeftConfig) -> list[str]:
    """Bottleneck adapters (``peft.adapter_variant``: sequential = Houlsby, parallel = He et al.) + the head."""
    add_adapters(model, cfg)
    return [n for n, _ in model.named_parameters() if is_head(n) or is_adapter(n)]
