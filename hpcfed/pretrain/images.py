"""Colour images of fractals: HSV colours, random backgrounds, drawing chaos-game points onto a canvas.

:func:`render_images` draws several coloured fractals (a jittered main system on top of smaller distractors)
over a random background, as in Anderson & Farrell (WACV 2022); :func:`save_grid` writes a PNG to look at.
The points come from the chaos game of :mod:`hpcfed.pretrain.ifs`.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from hpcfed.pretrain.ifs import chaos_game, jitter_system, to_unit_box


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
    unit, inside = to_unit_box(pts)  # (S, N, 2), (S, N)
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
