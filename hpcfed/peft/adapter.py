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
=========================  ==================================  ==========================================

(In BERT the sublayer's input is the ``input_tensor`` handed to ``BertSelfOutput`` / ``BertOutput``, so adding
A(x) to the residual term before the LayerNorm equals adding it to the sublayer's output.)
"""

from __future__ import annotations

from typing import Any

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


def add_adapters(model: nn.Module, cfg: PeftConfig) -> list[nn.Module]:
    """Insert two adapters per block of ``model.backbone``; returns them (in block order).

    Raises:
        ConfigError: the backbone is not a supported transformer, it already has adapters, or the
            bottleneck would be empty.
    """
    enc = find_encoder(model, "adapter")
    bottleneck = enc.dim // cfg.adapter_reduction_factor
    if bottleneck < 1:
        raise ConfigError(f"peft.adapter_reduction_factor={cfg.adapter_reduction_factor} is larger than the "
                          f"hidden size {enc.dim}")
    ref = next(enc.root.parameters())
    out = []
    for blk in enc.blocks:
        for kind, sub in (("attn", blk.attn_out), ("mlp", blk.mlp_out)):
            attr = f"{ADAPTER_PREFIX}{kind}"
            if hasattr(blk.module, attr):
                raise ConfigError(f"{blk.name} already has an adapter (peft applied twice?)")
            a = Adapter(enc.dim, bottleneck).to(device=ref.device, dtype=ref.dtype)
            blk.module.add_module(attr, a)
            if enc.family == "hf_text":
                if cfg.adapter_variant == "sequential":
                    sub.dense.register_forward_hook(a.add_to_output, with_kwargs=True)
                else:
                    sub.register_forward_pre_hook(a.add_to_residual, with_kwargs=True)
            elif cfg.adapter_variant == "sequential":
                sub.register_forward_hook(a.add_to_output, with_kwargs=True)
            else:
                sub.register_forward_hook(a.add_input_to_output, with_kwargs=True)
            out.append(a)
    return out


@register("adapter")
def adapter(model: nn.Module, cfg: PeftConfig) -> list[str]:
    """Bottleneck adapters (``peft.adapter_variant``: sequential = Houlsby, parallel = He et al.) + the head."""
    add_adapters(model, cfg)
    return [n for n, _ in model.named_parameters() if is_head(n) or is_adapter(n)]
