"""Pre-training a ViT backbone on fractal images: augmentations, the two objectives, the loop, the checkpoint.

Objectives:

* ``supervised`` — classify which IFS drew the image (FractalDB, Kataoka et al., ACCV 2020), cross-entropy on
  the classifier's logits.
* ``simsiam`` — Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021: two augmented views
  x₁, x₂; z = projector(backbone(x)), p = predictor(z); loss = ½ D(p₁, sg(z₂)) + ½ D(p₂, sg(z₁)) with
  D(p, z) = −cos(p, z) and sg the stop-gradient. No labels are used.

The checkpoint is the backbone's state dict (timm parameter names, fp32) in ``.safetensors``: exactly what
``timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=path))`` and
``VisionTransformer.load_state_dict`` accept. Metadata ``hpcfed_pretrain`` (JSON) records the model words
needed to rebuild the architecture, the objective, the data and the loss curve.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

OBJECTIVES = ("supervised", "simsiam")


# ----------------------------------------------------------------------------------------------------------
# Augmentation (batched, on uint8 NHWC)
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AugmentConfig:
    """Random resized crop + flip, then optional colour jitter / grey-scale (SimCLR/SimSiam recipe)."""

    crop_scale: tuple[float, float] = (0.6, 1.0)
    """Area of the crop as a fraction of the image."""
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    color_p: float = 0.0
    """Probability of colour jitter (brightness, contrast, saturation by factors in [1 − s, 1 + s])."""
    color_strength: float = 0.4
    gray_p: float = 0.0


SUPERVISED_AUG = AugmentConfig()
SIMSIAM_AUG = AugmentConfig(crop_scale=(0.3, 1.0), color_p=0.8, gray_p=0.2)


def _uniform(gen: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return torch.rand(n, generator=gen) * (hi - lo) + lo


def augment(x: torch.Tensor, gen: torch.Generator, cfg: AugmentConfig = SUPERVISED_AUG) -> torch.Tensor:
    """Augment a batch of images.

    Args:
        x: uint8 (B, H, W, 3) on any device.
        gen: CPU generator for the random parameters (the batch's augmentation is a function of it).
        cfg: what to apply.

    Returns:
        uint8 (B, H, W, 3) on ``x``'s device.
    """
    b, h, w, _ = x.shape
    dev = x.device
    img = x.permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, H, W) in [0, 1]
    area = _uniform(gen, b, *cfg.crop_scale)
    ratio = torch.exp(_uniform(gen, b, math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])))
    cw = torch.sqrt(area * ratio).clamp(max=1.0)  # crop width / image width
    ch = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (torch.rand(b, generator=gen) * 2 - 1) * (1 - cw)  # crop centre in [-1, 1] coordinates
    cy = (torch.rand(b, generator=gen) * 2 - 1) * (1 - ch)
    sign = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0) if cfg.flip else torch.ones(b)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = cw * sign, cx
    theta[:, 1, 1], theta[:, 1, 2] = ch, cy
    grid = F.affine_grid(theta.to(dev), [b, 3, h, w], align_corners=False)  # (B, H, W, 2)
    img = F.grid_sample(img, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if cfg.color_p > 0:
        s = cfg.color_strength
        on = (torch.rand(b, generator=gen) < cfg.color_p).float()
        fb, fc, fs = (1 + on * _uniform(gen, b, -s, s) for _ in range(3))  # factor 1 where off
        fb, fc, fs = (f.to(dev).view(b, 1, 1, 1) for f in (fb, fc, fs))
        img = img * fb
        mean = img.mean(dim=(1, 2, 3), keepdim=True)
        img = (img - mean) * fc + mean
        grey = (img * torch.tensor([0.299, 0.587, 0.114], device=dev).view(1, 3, 1, 1)).sum(1, keepdim=True)
        img = (img - grey) * fs + grey
    if cfg.gray_p > 0:
        g = (torch.rand(b, generator=gen) < cfg.gray_p).to(dev).view(b, 1, 1, 1)
        grey = (img * torch.tensor([0.299, 0.587, 0.114], device=dev).view(1, 3, 1, 1)).sum(1, keepdim=True)
        img = torch.where(g, grey.expand_as(img), img)
    img = img.clamp_(0, 1).mul_(255.0).round_().to(torch.uint8)
    return img.permute(0, 2, 3, 1).contiguous()  # (B, H, W, 3)


# ----------------------------------------------------------------------------------------------------------
# Objectives
# ----------------------------------------------------------------------------------------------------------

class SimSiamHead(nn.Module):
    """Projector (3 layers, BN, the last BN without affine) and predictor (bottleneck ``dim/4``), as in
    Chen & He 2021 (their baseline: 2048-wide projector, 512-wide predictor), scaled to the backbone width."""

    def __init__(self, in_dim: int, dim: Optional[int] = None):
        super().__init__()
        dim = dim or min(2048, 4 * in_dim)
        self.projector = nn.Sequential(
            nn.Linear(in_dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
            nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
            nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim, affine=False),
        )
        hidden = max(dim // 4, 8)
        self.predictor = nn.Sequential(
            nn.Linear(dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, dim),
        )

    def loss(self, f1: torch.Tensor, f2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (B, D) of the two views -> (loss scalar in [-1, 1], std of the normalised z₁ (collapse
        monitor: ≈ 1/√dim when healthy, 0 when collapsed))."""
        z1, z2 = self.projector(f1), self.projector(f2)  # (B, P)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = -0.5 * (F.cosine_similarity(p1, z2.detach(), dim=-1).mean()
                       + F.cosine_similarity(p2, z1.detach(), dim=-1).mean())
        std = F.normalize(z1.detach().float(), dim=-1).std(dim=0).mean()
        return loss, std


# ----------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------

@dataclass
class PretrainConfig:
    """Options of ``python -m hpcfed.pretrain`` besides the model section."""

    objective: str = "supervised"
    classes: int = 100
    per_class: int = 50
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-3
    """Peak AdamW learning rate (linear warm-up over the first 5% of steps, then cosine to 0)."""
    weight_decay: float = 0.05
    seed: int = 0
    """Seeds the fractal data, the model init and the batch order / augmentations."""
    max_grad_norm: float = 1.0
    bf16: bool = False


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1 over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def pretrain(model: nn.Module, x: np.ndarray, y: np.ndarray, cfg: PretrainConfig, device: torch.device,
             log: Callable[[str], None] = print) -> list[dict]:
    """Train ``model`` (an :class:`hpcfed.models.ImageClassifier`) in place on images ``x`` uint8 (N, H, W, 3)
    with labels ``y`` int64 (N,) (ignored by simsiam).

    Returns:
        one dict per epoch: ``epoch``, ``loss`` (mean over the epoch's examples), ``acc`` (supervised: train
        accuracy on the augmented batches) or ``z_std`` (simsiam), ``lr``, ``s`` (seconds).
    """
    if cfg.objective not in OBJECTIVES:
        raise ValueError(f"objective={cfg.objective!r}; choose one of: {', '.join(OBJECTIVES)}")
    gen = torch.Generator().manual_seed(cfg.seed)
    xs = torch.from_numpy(x)  # (N, H, W, 3) uint8, CPU
    ys = torch.from_numpy(y)
    n = len(xs)
    bs = min(cfg.batch_size, n)
    steps_per_epoch = n // bs if cfg.objective == "simsiam" or n % bs == 1 else -(-n // bs)
    total = steps_per_epoch * cfg.epochs
    warmup = max(1, total // 20)
    head = SimSiamHead(model.head.in_features).to(device) if cfg.objective == "simsiam" else None
    params = list(model.parameters()) + (list(head.parameters()) if head is not None else [])
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]  # biases, norms, cls token / pos embed stay undecayed
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    history = []
    step = 0
    model.train()
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        extra_sum = torch.zeros((), dtype=torch.float64, device=device)
        seen = 0
        for i in range(steps_per_epoch):
            idx = perm[i * bs:(i + 1) * bs]
            xb = xs[idx].to(device, non_blocking=True)
            for g in opt.param_groups:
                g["lr"] = cfg.lr * lr_factor(step, total, warmup)
            with (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if cfg.bf16
                  else contextlib.nullcontext()):
                if head is None:
                    yb = ys[idx].to(device, non_blocking=True)
                    logits = model(augment(xb, gen, SUPERVISED_AUG)).float()
                    loss = F.cross_entropy(logits, yb)
                    extra = (logits.argmax(-1) == yb).sum()
                else:
                    f1 = model.features(augment(xb, gen, SIMSIAM_AUG)).float()
                    f2 = model.features(augment(xb, gen, SIMSIAM_AUG)).float()
                    loss, std = head.loss(f1, f2)
                    extra = std * len(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            step += 1
            loss_sum += loss.detach().double() * len(idx)
            extra_sum += extra.detach().double()
            seen += len(idx)
        rec = {"epoch": epoch, "loss": float(loss_sum) / max(seen, 1),
               ("acc" if head is None else "z_std"): float(extra_sum) / max(seen, 1),
               "lr": cfg.lr * lr_factor(step - 1, total, warmup), "s": time.perf_counter() - t0}
        history.append(rec)
        metric = f"acc {rec['acc']:.3f}" if head is None else f"z_std {rec['z_std']:.4f}"
        log(f"epoch {epoch}/{cfg.epochs}  loss {rec['loss']:.4f}  {metric}  lr {rec['lr']:.2e}  "
            f"{rec['s']:.1f} s")
    model.eval()
    return history


# ----------------------------------------------------------------------------------------------------------
# Checkpoint
# ----------------------------------------------------------------------------------------------------------

META_KEY = "hpcfed_pretrain"


def save_backbone(path: Path, backbone: nn.Module, meta: dict) -> Path:
    """Write ``backbone.state_dict()`` (fp32, CPU, timm names) to ``path`` as safetensors, atomically
    (temp file in the same folder, fsync, rename). ``meta`` goes into the metadata as JSON under
    ``hpcfed_pretrain``, beside ``format=pt``.

    Raises:
        OSError: the file cannot be written (safetensors' own error is re-raised as OSError).
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    from hpcfed.atomic import atomic_path

    path = Path(path)
    sd = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in backbone.state_dict().items()}
    try:
        with atomic_path(path) as tmp:  # the usual permission bits, not safetensors' 0600
            save_file(sd, str(tmp), metadata={"format": "pt", META_KEY: json.dumps(meta, sort_keys=True)})
    except SafetensorError as e:
        raise OSError(str(e)) from None
    return path


def read_meta(path: Path) -> dict:
    """The ``hpcfed_pretrain`` metadata of a checkpoint written by :func:`save_backbone` ({} if absent)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta.get(META_KEY, "{}"))
