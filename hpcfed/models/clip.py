"""open_clip CLIP as an image classifier whose head starts as CLIP's zero-shot classifier.

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", ICML 2021; the
open_clip implementation (Ilharco et al., 2021; Cherti et al., CVPR 2023).

The classifier keeps only the vision tower: ``model.backbone.visual`` (an open_clip ``VisionTransformer``
or other vision tower) maps normalised pixels to image embeddings (B, E); they are L2-normalised and fed to
``model.head = nn.Linear(E, K)``. At build time the text tower encodes one prompt per class
(``model.clip_prompt_template``, e.g. "a photo of a {}."); the head's weight is the normalised text
embeddings (K, E) times CLIP's temperature ``exp(logit_scale)`` and its bias is CLIP's ``logit_bias`` (zero
for CLIP; SigLIP-style models have one), so at round 0 the classifier's logits are exactly CLIP's zero-shot
logits ``exp(s) · f_img · f_txtᵀ (+ b)``. The text tower is then dropped (it is never trained).

``model.name`` is an open_clip hub repo read from the local Hugging Face cache (:mod:`hpcfed.models.hub`;
downloaded only with ``model.allow_download``); ``model.path`` is a local checkpoint file
(``create_model(arch, pretrained=path)``) or a local open_clip folder (``local-dir:`` schema); ``arch='tiny'``
builds a small random CLIP from the ``ModelConfig`` sizes (tests). The input size and pixel statistics are the
model's own (``model.img_size`` may only differ with ``model.resample``). The default ``SimpleTokenizer`` reads its BPE vocabulary from the package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hpcfed.config import ModelConfig

# open_clip.constants.OPENAI_DATASET_MEAN / _STD (the pixel statistics CLIP was trained with).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TINY_CONTEXT_LENGTH = 77
TINY_VOCAB_SIZE = 49408  # SimpleTokenizer's vocabulary


class OpenCLIPVision(nn.Module):
    """CLIP's vision tower as a backbone: ``forward(pixels (B, 3, H, W) normalised) -> (B, E)`` embeddings
    (not normalised). Held as ``.visual`` so parameter names (``visual.*``) match open_clip's CLIP
    ``state_dict``.
    """

    def __init__(self, visual: nn.Module, embed_dim: int):
        super().__init__()
        self.visual = visual
        self.num_features = embed_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.visual(x)
        return out[0] if isinstance(out, tuple) else out  # (B, E); towers with output_tokens return a pair


def _is_local(path: Optional[str]) -> bool:
    return bool(path) and Path(path).exists()


def create_clip(cfg: ModelConfig):
    """Build the whole open_clip model and its tokenizer from ``cfg``.

    Returns:
        (clip_model, tokenizer, mean, std): mean/std are the pixel statistics in [0, 1] units.

    Raises:
        ModelError: unknown architecture, missing local path, or anything that would need the network.
    """
    import open_clip

    from hpcfed.models.errors import ModelError

    if cfg.arch == "tiny" and not cfg.path and not cfg.name:
        from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

        if cfg.hidden_size % cfg.num_heads:
            raise ModelError(f"model.hidden_size={cfg.hidden_size} is not divisible by model.num_heads="
                             f"{cfg.num_heads}")
        width, head_width = cfg.hidden_size, cfg.hidden_size // cfg.num_heads
        vision = CLIPVisionCfg(layers=cfg.num_layers, width=width, head_width=head_width,
                               mlp_ratio=cfg.intermediate_size / width, patch_size=cfg.patch_size,
                               image_size=cfg.img_size)
        text = CLIPTextCfg(context_length=TINY_CONTEXT_LENGTH, vocab_size=TINY_VOCAB_SIZE, width=width,
                           heads=cfg.num_heads, layers=cfg.num_layers, mlp_ratio=cfg.intermediate_size / width)
        model = CLIP(embed_dim=width, vision_cfg=vision, text_cfg=text)
        return model, open_clip.SimpleTokenizer(context_length=TINY_CONTEXT_LENGTH), CLIP_MEAN, CLIP_STD

    if cfg.arch.startswith("hf-hub:"):
        raise ModelError(f"model.arch={cfg.arch!r}: a hub model needs the network or the local cache; give its "
                         "repo id in model.name (model.allow_download=true to download it)")
    if cfg.path and not cfg.allow_download and not _is_local(cfg.path):
        raise ModelError(f"model.path={cfg.path}: no such file or folder")
    source = f"model.name={cfg.name}" if cfg.name else (f"model.path={cfg.path}" if cfg.path else f"model.arch={cfg.arch}")
    folder = None
    if cfg.name:
        from hpcfed.models.hub import snapshot_folder

        folder = snapshot_folder(cfg)
    elif cfg.path and Path(cfg.path).is_dir():
        folder = Path(cfg.path)
    if folder is not None:
        name, pretrained = f"local-dir:{folder}", None  # open_clip_config.json + weights in the folder
    else:
        name, pretrained = cfg.arch, (cfg.path if cfg.pretrained else None)
    force_size = _checked_image_size(cfg, folder, source)
    try:
        model = open_clip.create_model(name, pretrained=pretrained, load_weights=cfg.pretrained,
                                       pretrained_image=False, pretrained_text=False, force_image_size=force_size)
        tokenizer = open_clip.get_tokenizer(name)
    except (RuntimeError, ValueError, FileNotFoundError, OSError) as e:
        raise ModelError(f"{source} (open_clip): {str(e).splitlines()[0]}") from None
    pp = open_clip.get_model_preprocess_cfg(model)
    mean = tuple(pp.get("mean") or CLIP_MEAN)
    std = tuple(pp.get("std") or CLIP_STD)
    return model, tokenizer, mean, std


def _checked_image_size(cfg: ModelConfig, folder: Optional[Path], source: str) -> Optional[int]:
    """``force_image_size`` for open_clip: None when ``model.img_size`` is null or the model's own; the asked
    size with ``model.resample`` (logged: open_clip resamples the position embedding).

    Raises:
        ModelError: ``model.img_size`` differs without ``model.resample``, or ``model.patch_size`` differs
            (open_clip cannot resample patches).
    """
    import json
    import logging

    import open_clip

    from hpcfed.models.errors import ModelError

    if not cfg.img_size and not cfg.patch_size:
        return None
    try:
        if folder is not None:
            model_cfg = json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]
        else:
            model_cfg = open_clip.get_model_config(cfg.arch) or {}
    except (OSError, ValueError, KeyError):
        return None  # open_clip's own load reports an unreadable config
    vision = model_cfg.get("vision_cfg", {})
    own_size, own_patch = vision.get("image_size"), vision.get("patch_size")
    own_size = own_size[0] if isinstance(own_size, (list, tuple)) else own_size
    if cfg.patch_size and own_patch and cfg.patch_size != own_patch:
        raise ModelError(f"model.patch_size={cfg.patch_size} differs from the patch size {own_patch} of {source} "
                         "(open_clip cannot resample patches; leave it null)")
    if not cfg.img_size or not own_size or cfg.img_size == own_size:
        return None
    if not cfg.resample:
        raise ModelError(f"model.img_size={cfg.img_size} differs from the input size {own_size} of {source}; leave "
                         "it null to use the model's own, or set model.resample=true to resample the position "
                         "embedding")
    logging.getLogger(__name__).info("model.resample: %s resampled from %d to %d px (position embedding)", source,
                                     own_size, cfg.img_size)
    return cfg.img_size


def class_prompts(class_names: Sequence[str], template: str) -> list[str]:
    """One text prompt per class: ``template.format(name)`` with '_' in names read as spaces."""
    return [template.format(str(c).replace("_", " ")) for c in class_names]


@torch.no_grad()
def text_embeddings(clip_model: nn.Module, tokenizer, prompts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """L2-normalised text embeddings (K, E) fp32 of ``prompts`` (the text tower in eval mode)."""
    was_training = clip_model.training
    clip_model.eval()
    device = next(clip_model.parameters()).device
    out = []
    for i in range(0, len(prompts), batch_size):
        tokens = tokenizer(list(prompts[i:i + batch_size])).to(device)  # (b, context_length) int64
        out.append(clip_model.encode_text(tokens, normalize=True).float())
    clip_model.train(was_training)
    return torch.cat(out)  # (K, E)


def zero_shot_head(clip_model: nn.Module, tokenizer, class_names: Sequence[str], template: str) -> tuple[
        torch.Tensor, torch.Tensor]:
    """CLIP's zero-shot classifier as a linear layer: weight (K, E) = exp(logit_scale) · text embeddings,
    bias (K,) = logit_bias (0 when the model has none)."""
    txt = text_embeddings(clip_model, tokenizer, class_prompts(class_names, template))  # (K, E)
    scale = clip_model.logit_scale.detach().float().exp().reshape(())
    bias = getattr(clip_model, "logit_bias", None)
    b = torch.zeros(txt.shape[0]) if bias is None else bias.detach().float().reshape(()).expand(txt.shape[0]).clone()
    return scale * txt, b


class CLIPClassifier(nn.Module):
    """CLIP vision tower → L2-normalised embedding → dropout → linear head, on uint8 NHWC input.

    Args:
        backbone: :class:`OpenCLIPVision`.
        num_classes: K.
        mean, std: CLIP's pixel statistics in [0, 1] units.
        img_size: the tower's input size (pixels); inputs of another size are resized (bilinear).
        dropout: dropout before the head.
    """

    def __init__(self, backbone: OpenCLIPVision, num_classes: int, mean=CLIP_MEAN, std=CLIP_STD,
                 img_size: Optional[int] = None, dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.img_size = img_size
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(backbone.num_features, num_classes)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def features(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """L2-normalised image embeddings (B, E)."""
        x = x.permute(0, 3, 1, 2).float().div_(255.0)  # (B, C, H, W) in [0, 1]
        if self.img_size is not None and tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bicubic", align_corners=False)
        x = (x - self.mean) / self.std
        return F.normalize(self.backbone(x), dim=-1)  # (B, E)

    def forward(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits (B, K)."""
        return self.head(self.dropout(self.features(x)))


def build_clip_classifier(cfg: ModelConfig, num_classes: int,
                          class_names: Optional[Sequence[str]] = None) -> CLIPClassifier:
    """The open_clip classifier; its head is the zero-shot classifier of ``class_names`` (random when None).

    Raises:
        ModelError: see :func:`create_clip`; ``class_names`` of the wrong length.
    """
    from hpcfed.models.errors import ModelError

    if class_names is not None and len(class_names) != num_classes:
        raise ModelError(f"{len(class_names)} class names for num_classes={num_classes}")
    clip_model, tokenizer, mean, std = create_clip(cfg)
    visual = clip_model.visual
    embed_dim = int(getattr(visual, "output_dim", 0) or _probe_dim(visual))
    size = getattr(visual, "image_size", None)
    img_size = int(size[0] if isinstance(size, (tuple, list)) else size) if size is not None else cfg.img_size
    model = CLIPClassifier(OpenCLIPVision(visual, embed_dim), num_classes, mean, std, img_size=img_size,
                           dropout=cfg.dropout)
    if class_names is not None:
        w, b = zero_shot_head(clip_model, tokenizer, class_names, cfg.clip_prompt_template)
        with torch.no_grad():
            model.head.weight.copy_(w)
            model.head.bias.copy_(b)
    del clip_model  # the text tower is no longer needed
    return model


@torch.no_grad()
def _probe_dim(visual: nn.Module) -> int:
    size = getattr(visual, "image_size", 224)
    size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    out = visual(torch.zeros(1, 3, *size))
    return int((out[0] if isinstance(out, tuple) else out).shape[-1])
