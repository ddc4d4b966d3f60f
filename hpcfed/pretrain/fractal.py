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
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

from hpcfed.rng import FractalStream, generator

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


def _to_unit_box(pts: np.ndarray, keep: float = 0.995, sample: int = 1024) -> tuple[np.ndarray, np.ndarray]:
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
    unit, inside = _to_unit_box(pts)
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


# ----------------------------------------------------------------------------------------------------------
# Images: several coloured fractals over a random background
# ----------------------------------------------------------------------------------------------------------

def _hsv(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB in [0, 1] (``colorsys.hsv_to_rgb`` over arrays); inputs broadcast, output (..., 3)."""
    h = np.asarray(h) % 1.0
    i = np.floor(h * 6.0).astype(np.int64) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = np.zeros(np.broadcast(h, s, v).shape + (3,))
    for j, (r, g, bb) in enumerate(choices):
        m = i == j
        out[..., 0] = np.where(m, r, out[..., 0])
        out[..., 1] = np.where(m, g, out[..., 1])
        out[..., 2] = np.where(m, bb, out[..., 2])
    return out


def random_background(size: int, rng: np.random.Generator, dark: bool = True) -> np.ndarray:
    """float (size, size, 3) in [0, 1]: a solid colour, a linear gradient, or smooth noise (one of three)."""
    kind = int(rng.integers(3))
    v_lo, v_hi = (0.0, 0.45) if dark else (0.55, 1.0)
    if kind == 0:
        c = _hsv(rng.random(), rng.uniform(0, 1), rng.uniform(v_lo, v_hi))
        return np.broadcast_to(c, (size, size, 3)).copy()
    if kind == 1:
        c0 = _hsv(rng.random(), rng.uniform(0, 1), rng.uniform(v_lo, v_hi))
        c1 = _hsv(rng.random(), rng.uniform(0, 1), rng.uniform(v_lo, v_hi))
        ang = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
        w = (np.cos(ang) * (xx - 0.5) + np.sin(ang) * (yy - 0.5)) / np.sqrt(0.5) + 0.5  # (H, W) in [0, 1]
        w = np.clip(w, 0, 1)[..., None]
        return (1 - w) * c0 + w * c1
    grid = 4
    coarse = _hsv(rng.random() + rng.uniform(-0.1, 0.1, (grid, grid)), rng.uniform(0, 1, (grid, grid)),
                  rng.uniform(v_lo, v_hi, (grid, grid)))  # (g, g, 3)
    pos = np.linspace(0, grid - 1, size)
    i0 = np.floor(pos).astype(int).clip(0, grid - 2)
    f = (pos - i0)[:, None]
    rows = coarse[i0] * (1 - f[..., None]) + coarse[i0 + 1] * f[..., None]  # (H, g, 3)
    cols = rows[:, i0] * (1 - f.T[..., None]) + rows[:, i0 + 1] * f.T[..., None]  # (H, W, 3)
    return cols


def _map_colors(k: int, rng: np.random.Generator, bright: bool = True) -> np.ndarray:
    """Per-map colours around one random hue, (k, 3) in [0, 1] (Anderson & Farrell colour points by map)."""
    hue = rng.random() + rng.uniform(-0.15, 0.15, size=k)
    sat = rng.uniform(0.3, 1.0, size=k)
    val = rng.uniform(0.6, 1.0, size=k) if bright else rng.uniform(0.0, 0.4, size=k)
    return _hsv(hue, sat, val)


def _draw(canvas: np.ndarray, placed: list[tuple], n_points: int, rng: np.random.Generator) -> None:
    """Draw fractals onto ``canvas`` float (B, H, W, 3) in place, later entries on top.

    ``placed``: (system (k, 2, 3), image index, scale, (x0, y0), (flip_x, flip_y), colours (k, 3)); the
    fractal's square box has side ``scale`` and top-left corner ``(x0, y0)``, in units of the image side.
    """
    if not placed:
        return
    size = canvas.shape[1]
    s_count = len(placed)
    pts, which = chaos_game([p[0] for p in placed], n_points, rng)
    unit, inside = _to_unit_box(pts)  # (S, N, 2), (S, N)
    image = np.array([p[1] for p in placed])  # (S,)
    scale = np.array([p[2] for p in placed])[:, None]  # (S, 1)
    off = np.array([p[3] for p in placed])  # (S, 2)
    flip = np.array([p[4] for p in placed])  # (S, 2) bool
    kmax = max(len(p[5]) for p in placed)
    colors = np.zeros((s_count, kmax, 3))
    for s, p in enumerate(placed):
        colors[s, :len(p[5])] = p[5]
    ux = np.where(flip[:, :1], 1.0 - unit[..., 0], unit[..., 0])  # (S, N)
    uy = np.where(flip[:, 1:], unit[..., 1], 1.0 - unit[..., 1])  # (S, N), image rows grow downwards
    px = np.clip(((off[:, :1] + scale * ux) * size).astype(np.int64), 0, size - 1)
    py = np.clip(((off[:, 1:] + scale * uy) * size).astype(np.int64), 0, size - 1)
    pixel = (image[:, None] * size + py) * size + px  # (S, N) index into canvas.reshape(-1, 3)
    color = np.arange(s_count)[:, None] * kmax + which  # (S, N) index into colors.reshape(-1, 3)
    # Points in placement order, so a later fractal overwrites an earlier one on the same pixel.
    canvas.reshape(-1, 3)[pixel[inside]] = colors.reshape(-1, 3)[color[inside]]


def render_images(main_systems: Sequence[np.ndarray], size: int, rng: np.random.Generator, *,
                  n_points: Optional[int] = None, distractors: Sequence[np.ndarray] = (),
                  extra_fractals: tuple[int, int] = (0, 2), jitter: float = 0.1,
                  scale_range: tuple[float, float] = (0.6, 1.0)) -> np.ndarray:
    """One RGB image per entry of ``main_systems``: uint8 (B, size, size, 3).

    Each image: a random background; 0..2 (``extra_fractals``) smaller fractals drawn from ``distractors``;
    then the main fractal on top — a jittered variant of its system (:func:`jitter_system`), random per-map
    colours, random horizontal/vertical flips, a box of ``scale_range`` × the image side at a random position.
    Contrast: the background is dark and the fractals bright, or (half the images) the reverse.

    Args:
        main_systems: B systems, the class of each image.
        n_points: chaos-game points per fractal (default ``2 · size²``; FractalDB and Anderson & Farrell draw
            about 1-2 points per pixel).
        distractors: systems the extra fractals are drawn from (none drawn when empty).
    """
    n_points = 2 * size * size if n_points is None else int(n_points)
    batch = len(main_systems)
    canvas = np.empty((batch, size, size, 3))
    behind: list[tuple] = []
    front: list[tuple] = []
    for i, system in enumerate(main_systems):
        dark_bg = bool(rng.random() < 0.5)
        canvas[i] = random_background(size, rng, dark=dark_bg)
        n_extra = int(rng.integers(extra_fractals[0], extra_fractals[1] + 1)) if len(distractors) else 0
        for _ in range(n_extra):
            d = distractors[int(rng.integers(len(distractors)))]
            sc = rng.uniform(0.25, 0.5)
            behind.append((jitter_system(d, rng, jitter), i, sc, tuple(rng.uniform(0, 1 - sc, 2)),
                           tuple(rng.random(2) < 0.5), _map_colors(len(d), rng, bright=dark_bg)))
        sc = rng.uniform(*scale_range)
        front.append((jitter_system(system, rng, jitter), i, sc, tuple(rng.uniform(0, 1 - sc, 2)),
                      tuple(rng.random(2) < 0.5), _map_colors(len(system), rng, bright=dark_bg)))
    _draw(canvas, behind, max(n_points // 4, 64), rng)
    _draw(canvas, front, n_points, rng)
    return np.clip(np.rint(canvas * 255.0), 0, 255).astype(np.uint8)


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


def save_grid(images: np.ndarray, path: str, ncols: int = 10) -> None:
    """Write a grid of uint8 (N, H, W, 3) images to a PNG (for looking at the data)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    nrows = -(-n // ncols)
    h, w = images.shape[1:3]
    grid = np.zeros((nrows * (h + 1), ncols * (w + 1), 3), dtype=np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, ncols)
        grid[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = im
    plt.imsave(path, grid)

