"""Where the transformer blocks of each backbone family are, for methods that add modules (adapters, prompts).

Families (see :mod:`hpcfed.models`):

* ``timm_vit``: a timm ``VisionTransformer``; blocks ``blocks.{i}`` with ``attn`` and ``mlp`` sublayers
  (pre-LN: ``x + attn(norm1(x))``, ``x + mlp(norm2(x))``); ``num_prefix_tokens`` tokens (class, registers)
  precede the patch tokens.
* ``open_clip``: ``OpenCLIPVision`` whose ``visual`` is an open_clip ``VisionTransformer``; blocks
  ``visual.transformer.resblocks.{i}`` (``ResidualAttentionBlock``: ``attn`` is an ``nn.MultiheadAttention``
  returning ``(out, weights)``, ``mlp`` a Sequential); one class token precedes the patch tokens.
* ``hf_text``: a BERT-like transformers encoder; layers ``encoder.layer.{i}`` (post-LN) whose attention
  sublayer ends in ``attention.output`` (``BertSelfOutput``: ``LN(dropout(dense(h)) + input_tensor)``) and
  whose feed-forward sublayer ends in ``output`` (``BertOutput``, same form). MPNet's layers differ only in the
  attention sublayer: ``attention`` (``MPNetAttention``) computes ``LN(dropout(attn(x)[0]) + x)`` itself, with
  ``attn.o`` the output projection; its ``output`` is a ``BertOutput`` in all but name.

Nothing here imports timm, open_clip or transformers: families are recognised by structure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import nn

from hpcfed.config import ConfigError


@dataclass
class Block:
    """One transformer block of a backbone.

    Attributes:
        name: qualified name of the block inside the backbone (e.g. ``blocks.3``).
        module: the block.
        attn_out: the module that produces the attention sublayer's output (ViT/CLIP: ``attn``; BERT:
            ``attention.output``, whose ``dense`` projects the attention context).
        mlp_out: the module that produces the feed-forward sublayer's output (ViT/CLIP: ``mlp``; BERT:
            ``output``).
        attn_proj, mlp_proj: text encoders: the Linear whose output is the sublayer's output before dropout,
            residual add and LayerNorm (BERT: ``attention.output.dense`` / ``output.dense``; MPNet:
            ``attention.attn.o`` / ``output.dense``); None for vision (the sublayer itself).
        attn_residual, mlp_residual: True where ``*_out`` takes ``(hidden_states, input_tensor)`` and adds the
            residual itself (BERT's ``BertSelfOutput`` / ``BertOutput``, MPNet's ``output``), so a parallel
            adapter adds to ``input_tensor``; False where the residual is added outside ``*_out``.
    """

    name: str
    module: nn.Module
    attn_out: nn.Module
    mlp_out: nn.Module
    attn_proj: Optional[nn.Module] = None
    mlp_proj: Optional[nn.Module] = None
    attn_residual: bool = False
    mlp_residual: bool = False


@dataclass
class Encoder:
    """The transformer stack of a backbone.

    Attributes:
        family: 'timm_vit', 'open_clip' or 'hf_text'.
        root: the module that owns the token sequence (timm/open_clip VisionTransformer, HF model).
        blocks: the blocks in forward order.
        dim: token width D.
        num_prefix_tokens: vision: tokens before the patch tokens (class + registers); text: 0.
        patch_size: vision: patch side in pixels (for VPT's prompt initialisation); text: None.
    """

    family: str
    root: nn.Module
    blocks: list[Block]
    dim: int
    num_prefix_tokens: int = 0
    patch_size: Optional[int] = None


def unwrap_backbone(model: nn.Module) -> nn.Module:
    """``model.backbone`` without a peft ``PeftModel`` wrapper (when LoRA or prompt tuning added one)."""
    bb = model.backbone
    return bb.get_base_model() if hasattr(bb, "peft_config") else bb


def backbone_family(model: nn.Module) -> str:
    """'hf_text', 'open_clip' or 'timm_vit' for a classifier built by :func:`hpcfed.models.build_model`."""
    bb = unwrap_backbone(model)
    if hasattr(bb, "config") and hasattr(bb.config, "hidden_size"):
        return "hf_text"
    if type(bb).__name__ == "OpenCLIPVision":
        return "open_clip"
    return "timm_vit"


def _first(size) -> int:
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def find_encoder(model: nn.Module, method: str) -> Encoder:
    """Locate the transformer blocks of ``model.backbone``.

    Args:
        model: a classifier from :func:`hpcfed.models.build_model`.
        method: the PEFT method asking (for the error message).

    Raises:
        ConfigError: the backbone is not a transformer this module knows (e.g. a CLIP ResNet tower,
            DistilBERT).
    """
    family = backbone_family(model)
    bb = unwrap_backbone(model)
    if family == "hf_text":
        layers = getattr(getattr(bb, "encoder", None), "layer", None) or []

        def ffn_ok(lyr):
            return hasattr(getattr(lyr, "output", None), "dense")

        if layers and all(hasattr(getattr(getattr(lyr, "attention", None), "output", None), "dense") and ffn_ok(lyr)
                          for lyr in layers):  # BERT, RoBERTa, ...
            blocks = [Block(f"encoder.layer.{i}", lyr, lyr.attention.output, lyr.output,
                            attn_proj=lyr.attention.output.dense, mlp_proj=lyr.output.dense,
                            attn_residual=True, mlp_residual=True) for i, lyr in enumerate(layers)]
        elif layers and all(hasattr(getattr(getattr(lyr, "attention", None), "attn", None), "o") and ffn_ok(lyr)
                            for lyr in layers):  # MPNet
            blocks = [Block(f"encoder.layer.{i}", lyr, lyr.attention.attn, lyr.output,
                            attn_proj=lyr.attention.attn.o, mlp_proj=lyr.output.dense,
                            attn_residual=False, mlp_residual=True) for i, lyr in enumerate(layers)]
        else:
            raise ConfigError(f"peft.method={method!r}: {type(bb).__name__} is not a BERT-like or MPNet encoder "
                              "(encoder.layer[i].attention.output or .attention.attn.o, and .output)")
        return Encoder(family, bb, blocks, int(bb.config.hidden_size))
    if family == "open_clip":
        vit = bb.visual
        resblocks = getattr(getattr(vit, "transformer", None), "resblocks", None)
        if resblocks is None or not hasattr(vit, "class_embedding"):
            raise ConfigError(f"peft.method={method!r}: the open_clip vision tower {type(vit).__name__} is not a "
                              "VisionTransformer")
        blocks = [Block(f"visual.transformer.resblocks.{i}", b, b.attn, b.mlp) for i, b in enumerate(resblocks)]
        return Encoder(family, vit, blocks, int(vit.transformer.width), num_prefix_tokens=1,
                       patch_size=_first(vit.patch_size))
    blocks_mod = getattr(bb, "blocks", None)
    if blocks_mod is None or not hasattr(bb, "patch_embed") or not all(
            hasattr(b, "attn") and hasattr(b, "mlp") for b in blocks_mod):
        raise ConfigError(f"peft.method={method!r}: {type(bb).__name__} is not a timm VisionTransformer")
    blocks = [Block(f"blocks.{i}", b, b.attn, b.mlp) for i, b in enumerate(blocks_mod)]
    patch = getattr(bb.patch_embed, "patch_size", None)
    return Encoder(family, bb, blocks, int(bb.embed_dim), num_prefix_tokens=int(getattr(bb, "num_prefix_tokens", 1)),
                   patch_size=_first(patch) if patch is not None else None)
