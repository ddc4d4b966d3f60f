"""Iterated function systems and the chaos game: the geometry of the fractal pre-training images.

* Systems: random contraction maps sampled through their singular value decomposition with the σ-factor
  constraint of Anderson & Farrell (WACV 2022) (:func:`sample_singular_values`, :func:`sample_system`), the
  FractalDB map probabilities ∝ |det A_i| (:func:`map_probabilities`), spectral norms and intra-class jitter.
* The vectorised chaos game over many systems and chains at once (:func:`chaos_game`), the robust scaling of
  its points into the unit square (:func:`to_unit_box`), and grey-scale renderings of attractors
  (:func:`render`, :func:`coverage`).

Colour images are drawn in :mod:`hpcfed.pretrain.images`; the data set is in :mod:`hpcfed.pretrain.fractal`
(whose docstring has the references).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

RNG = Union[np.random.Generator, Sequence[np.random.Generator]]

MIN_MAPS = 2
MAX_MAPS = 8
MAX_SINGULAR_VALUE = 0.995
"""Singular values are clipped below 1 so that every map is a strict contraction."""


# ----------------------------------------------------------------------------------------------------------
# Systems
# ----------------------------------------------------------------------------------------------------------

def _rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def sample_singular_values(n_maps: int, sigma_factor: float, rng: np.random.Generator) -> np.ndarray:
    """Singular values (n_maps, 2), each row σ₁ >= σ₂ in [0, 1], with Σ_i (σ_{i,1} + 2σ_{i,2}) = sigma_factor.

    The budget is split into per-map shares ``c_i ∈ [0, 3]`` (sequentially, each share uniform over what keeps
    the rest feasible, then shuffled); within a map σ₁ is uniform over ``[max(c/3, c − 2), min(1, c)]`` and
    σ₂ = (c − σ₁)/2 (the constraint set of Anderson & Farrell 2022).

    Raises:
        ValueError: ``sigma_factor`` is outside ``[0, 3 n_maps]``.
    """
    if not 0.0 <= sigma_factor <= 3.0 * n_maps:
        raise ValueError(f"sigma_factor={sigma_factor} must be in [0, {3 * n_maps}] for {n_maps} maps")
    shares = np.empty(n_maps)
    rest = sigma_factor
    for i in range(n_maps - 1):
        lo = max(0.0, rest - 3.0 * (n_maps - i - 1))
        hi = min(3.0, rest)
        shares[i] = rng.uniform(lo, hi)
        rest -= shares[i]
    shares[-1] = min(max(rest, 0.0), 3.0)
    shares = shares[rng.permutation(n_maps)]
    sv = np.empty((n_maps, 2))
    for i, c in enumerate(shares):
        s1 = rng.uniform(max(c / 3.0, c - 2.0), min(1.0, c)) if c > 0 else 0.0
        sv[i] = (s1, (c - s1) / 2.0)
    return sv


def sample_system(rng: np.random.Generator, n_maps: Optional[int] = None,
                  sigma_factor: Optional[float] = None) -> np.ndarray:
    """A random IFS: float64 (k, 2, 3), row-block ``[A_i | b_i]`` per map, every ``A_i`` a contraction.

    Args:
        rng: the source of randomness.
        n_maps: k; null draws it uniformly from 2..8 (FractalDB's range).
        sigma_factor: α = Σ_i (σ_{i,1} + 2σ_{i,2}); null draws it uniformly from [(5 + k)/2, (6 + k)/2]
            (Anderson & Farrell's filter, which they found gives the best pre-training).

    ``A_i = R(θ_i) diag(σ_{i,1}, σ_{i,2}) R(φ_i) D_i`` with θ, φ uniform angles, D_i a random diagonal
    reflection (±1 entries); translations ``b_i`` uniform in [-1, 1]². Singular values are clipped to
    :data:`MAX_SINGULAR_VALUE` so that ``‖A_i‖₂ < 1``.
    """
    k = int(rng.integers(MIN_MAPS, MAX_MAPS + 1)) if n_maps is None else int(n_maps)
    if not MIN_MAPS <= k <= MAX_MAPS:
        raise ValueError(f"n_maps={k} must be in [{MIN_MAPS}, {MAX_MAPS}]")
    alpha = rng.uniform((5 + k) / 2, (6 + k) / 2) if sigma_factor is None else float(sigma_factor)
    sv = np.minimum(sample_singular_values(k, alpha, rng), MAX_SINGULAR_VALUE)  # (k, 2)
    system = np.empty((k, 2, 3))
    for i in range(k):
        theta, phi = rng.uniform(0.0, 2 * np.pi, size=2)
        d = np.diag(rng.choice([-1.0, 1.0], size=2))
        system[i, :, :2] = _rotation(theta) @ np.diag(sv[i]) @ _rotation(phi) @ d
        system[i, :, 2] = rng.uniform(-1.0, 1.0, size=2)
    return system


def map_probabilities(system: np.ndarray) -> np.ndarray:
    """Probability of each map, float64 (k,): ∝ |det A_i| (FractalDB), with a floor so none is never chosen."""
    det = np.abs(np.linalg.det(system[:, :, :2]))  # (k,)
    det = np.maximum(det, 1e-3 * max(det.max(), 1e-12))
    return det / det.sum()


def lipschitz_constants(system: np.ndarray) -> np.ndarray:
    """Spectral norm ‖A_i‖₂ of each map, float64 (k,); all < 1 for a contraction system."""
    return np.linalg.norm(system[:, :, :2], ord=2, axis=(1, 2))


def jitter_system(system: np.ndarray, rng: np.random.Generator, scale: float = 0.1) -> np.ndarray:
    """An intra-class variant of ``system``: every parameter multiplied by ``1 + U(-scale, scale)``
    (FractalDB's parameter weighting, made continuous); maps that stop contracting are shrunk back to a
    spectral norm of :data:`MAX_SINGULAR_VALUE`."""
    out = system * (1.0 + rng.uniform(-scale, scale, size=system.shape))
    norms = lipschitz_constants(out)
    shrink = np.minimum(1.0, MAX_SINGULAR_VALUE / np.maximum(norms, 1e-12))  # (k,)
    out[:, :, :2] *= shrink[:, None, None]
    return out


# ----------------------------------------------------------------------------------------------------------
# Chaos game
# ----------------------------------------------------------------------------------------------------------

def chaos_game(systems: Sequence[np.ndarray], n_points: int, rng: RNG, *, chains: int = 64,
               burn_in: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Points on the attractors of several systems at once.

    Each system runs ``chains`` independent chains started uniformly in [-1, 1]²; after ``burn_in`` iterations
    every chain's iterates are kept until ``n_points`` per system are collected. All systems and chains advance
    together: one step is a handful of numpy operations on (S, chains) arrays, and the map choices of all
    steps are drawn up front.

    Args:
        systems: S arrays (k_s, 2, 3).
        n_points: points per system (rounded up to a multiple of ``chains``).
        rng: randomness (start points and map choices): one generator, or one per system (then each
            system's points depend only on its own generator).
        chains: parallel chains per system.
        burn_in: iterations discarded per chain (the distance to the attractor shrinks at least by
            max ‖A_i‖₂ per step).

    Returns:
        points float64 (S, N, 2) and the index of the map that produced each point int64 (S, N).
    """
    s_count = len(systems)
    kmax = max(len(s) for s in systems)
    par = np.zeros((s_count, kmax, 6))  # a00 a01 b0 a10 a11 b1 per map; padding maps are never chosen
    cum = np.full((s_count, kmax), 2.0)  # cumulative probabilities
    for i, sys_i in enumerate(systems):
        k = len(sys_i)
        par[i, :k] = sys_i.reshape(k, 6)
        cum[i, :k] = np.cumsum(map_probabilities(sys_i))
        cum[i, k - 1] = 2.0  # guards against round-off: u < 1 always picks a real map
    steps = -(-n_points // chains)  # ceil
    total = burn_in + steps
    if isinstance(rng, np.random.Generator):
        u = rng.random((total, s_count, chains))  # (T, S, C)
        x = rng.uniform(-1.0, 1.0, size=(s_count, chains))  # (S, C)
        y = rng.uniform(-1.0, 1.0, size=(s_count, chains))
    else:
        if len(rng) != s_count:
            raise ValueError(f"{len(rng)} generators for {s_count} systems")
        u = np.stack([r.random((total, chains)) for r in rng], axis=1)  # (T, S, C)
        start = np.stack([r.uniform(-1.0, 1.0, size=(2, chains)) for r in rng], axis=1)  # (2, S, C)
        x, y = start[0], start[1]
    idx = np.zeros((total, s_count, chains), dtype=np.int64)
    for m in range(kmax - 1):
        idx += u >= cum[None, :, m, None]  # map index = number of cumulative probabilities <= u
    flat = idx + (np.arange(s_count) * kmax)[None, :, None]  # (T, S, C) row of par.reshape(S*kmax, 6)
    prm = par.reshape(s_count * kmax, 6)
    pts = np.empty((steps, s_count, chains, 2))
    for t in range(total):
        p = prm[flat[t]]  # (S, C, 6)
        x, y = p[..., 0] * x + p[..., 1] * y + p[..., 2], p[..., 3] * x + p[..., 4] * y + p[..., 5]
        if t >= burn_in:
            pts[t - burn_in, ..., 0] = x
            pts[t - burn_in, ..., 1] = y
    pts = pts.transpose(1, 0, 2, 3).reshape(s_count, steps * chains, 2)  # (S, N, 2)
    which = idx[burn_in:].transpose(1, 0, 2).reshape(s_count, steps * chains)  # (S, N)
    return pts, which


def to_unit_box(pts: np.ndarray, keep: float = 0.995, sample: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Scale each system's points (S, N, 2) into [0, 1]² preserving the aspect ratio (centred).

    The box is the ``[1 - keep, keep]`` quantile range per axis, estimated on the first ``sample`` points (the
    chains are independent, so these are a fair sample); points outside it are flagged, which makes the box
    robust to a chain still on its way to the attractor. Returns (points (S, N, 2), inside bool (S, N)).
    """
    sub = pts[:, :sample]
    lo = np.quantile(sub, 1.0 - keep, axis=1, keepdims=True)  # (S, 1, 2)
    hi = np.quantile(sub, keep, axis=1, keepdims=True)
    extent = np.maximum((hi - lo).max(-1, keepdims=True), 1e-9)  # (S, 1, 1)
    centre = (lo + hi) / 2.0
    unit = (pts - centre) / extent + 0.5  # (S, N, 2)
    inside = np.all((unit >= 0.0) & (unit <= 1.0), axis=-1)  # (S, N)
    return unit, inside


def _masks(systems: Sequence[np.ndarray], size: int, rng: RNG, n_points: int) -> np.ndarray:
    """bool (S, size, size): pixels hit by each system's attractor scaled to fill the image (y up)."""
    pts, _ = chaos_game(systems, n_points, rng)
    unit, inside = to_unit_box(pts)
    s_idx = np.broadcast_to(np.arange(len(systems))[:, None], inside.shape)[inside]  # (M,)
    px = np.clip((unit[..., 0][inside] * size).astype(np.int64), 0, size - 1)
    py = np.clip((unit[..., 1][inside] * size).astype(np.int64), 0, size - 1)
    out = np.zeros((len(systems), size, size), dtype=bool)
    out[s_idx, size - 1 - py, px] = True
    return out


def render(system: np.ndarray, size: int, rng: Optional[np.random.Generator] = None,
           n_points: Optional[int] = None) -> np.ndarray:
    """Grey-scale image of one system's attractor, uint8 (size, size): 255 where a point falls, 0 elsewhere.

    The attractor's bounding box (robust 0.5-99.5% quantiles, aspect kept) fills the image.

    Args:
        system: (k, 2, 3) IFS.
        size: image side in pixels.
        rng: randomness of the chaos game (default: seed 0).
        n_points: points to draw (default ``20 · size²``, at most 100 000).
    """
    rng = np.random.default_rng(0) if rng is None else rng
    n_points = min(20 * size * size, 100_000) if n_points is None else int(n_points)
    return _masks([system], size, rng, n_points)[0].astype(np.uint8) * np.uint8(255)


def coverage(systems: Sequence[np.ndarray], size: int = 32, rng: Optional[RNG] = None,
             n_points: Optional[int] = None) -> np.ndarray:
    """Fraction of pixels each system's attractor covers when it fills a ``size``² image, float64 (S,)."""
    rng = np.random.default_rng(0) if rng is None else rng
    n_points = 8 * size * size if n_points is None else int(n_points)
    return _masks(systems, size, rng, n_points).mean(axis=(1, 2))
