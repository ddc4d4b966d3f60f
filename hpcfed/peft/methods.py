"""PEFT methods: a method decides which parameters a model trains (adding some where it must).

A method is a function ``(model, cfg) -> list of parameter names`` registered by name with
:func:`register`. :func:`apply_peft` freezes everything, runs the method, and moves the chosen parameters
into one :class:`~hpcfed.peft.flat.FlatParams` buffer. The classification head (``head.*``) is always
trained. Methods know nothing of FL or ranks.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from hpcfed.config import ConfigError, PeftConfig
from hpcfed.peft.flat import FlatParams

MethodFn = Callable[[nn.Module, PeftConfig], list[str]]
METHODS: dict[str, MethodFn] = {}


def register(name: str) -> Callable[[MethodFn], MethodFn]:
    """Decorator: register a PEFT method under ``name`` (the value of ``peft.method``)."""

    def deco(fn: MethodFn) -> MethodFn:
        METHODS[name] = fn
        return fn

    return deco


def is_head(name: str) -> bool:
    return name.startswith("head.")


@register("head")
def head_only(model: nn.Module, cfg: PeftConfig) -> list[str]:
    """Linear probe: only the classification head."""
    return [n for n, _ in model.named_parameters() if is_head(n)]


@register("bias")
def bitfit(model: nn.Module, cfg: PeftConfig) -> list[str]:
    """BitFit: every bias term of the backbone (attention, MLP, LayerNorm) plus the head.

    Ben Zaken, Goldberg, Ravfogel, "BitFit: Simple Parameter-efficient Fine-tuning for Transformer-based
    Masked Language-models", ACL 2022.
    """
    return [n for n, _ in model.named_parameters() if is_head(n) or n.endswith(".bias")]


@register("full")
def full(model: nn.Module, cfg: PeftConfig) -> list[str]:
    """Full fine-tuning: every parameter."""
    return [n for n, _ in model.named_parameters()]


_LORA_TARGETS = {"hf_text": ["query", "value"], "timm_vit": ["qkv"]}


@register("lora")
def lora(model: nn.Module, cfg: PeftConfig) -> list[str]:
    """LoRA through the ``peft`` library: W x + (α/r) B A x with A (r, d_in) random, B (d_out, r) zero.

    Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022. The backbone is wrapped in
    a ``peft.PeftModel`` (so ``save_pretrained`` exports it); targets default to the attention projections
    (query/value for BERT-like encoders, qkv for timm ViT).
    """
    from peft import LoraConfig, get_peft_model

    family = "timm_vit" if not hasattr(model.backbone, "config") else "hf_text"
    targets = list(cfg.lora_target_modules) if cfg.lora_target_modules else _LORA_TARGETS[family]
    lcfg = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, bias="none")
    try:
        model.backbone = get_peft_model(model.backbone, lcfg)
    except ValueError as e:
        raise ConfigError(f"peft.lora_target_modules={targets}: {str(e).splitlines()[0]}") from None
    return [n for n, _ in model.named_parameters() if is_head(n) or "lora_" in n]


def apply_peft(model: nn.Module, cfg: PeftConfig) -> FlatParams:
    """Apply the method ``cfg.method`` to ``model`` and return its flat buffer of trainable parameters.

    Every parameter not chosen by the method is frozen (``requires_grad=False``).

    Raises:
        ConfigError: unknown method.
    """
    if cfg.method not in METHODS:
        raise ConfigError(f"peft.method={cfg.method!r} is not valid; choose one of: {', '.join(METHODS)}")
    for p in model.parameters():
        p.requires_grad_(False)
    names = METHODS[cfg.method](model, cfg)
    return FlatParams(model, names)
