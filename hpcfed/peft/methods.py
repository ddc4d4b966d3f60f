"""PEFT methods: a method decides which parameters a model trains (adding some where it must).

A method is a function ``(model, cfg) -> list of parameter names`` registered by name with
:func:`register`. :func:`apply_peft` freezes everything, runs the method, and moves the chosen parameters
into one :class:`~hpcfed.peft.flat.FlatParams` buffer. The classification head (``head.*``) is always
trained. Methods know nothing of FL or ranks.

Methods: ``head``, ``bias``, ``full``, ``lora``, ``peft`` (any Hugging Face peft config; here), ``adapter`` (:mod:`hpcfed.peft.adapter`), ``prompt``
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
    ``peft.lora_target_modules`` overrides the default with module names. ``peft.lora_freeze_a``: FFA-LoRA
    (Sun et al., ICLR 2024: W x + (α/r) B A₀ x with A₀ fixed): A stays at its seeded init (the model is built
    after ``torch.manual_seed(cfg.seed)``: the same A on every rank and client) and only B trains, so FedAvg
    of the B's is exact for B A.
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
    return [n for n, _ in model.named_parameters()
            if is_head(n) or ("lora_" in n and not (cfg.lora_freeze_a and "lora_A" in n))]


# Keys of a peft config that hpcfed sets itself: the backbone is wrapped as a plain encoder (its head is hpcfed's),
# and which parameters train is what the method decides.
_PEFT_CONFIG_OWNED = {"task_type": "hpcfed wraps the backbone only; the classification head is its own",
                      "inference_mode": "the adapter is trained"}


@register("peft")
def hf_peft(model: nn.Module, cfg: PeftConfig) -> list[str]:
    """Any Hugging Face ``peft`` method given as a config mapping in ``peft.config`` (IA3, DoRA = LoRA with
    ``use_dora: true``, LoHa, LoKr, AdaLoRA, VeRA, OFT, ...): ``peft.get_peft_config(peft.config)`` wraps the
    backbone with ``peft.get_peft_model``, as :func:`lora` does, so exports are peft's ``save_pretrained`` files.

    Trained: every backbone parameter peft leaves trainable (the method's own, e.g. ``ia3_l``, ``hada_w1_a``,
    ``lora_magnitude_vector``, plus ``modules_to_save`` copies or biases where the config asks for them) and the
    head. Without ``target_modules`` peft's defaults for the backbone's transformers ``model_type`` apply;
    timm / open_clip backbones need them named. Methods that change their own shape during training (AdaLoRA's
    rank budget) keep their initial shapes here: the flat buffer's layout is fixed.

    Raises:
        ConfigError: ``peft.config`` empty, without ``peft_type``, with a key hpcfed sets itself, or rejected by
            peft (unknown type or field, no target modules found); one line naming the key.
    """
    from peft import get_peft_config, get_peft_model

    spec = dict(cfg.config or {})
    if not spec:
        raise ConfigError("peft.method=peft needs peft.config: a Hugging Face peft config mapping, e.g. "
                          "{peft_type: IA3, target_modules: [key, value, output.dense], feedforward_modules: "
                          "[output.dense]}")
    if "peft_type" not in spec:
        raise ConfigError(f"peft.config: needs peft_type (e.g. LORA, IA3, LOHA, LOKR, ADALORA); got keys "
                          f"{sorted(spec)}")
    for key, why in _PEFT_CONFIG_OWNED.items():
        if spec.get(key) not in (None, False):
            raise ConfigError(f"peft.config.{key}={spec[key]!r}: leave it unset ({why})")
    spec["peft_type"] = str(spec["peft_type"]).upper()
    try:
        pcfg = get_peft_config(spec)
    except KeyError:
        from peft import PEFT_TYPE_TO_CONFIG_MAPPING

        raise ConfigError(f"peft.config.peft_type={spec['peft_type']!r} is not a peft method; choose one of: "
                          f"{', '.join(str(getattr(t, 'value', t)) for t in PEFT_TYPE_TO_CONFIG_MAPPING)}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"peft.config ({spec['peft_type']}): {str(e).splitlines()[0]}") from None
    try:
        wrapped = get_peft_model(model.backbone, pcfg)
    except (ValueError, TypeError, KeyError, NotImplementedError) as e:
        raise ConfigError(f"peft.config ({spec['peft_type']}): {str(e).splitlines()[0]}") from None
    model.backbone = wrapped
    return [n for n, p in model.named_parameters() if is_head(n) or (n.startswith("backbone.") and p.requires_grad)]


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
