"""Backbones with a classification head: Hugging Face text encoders, timm ViTs and open_clip CLIP.

Every classifier has the same call signature, ``model(x, lengths=None) -> logits``, so the FL code never
looks inside:

* text: ``x`` int32/int64 (B, L) token ids padded with the pad id, ``lengths`` int32 (B,) real token counts;
* image: ``x`` uint8 (B, H, W, C) pixels; normalised inside the model.

open_clip (``hpcfed/models/clip.py``): CLIP's vision tower with a head initialised as CLIP's zero-shot
classifier of the data set's class names.

The backbone is ``model.backbone`` and the head ``model.head`` (a ``nn.Linear``), so PEFT methods select
parameters by name prefix. ``model.name`` (a hub repo id) is read from the local Hugging Face cache
(:mod:`hpcfed.models.hub`); nothing is downloaded unless ``model.allow_download`` is set. Image models take their
input size and normalisation from the pretrained config; resampling pretrained weights to other sizes needs
``model.resample``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from hpcfed.config import ConfigError, ModelConfig
from hpcfed.models.errors import ModelError
from hpcfed.models.packing import pack_sequences


# First position id of a packed sequence per transformers model_type (None: pad_token_id + 1, RoBERTa style).
# MPNet: 2, since its embeddings fix padding_idx at 1 whatever config.pad_token_id says; its relative position
# bias comes from slot distances in a row, which inside one packed sequence equal the distances in the sequence
# alone, and the block-diagonal mask removes the cross-sequence pairs.
_PACK_POSITION_OFFSET: dict[str, Optional[int]] = {
    "bert": 0, "electra": 0, "roberta": None, "xlm-roberta": None, "camembert": None, "mpnet": 2,
}
# Backbones whose attention adds the mask to the scores as given (a bool mask would add 1/0, not block) and
# that take no token_type_ids: the packed mask goes in as 0 / dtype-min.
_PACK_ADDITIVE_MASK = frozenset({"mpnet"})


class TextClassifier(nn.Module):
    """Transformer encoder + pooling + dropout + linear head.

    A backbone may return more positions than it was given (prompt tuning prepends virtual tokens); the
    leading extra positions are dropped before pooling, so prompts act only through attention.

    Args:
        backbone: a transformers encoder (``AutoModel``) returning ``last_hidden_state`` (B, L, D).
        num_classes: K.
        pooling: 'mean' over real tokens (sentence-transformers style) or 'cls' (first token).
        dropout: dropout before the head.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, pooling: str = "mean", dropout: float = 0.1):
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(backbone.config.hidden_size, num_classes)

    def packing_unsupported(self) -> Optional[str]:
        """Why :meth:`features` cannot pack sequences (``pack=True``) for this backbone, or None if it can.

        Packing needs absolute position ids that the caller may set (BERT, ELECTRA: 0, 1, ...; RoBERTa family
        and MPNet: padding_idx + 1, ...; MPNet's relative bias depends only on distances inside a sequence) and
        no soft prompts (peft prompt learning prepends virtual tokens to every row).
        """
        conf = getattr(self.backbone, "config", None)
        mtype = getattr(conf, "model_type", None)
        if getattr(getattr(self.backbone, "active_peft_config", None), "is_prompt_learning", False):
            return "soft prompts prepend virtual tokens to every row"
        if mtype not in _PACK_POSITION_OFFSET:
            return f"backbone model_type {mtype!r} (packing knows {', '.join(sorted(_PACK_POSITION_OFFSET))})"
        if getattr(conf, "position_embedding_type", "absolute") != "absolute":
            return f"position_embedding_type={conf.position_embedding_type!r} (needs 'absolute')"
        return None

    def _packed_features(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        conf = self.backbone.config
        offset = _PACK_POSITION_OFFSET[conf.model_type]
        if offset is None:  # RoBERTa family: positions start after the padding index
            offset = conf.pad_token_id + 1
        pb = pack_sequences(x, lengths.to(x.device), position_offset=offset)
        mask = pb.attention_mask()
        if conf.model_type in _PACK_ADDITIVE_MASK:
            dtype = self.backbone.get_input_embeddings().weight.dtype  # what the padded path's mask gets
            mask = (~mask).to(dtype) * torch.finfo(dtype).min
            extra = {}
        else:
            extra = {"token_type_ids": torch.zeros_like(pb.input_ids)}
        h = self.backbone(input_ids=pb.input_ids, attention_mask=mask, position_ids=pb.position_ids, **extra
                          ).last_hidden_state  # (R, T, D)
        return pb.pool_first(h) if self.pooling == "cls" else pb.pool_mean(h)

    def features(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None, *,
                 compute_dtype: Optional[torch.dtype] = None, pack: bool = False) -> torch.Tensor:
        """Pooled features (B, D) in the backbone's compute dtype.

        ``compute_dtype`` is set by the client-parallel trainer (:mod:`hpcfed.fl.parallel`, under
        ``torch.func.vmap``): ``x`` is used as given (no data-dependent trimming) and the padding mask is
        passed as a 4-D additive mask of that dtype, which transformers uses as is.

        ``pack=True`` (with ``lengths``; see :meth:`packing_unsupported`) runs the batch padding-free: the
        sequences are packed into rows with block-diagonal attention (:mod:`hpcfed.models.packing`); the
        result equals the padded path's up to fp reduction order.
        """
        if pack and lengths is not None and compute_dtype is None:
            return self._packed_features(x.long(), lengths)
        x = x.long()
        if lengths is None:
            attn = torch.ones_like(x)
        else:
            lmax = x.shape[1] if compute_dtype is not None else int(lengths.max())
            x = x[:, :lmax]  # (B, Lmax): drop columns that are padding in every row
            attn = (torch.arange(lmax, device=x.device)[None, :] < lengths.to(x.device)[:, None]).long()
        mask = attn
        if compute_dtype is not None:  # (B, 1, 1, L): 0 where attended, dtype-min at padding
            mask = (1 - attn[:, None, None, :]).to(compute_dtype) * torch.finfo(compute_dtype).min
        h = self.backbone(input_ids=x, attention_mask=mask).last_hidden_state  # (B, P + L, D)
        # Soft prompts (peft prompt tuning) prepend P virtual tokens; their outputs are dropped so both
        # poolings see exactly the real tokens ('cls' stays position 0, 'mean' averages the same positions).
        h = h[:, h.shape[1] - x.shape[1]:]  # (B, L, D)
        if self.pooling == "cls":
            return h[:, 0]
        m = attn.unsqueeze(-1).to(h.dtype)  # (B, L, 1)
        return (h * m).sum(1) / m.sum(1).clamp_min(1.0)  # (B, D)

    def forward(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None, *,
                compute_dtype: Optional[torch.dtype] = None, pack: bool = False) -> torch.Tensor:
        """Logits (B, K) (float, or ``compute_dtype``; see :meth:`features`)."""
        f = self.features(x, lengths, compute_dtype=compute_dtype, pack=pack)
        return self.head(self.dropout(f))


class ImageClassifier(nn.Module):
    """timm backbone (``num_classes=0``: pooled features) + dropout + linear head, on uint8 NHWC input.

    Args:
        backbone: timm model whose forward returns pooled features (B, D); ``num_features`` = D.
        num_classes: K.
        mean, std: per-channel normalisation in [0, 1] pixel units (the backbone's pre-training statistics).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                 dropout: float = 0.0, img_size: Optional[int] = None):
        super().__init__()
        self.backbone = backbone
        self.img_size = img_size
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(backbone.num_features, num_classes)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def features(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None, *,
                 compute_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """Pooled features (B, D) of uint8 NHWC images; ``compute_dtype`` casts the normalised pixels (set by
        the client-parallel trainer, whose frozen weights are in that dtype)."""
        x = x.permute(0, 3, 1, 2).float().div(255.0)  # (B, C, H, W) in [0, 1]
        if self.img_size is not None and x.shape[-1] != self.img_size:
            x = nn.functional.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear",
                                          align_corners=False)
        x = (x - self.mean) / self.std
        if compute_dtype is not None:
            x = x.to(compute_dtype)
        return self.backbone(x)  # (B, D)

    def forward(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None, *,
                compute_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """Logits (B, K)."""
        return self.head(self.dropout(self.features(x, compute_dtype=compute_dtype)))


def _hf_backbone(cfg: ModelConfig) -> nn.Module:
    from transformers import AutoConfig, AutoModel

    local_only = not cfg.allow_download
    if cfg.name:  # the hub repo's cached snapshot folder, loaded as a local folder
        from hpcfed.models.hub import snapshot_folder

        cfg = replace(cfg, path=str(snapshot_folder(cfg)), name=None)
        local_only = True
    if cfg.path:
        p = Path(cfg.path)
        if local_only and not p.exists():
            raise ModelError(f"model.path={cfg.path}: no such folder (set model.allow_download=true to use a hub "
                             "name where a network exists)")
        # fp32 master weights whatever the checkpoint stores: transformers >= 5 loads in the checkpoint's own
        # dtype by default (dtype="auto"), so an fp16/bf16 checkpoint would otherwise train in half precision
        # (mixed precision is autocast's job, fl.local.bf16).
        if cfg.pretrained:
            return AutoModel.from_pretrained(cfg.path, local_files_only=local_only, add_pooling_layer=False).float()
        hf_cfg = AutoConfig.from_pretrained(cfg.path, local_files_only=local_only)
        return AutoModel.from_config(hf_cfg, add_pooling_layer=False).float()
    try:
        hf_cfg = AutoConfig.for_model(
            cfg.arch, vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
            max_position_embeddings=512, pad_token_id=0,
        )
    except ValueError as e:
        raise ModelError(f"model.arch={cfg.arch!r}: not a transformers model type ({e})") from None
    return AutoModel.from_config(hf_cfg, add_pooling_layer=False)


def _load_state_dict_file(module: nn.Module, path: str) -> None:
    """Load a whole state dict (``.safetensors``, or a torch file read with ``weights_only``) strictly.

    Raises:
        ModelError: missing/unreadable file, or tensors that do not fit ``module``.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"model.path={path}: no such file")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(p))
        else:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
            sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    except Exception as e:  # noqa: BLE001 - safetensors/pickle errors have no common base
        raise ModelError(f"model.path={path}: not a readable checkpoint ({str(e).splitlines()[0]})") from None
    try:
        module.load_state_dict(sd, strict=True)
    except (RuntimeError, TypeError, AttributeError) as e:
        detail = " ".join(ln.strip() for ln in str(e).splitlines()[:2])[:300]
        raise ModelError(f"model.path={path}: does not fit the model.* sizes ({detail})") from None


def _timm_backbone(cfg: ModelConfig) -> tuple[nn.Module, tuple, tuple]:
    import timm
    from timm.models.vision_transformer import VisionTransformer

    from hpcfed.models.hub import check_resampling, timm_hub_backbone

    if cfg.name:
        m = timm_hub_backbone(cfg)
        dc = m.pretrained_cfg or {}
        return m, tuple(dc.get("mean", (0.5,) * 3)), tuple(dc.get("std", (0.5,) * 3))
    if cfg.arch == "tiny":
        m = VisionTransformer(img_size=cfg.img_size, patch_size=cfg.patch_size, embed_dim=cfg.hidden_size,
                              depth=cfg.num_layers, num_heads=cfg.num_heads,
                              mlp_ratio=cfg.intermediate_size / cfg.hidden_size, num_classes=0)
        if cfg.path and cfg.pretrained:
            _load_state_dict_file(m, cfg.path)
        return m, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    # null sizes: the architecture's own (those of its pretrained weights)
    kwargs = dict(num_classes=0, **{k: getattr(cfg, k) for k in ("img_size", "patch_size") if getattr(cfg, k)})
    try:
        if cfg.path and cfg.pretrained:
            if not Path(cfg.path).exists():
                raise ModelError(f"model.path={cfg.path}: no such file")
            m = timm.create_model(cfg.arch, pretrained=True, pretrained_cfg_overlay=dict(file=cfg.path), **kwargs)
            check_resampling(m, Path(cfg.path), cfg, f"model.path={cfg.path}")
        else:
            m = timm.create_model(cfg.arch, pretrained=False, **kwargs)
    except RuntimeError as e:
        raise ModelError(f"model.arch={cfg.arch!r}: {str(e).splitlines()[0]}") from None
    dc = m.pretrained_cfg or {}
    return m, tuple(dc.get("mean", (0.5,) * 3)), tuple(dc.get("std", (0.5,) * 3))


def build_model(cfg: ModelConfig, num_classes: int, class_names: Optional[list[str]] = None) -> nn.Module:
    """Build the classifier described by ``cfg`` with a fresh K-way head.

    The head is initialised from the global torch RNG: seed it before calling for reproducible runs. For
    ``family='open_clip'`` with ``class_names`` it is CLIP's zero-shot classifier of those names instead
    (see :mod:`hpcfed.models.clip`); the other families ignore ``class_names``.

    Raises:
        ModelError: the path does not exist, or the architecture is unknown.
    """
    if num_classes < 2:
        raise ConfigError(f"model.num_classes={num_classes}: need at least 2 classes")
    if cfg.family == "hf_text":
        return TextClassifier(_hf_backbone(cfg), num_classes, pooling=cfg.pooling, dropout=cfg.dropout)
    if cfg.family == "timm_vit":
        from hpcfed.models.hub import input_size

        backbone, mean, std = _timm_backbone(cfg)
        return ImageClassifier(backbone, num_classes, mean, std, dropout=cfg.dropout,
                               img_size=input_size(backbone, cfg.img_size))
    if cfg.family == "open_clip":
        from hpcfed.models.clip import build_clip_classifier

        return build_clip_classifier(cfg, num_classes, class_names)
    raise ModelError(f"model.family={cfg.family!r} unknown")
