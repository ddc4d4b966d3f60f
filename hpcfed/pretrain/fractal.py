"""Synthetic pre-training images: fractals drawn from random iterated function systems (IFS).

A fractal class is an IFS: ``k`` affine contraction maps ``w_i(x) = A_i x + b_i`` of the plane (2 <= k <= 8),
map ``i`` chosen with probability ``p_i ∝ |det A_i|``. Its attractor is drawn with the *chaos game*: start
anywhere, repeatedly apply a randomly chosen map, and plot the points after a short burn-in (the iterates
converge to the attractor because every map contracts). This follows

* FractalDB — Kataoka et al., "Pre-training without Natural Images", ACCV 2020: a class is one IFS with
  p_i ∝ |det A_i|, rendered by the chaos game; intra-class variety by perturbing the IFS parameters and flips.
* Anderson & Farrell, "Improving Fractal Pre-training", WACV 2022: maps sampled through their singular value
  decomposition ``A = R(θ) diag(σ₁, σ₂) R(φ) D`` (D a random reflection), with the *σ-factor*
  ``α = Σ_i (σ_{i,1} + 2 σ_{i,2})`` drawn from ``[(5 + k)/2, (6 + k)/2]``, which gives neither dust nor blobs
  but shapes with visible geometry; colour, random backgrounds and several fractals per image.

Chen et al., "On the Importance and Applicability of Pre-Training for Federated Learning" (ICLR 2023) use
such fractal pre-training as the synthetic alternative to pre-training on real images.

Everything is numpy and vectorised: the chaos game runs many independent chains of many systems at once, so a
few thousand 32×32 images take seconds. All randomness comes from ``numpy.random.Generator`` objects seeded by
the caller, so a dataset is a pure function of its arguments.

The pieces: :mod:`hpcfed.pretrain.ifs` (sampling systems, the chaos game, grey-scale renderings),
:mod:`hpcfed.pretrain.images` (colours, backgrounds, drawing several fractals into an image, PNG grids), and
here the data set (:func:`class_systems`, :class:`FractalDataset`). The names of the first two are
re-exported here.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from hpcfed.pretrain.ifs import (
    MAX_MAPS, MAX_SINGULAR_VALUE, MIN_MAPS, RNG, chaos_game, coverage, jitter_system, lipschitz_constants,
    map_probabilities, render, sample_singular_values, sample_system,
)
from hpcfed.pretrain.images import random_background, render_images, save_grid
from hpcfed.rng import FractalStream, generator

__all__ = [
    "MAX_MAPS", "MAX_SINGULAR_VALUE", "MIN_MAPS", "RNG", "chaos_game", "coverage", "jitter_system",
    "lipschitz_constants", "map_probabilities", "render", "sample_singular_values", "sample_system",
    "random_background", "render_images", "save_grid", "class_systems", "FractalDataset",
]


# ----------------------------------------------------------------------------------------------------------
# Data set
# ----------------------------------------------------------------------------------------------------------

def class_systems(num_classes: int, seed: int, *, min_coverage: float = 0.05, max_tries: int = 100) -> list:
    """``num_classes`` systems; system ``c`` depends only on ``(seed, c)`` (not on ``num_classes``).

    FractalDB keeps a system only if its rendering fills enough of the image; here a system whose attractor
    covers less than ``min_coverage`` of a 32×32 image is redrawn from the same (seed, c) stream. Candidates
    of all classes are checked in one vectorised chaos game per round.
    """
    rngs = [generator(seed, FractalStream.CLASS_SYSTEM, c) for c in range(num_classes)]
    out: list = [None] * num_classes
    pending = list(range(num_classes))
    for attempt in range(max_tries):
        cand = [sample_system(rngs[c]) for c in pending]
        if attempt == max_tries - 1:
            ok = np.ones(len(pending), dtype=bool)
        else:
            # One stream per (seed, attempt, class): a class's verdict does not depend on the other classes.
            rngs_cov = [generator(seed, FractalStream.COVERAGE, attempt, c) for c in pending]
            ok = coverage(cand, 32, rngs_cov, 2048) >= min_coverage
        for c, s, good in zip(pending, cand, ok):
            if good:
                out[c] = s
        pending = [c for c, good in zip(pending, ok) if not good]
        if not pending:
            break
    return out


class FractalDataset:
    """A supervised fractal data set: class ``c`` is IFS ``c``; every image is a fresh rendering of a jittered
    copy of it (colours, flips, scale, position, background, distractor fractals).

    Args:
        num_classes: number of IFS classes.
        images_per_class: images per class.
        size: image side in pixels.
        seed: everything is a function of (seed, arguments).
        n_points: chaos-game points per main fractal (default ``2 · size²``).
        extra_fractals: (min, max) distractor fractals per image, drawn from a pool of systems outside the
            classes (so every image has exactly one fractal of its class, and 1-3 fractals in all by default).
        jitter: relative perturbation of the IFS parameters per image.
        chunk: images rendered per vectorised chaos-game call.

    Attributes:
        x: uint8 (N, size, size, 3) images, NHWC (what :class:`hpcfed.models.ImageClassifier` takes).
        y: int64 (N,) class ids, class-major order (N = num_classes · images_per_class).
        systems: list of the classes' (k, 2, 3) systems.
    """

    def __init__(self, num_classes: int, images_per_class: int, size: int = 32, seed: int = 0, *,
                 n_points: Optional[int] = None, extra_fractals: tuple[int, int] = (0, 2), jitter: float = 0.1,
                 num_distractor_systems: int = 64, chunk: int = 512):
        if num_classes < 1 or images_per_class < 1 or size < 4:
            raise ValueError(f"FractalDataset needs num_classes >= 1, images_per_class >= 1, size >= 4; got "
                             f"{num_classes}, {images_per_class}, {size}")
        self.num_classes, self.images_per_class, self.size, self.seed = num_classes, images_per_class, size, seed
        self.systems = class_systems(num_classes, seed)
        drng = generator(seed, FractalStream.DISTRACTORS)
        distractors = [sample_system(drng) for _ in range(num_distractor_systems if extra_fractals[1] > 0 else 0)]
        self.y = np.repeat(np.arange(num_classes, dtype=np.int64), images_per_class)  # (N,)
        self.x = np.empty((len(self.y), size, size, 3), dtype=np.uint8)
        rng = generator(seed, FractalStream.IMAGES)
        for start in range(0, len(self.y), chunk):
            ys = self.y[start:start + chunk]
            self.x[start:start + len(ys)] = render_images(
                [self.systems[c] for c in ys], size, rng, n_points=n_points, distractors=distractors,
                extra_fractals=extra_fractals, jitter=jitter)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.x[i], int(self.y[i])
