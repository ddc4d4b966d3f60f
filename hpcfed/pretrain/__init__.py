"""Synthetic pre-training of ViT backbones on fractal images (Chen et al., ICLR 2023, section on synthetic
pre-training; Kataoka et al., ACCV 2020; Anderson & Farrell, WACV 2022).

* :mod:`hpcfed.pretrain.fractal` — IFS sampling, the vectorised chaos game, :class:`FractalDataset`.
* :mod:`hpcfed.pretrain.cli` — ``python -m hpcfed.pretrain``: train a backbone (supervised on fractal classes
  or SimSiam) and save it as a timm state dict in ``.safetensors`` for ``model.path`` + ``model.pretrained``.

Knows models (it builds one with :func:`hpcfed.models.build_model`), nothing of FL.
"""

from hpcfed.pretrain.fractal import FractalDataset, render, render_images, sample_system

__all__ = ["FractalDataset", "render", "render_images", "sample_system"]
