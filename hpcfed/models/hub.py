"""Models named by a Hugging Face hub repo id (``model.name``), read from the local HF cache.

``model.name`` is ``org/repo`` (``hf-hub:org/repo`` and ``org/repo@revision`` are accepted) of the library that
``model.family`` names:

* ``timm_vit``: a timm repo (``config.json`` + ``model.safetensors``), e.g. ``timm/vit_base_patch16_224.augreg_in21k``;
* ``open_clip``: an open_clip repo (``open_clip_config.json`` + ``open_clip_model.safetensors`` or
  ``open_clip_pytorch_model.bin``), e.g. ``laion/CLIP-ViT-B-32-laion2B-s34B-b79K``. An open_clip built-in
  name + pretrained tag maps to its repo with ``open_clip.get_pretrained_cfg(arch, tag)["hf_hub"]``;
* ``hf_text``: a transformers repo (``config.json``, weights, tokenizer files), e.g.
  ``sentence-transformers/all-MiniLM-L6-v2``.

:func:`snapshot_folder` resolves the name to the repo's snapshot folder in the cache
(``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``; read at call time, not at
import) with ``huggingface_hub.snapshot_download``: ``local_files_only=True`` unless ``model.allow_download``
is set and ``HF_HUB_OFFLINE`` is not; a download fetches only the files the family needs. The libraries then
load that folder (timm and open_clip through their ``local-dir:`` schema, transformers by path), so no
library makes a network call of its own.

:func:`check_resampling` compares the raw checkpoint's tensor shapes with the built model's: a difference
(position / patch embeddings resampled to ``model.img_size`` / ``model.patch_size``) is a one-line
:class:`ModelError` unless ``model.resample`` is set, which logs one line naming what was resampled.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from hpcfed.config import ModelConfig
from hpcfed.models.errors import ModelError

log = logging.getLogger(__name__)

_TOKENIZER_FILES = ["tokenizer*", "vocab*", "merges.txt", "special_tokens_map.json", "*.model", "added_tokens.json"]
# Per family: (files fetched on download, fallback weight files when the repo has no safetensors, weight files
# looked for in the folder, in order).
_FILES = {
    "timm_vit": (["config.json", "model.safetensors"], ["pytorch_model.bin"],
                 ("model.safetensors", "pytorch_model.bin")),
    "open_clip": (["open_clip_config.json", "open_clip_model.safetensors", *_TOKENIZER_FILES],
                  ["open_clip_pytorch_model.bin"], ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")),
    "hf_text": (["config.json", "model.safetensors", "model-*.safetensors", "model.safetensors.index.json",
                 "modules.json", "sentence_bert_config.json", "1_Pooling/*", *_TOKENIZER_FILES],
                ["pytorch_model*.bin"], ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")),
}
_TRUE = ("1", "on", "yes", "true")


def split_name(name: str) -> tuple[str, Optional[str]]:
    """``[hf-hub:]org/repo[@revision]`` -> (repo id, revision or None).

    Raises:
        ModelError: not of the form ``org/repo``.
    """
    repo = name[len("hf-hub:"):] if name.startswith("hf-hub:") else name
    repo, _, revision = repo.partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ModelError(f"model.name={name!r}: not a hub repo id 'org/repo' (a local folder goes in model.path)")
    return repo, revision or None


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set true in the environment now."""
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_cache_dir() -> Path:
    """The hub cache folder as the environment says now: ``$HF_HUB_CACHE``, ``$HF_HOME/hub``, or
    ``~/.cache/huggingface/hub`` (huggingface_hub reads these once, at its import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def weights_file(folder: Path, family: str) -> Optional[Path]:
    """The first weight file of ``family``'s names present in ``folder``, or None."""
    for f in _FILES[family][2]:
        if (folder / f).is_file():
            return folder / f
    return None


def snapshot_folder(cfg: ModelConfig) -> Path:
    """The local snapshot folder of ``cfg.name`` (downloaded first only when allowed; see the module doc).

    Raises:
        ModelError: one line: not in the cache with downloads off (naming the cache folder and how to allow
            them), the download failed, or the folder holds no weights of ``cfg.family``.
    """
    from huggingface_hub import snapshot_download

    repo, revision = split_name(cfg.name)
    offline = hub_offline()
    local_only = offline or not cfg.allow_download
    patterns, fallback, _ = _FILES[cfg.family]
    cache = hub_cache_dir()
    try:
        folder = Path(snapshot_download(repo, revision=revision, cache_dir=str(cache), local_files_only=local_only,
                                        allow_patterns=None if local_only else patterns))
        if cfg.pretrained and weights_file(folder, cfg.family) is None and not local_only:
            folder = Path(snapshot_download(repo, revision=revision, cache_dir=str(cache), allow_patterns=fallback))
    except Exception as e:  # noqa: BLE001 - huggingface_hub raises many kinds (cache miss, HTTP, auth)
        if local_only:
            why = ("HF_HUB_OFFLINE=1 is set in the environment" if offline
                   else "set model.allow_download=true to download it")
            raise ModelError(f"model.name={cfg.name}: not in the local Hugging Face cache {cache} ({why})") from None
        raise ModelError(f"model.name={cfg.name}: download failed ({str(e).splitlines()[0][:200]})") from None
    if cfg.pretrained and weights_file(folder, cfg.family) is None:
        raise ModelError(f"model.name={cfg.name}: {folder} holds none of {', '.join(_FILES[cfg.family][2])} "
                         f"(not a {cfg.family} repo?)")
    return folder


def checkpoint_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of a checkpoint file (``.safetensors``: read from the header only; a torch file is loaded
    with ``weights_only``). An unreadable file gives {} (the library's own load reports it)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        sd = sd.get("state_dict", sd) if isinstance(sd, dict) else {}
        return {k: tuple(v.shape) for k, v in sd.items() if isinstance(v, torch.Tensor)}
    except Exception:  # noqa: BLE001 - formats timm converts (.npz) or corrupt files: nothing to compare
        return {}


def check_resampling(module: nn.Module, checkpoint: Optional[Path], cfg: ModelConfig, source: str,
                     prefix: str = "") -> None:
    """Fail (or, with ``cfg.resample``, log) when the weights in ``checkpoint`` were resampled into ``module``.

    Compares every tensor name both hold (``prefix`` + the module's name = the checkpoint's name); a shape
    that differs is what the library resampled (position embeddings to another ``img_size``, patch
    embeddings to another ``patch_size``).

    Raises:
        ModelError: a shape differs and ``cfg.resample`` is off (names the keys, the first tensor and both
            shapes).
    """
    if checkpoint is None:
        return
    shapes = checkpoint_shapes(checkpoint)
    diffs = [(k, shapes[prefix + k], tuple(v.shape)) for k, v in module.state_dict().items()
             if prefix + k in shapes and shapes[prefix + k] != tuple(v.shape)]
    if not diffs:
        return
    what = ", ".join(f"{k} {a}->{b}" for k, a, b in diffs[:3]) + (f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else "")
    sizes = f"model.img_size={cfg.img_size}, model.patch_size={cfg.patch_size}"
    if not cfg.resample:
        raise ModelError(f"{sizes} do not fit the pretrained weights of {source} ({what}); leave them null to use "
                         "the weights' own sizes, or set model.resample=true to resample the weights")
    log.info("model.resample: resampled the weights of %s to %s: %s", source, sizes, what)


def timm_hub_backbone(cfg: ModelConfig) -> nn.Module:
    """The timm model of ``cfg.name`` without its classifier (``num_classes=0``), weights from the cache.

    ``model.img_size`` / ``model.patch_size`` when set are passed to timm (null: the repo's config).

    Raises:
        ModelError: see :func:`snapshot_folder` and :func:`check_resampling`; timm cannot build the repo's
            architecture.
    """
    import timm

    folder = snapshot_folder(cfg)
    kwargs = {k: getattr(cfg, k) for k in ("img_size", "patch_size") if getattr(cfg, k)}
    try:
        m = timm.create_model(f"local-dir:{folder}", pretrained=cfg.pretrained, num_classes=0, **kwargs)
    except (RuntimeError, ValueError, FileNotFoundError, TypeError) as e:
        raise ModelError(f"model.name={cfg.name} (timm): {str(e).splitlines()[0]}") from None
    if cfg.pretrained:
        check_resampling(m, weights_file(folder, "timm_vit"), cfg, f"model.name={cfg.name}")
    return m


def input_size(backbone: nn.Module, default: Optional[int]) -> Optional[int]:
    """The square input side (pixels) a timm backbone was built for: its patch embedding's ``img_size``, else
    its pretrained config's ``input_size``, else ``default``."""
    size = getattr(getattr(backbone, "patch_embed", None), "img_size", None)
    if size is None:
        size = (getattr(backbone, "pretrained_cfg", None) or {}).get("input_size", (None,))[-1]
    if isinstance(size, (tuple, list)):
        size = size[0]
    return int(size) if size else default
