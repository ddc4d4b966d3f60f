"""PEFT methods: a method decides which parameters a model trains (adding some where it must).

A method is a function ``(model, cfg) -> list of parameter names`` registered by name with
:func:`register`. :func:`apply_peft` freezes everything, runs the method, and moves the chosen parameters
into one :class:`~hpcfed.peft.flat.FlatParams` buffer. The classification head (``head.*``) is always
trained. Methods know nothing of FL or ranks.

Methods: ``head``, ``bias``, ``full``, ``lora`` (here), ``adapter`` (:mod:`hpcfed.peft.adapter`), ``prompt``
(:mod:`hpcfed.peft.prompt`). Each works on the three backbone families (``hf_text``, ``timm_vit``,
``open_clip``; see :mod:`hpcfed.peft.arch`). A method's own parameters share a name part (``lora_``,
``adapter_``, ``prompt``), so "what is trained / sent / saved" is a name filter.
"""

from __future__ import annotations

from torch import nn

from hpcfed.config import ConfigError, PeftConfig
from hpcfed.peft.flat import FlatParams
from hpcfed.peft.registry import METHODS, is_head, register



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
# open_clip's blocks use nn.MultiheadAttention, whose fused (q, k, v) projection is a bare parameter.
# peft's LoRA for MultiheadAttention merges B A into the frozen weight before each forward and subtracts it
# afterwards, which drifts the frozen weights by rounding (breaking "frozen is frozen" and rank-count
# invariance); its `target_parameters` LoRA instead adds B A through a temporary parametrization and
# leaves the frozen tensor untouched.
_LORA_TARGET_PARAMETERS = {"open_clip": ["attn.in_proj_weight"]}


@register("lora")
def lora(model: nn.Module, cfg: PeftConfig) -> list[str]:
    """LoRA through the ``peft`` library: W x + (α/r) B A x with A (r, d_in) random, B (d_out, r) zero.

    Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022. The backbone is wrapped in
    a ``peft.PeftModel`` (so ``save_pretrained`` exports it); targets default to the attention's input
    projections: query/value for BERT-like encoders, qkv for timm ViT, and for open_clip the fused q/k/v
    projection ``attn.in_proj_weight`` of each block (peft ``target_parameters``; needs lora_dropout=0).
    ``peft.lora_target_modules`` overrides the default with module names.
    """
    from peft import LoraConfig, get_peft_model

    from hpcfed.peft.arch import backbone_family

    family = backbone_family(model)
    if cfg.lora_target_modules:
        targets, params = list(cfg.lora_target_modules), None
    elif family in _LORA_TARGET_PARAMETERS:
        targets, params = [], _LORA_TARGET_PARAMETERS[family]
        if cfg.lora_dropout:
            raise ConfigError(f"peft.lora_dropout={cfg.lora_dropout}: must be 0 for LoRA on {family}'s fused "
                              "attention projection (or set peft.lora_target_modules)")
    else:
        targets, params = _LORA_TARGETS[family], None
    lcfg = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, target_parameters=params, bias="none")
    try:
        wrapped = get_peft_model(model.backbone, lcfg)
    except ValueError as e:
        raise ConfigError(f"peft.lora_target_modules={targets or params}: {str(e).splitlines()[0]}") from None
    from peft.tuners.lora.layer import MultiheadAttention as LoraMHA

    if any(isinstance(m, LoraMHA) for m in wrapped.modules()):
        raise ConfigError(f"peft.lora_target_modules={targets}: names an nn.MultiheadAttention, whose peft LoRA "
                          "changes the frozen weights by rounding; leave it null for open_clip")
    model.backbone = wrapped
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
