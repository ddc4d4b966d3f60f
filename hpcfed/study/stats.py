"""Statistics over seeds: mean ± Student-t confidence interval, paired differences between two arms, and the
verdict rule for a claimed difference.

Values are in the unit of the metric they come from (an accuracy as a fraction in [0, 1], bytes, seconds);
means, standard deviations, half-widths and interval ends are in that same unit. Nothing here reads files.

The verdict rule (docs/study.md): with ``n`` paired seeds and the ``level`` confidence interval ``[lo, hi]``
of the mean difference ``a - b``:

- ``n < 3``: :data:`ANECDOTE` — not a verdict, whatever the interval;
- the interval excludes 0 on the claimed side (``lo > 0`` for ``greater``, ``hi < 0`` for ``less``):
  :data:`SUPPORTED`;
- it excludes 0 on the other side: :data:`REFUTED`;
- otherwise (0 inside or on an end of the interval): :data:`INCONCLUSIVE`.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Sequence

LEVEL = 0.95
"""Confidence level of every interval the study reports."""
MIN_SEEDS = 3
"""Fewest paired seeds for a verdict."""
SUPPORTED, REFUTED, INCONCLUSIVE, ANECDOTE = "supported", "refuted", "inconclusive", "anecdote (n<3)"
VERDICTS = (SUPPORTED, REFUTED, INCONCLUSIVE, ANECDOTE)
DIRECTIONS = ("greater", "less")
"""A claim's direction: ``greater`` claims ``a > b``, ``less`` claims ``a < b``."""


def t_quantile(p: float, df: int) -> float:
    """The ``p``-quantile of Student's t distribution with ``df`` degrees of freedom (``scipy.stats.t.ppf``),
    e.g. ``t_quantile(0.975, 2) = 4.302653``.

    Raises:
        ValueError: ``p`` not in (0, 1) or ``df`` < 1.
        RuntimeError: scipy is not installed.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p={p!r} must be in (0, 1)")
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise ValueError(f"df={df!r} must be an integer >= 1")
    try:
        from scipy.stats import t
    except ImportError:  # a dependency of scikit-learn / sentence-transformers, so normally present
        raise RuntimeError("confidence intervals need scipy (pip install scipy)") from None
    return float(t.ppf(p, df))


@dataclass(frozen=True)
class Estimate:
    """A mean over ``n`` values with its two-sided ``level`` confidence interval (Student t, ``n - 1`` df)."""

    n: int
    mean: Optional[float]
    """None when ``n == 0``."""
    sd: Optional[float]
    """Sample standard deviation (``n - 1`` in the denominator); None when ``n < 2``."""
    half_width: Optional[float]
    """``t_{(1+level)/2, n-1} * sd / sqrt(n)``; None when ``n < 2``."""
    level: float = LEVEL

    @property
    def lo(self) -> Optional[float]:
        """Lower end of the interval (None when ``n < 2``)."""
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def hi(self) -> Optional[float]:
        """Upper end of the interval (None when ``n < 2``)."""
        return None if self.half_width is None else self.mean + self.half_width


def mean_ci(values: Sequence[float], level: float = LEVEL) -> Estimate:
    """Mean of ``values`` and its ``level`` confidence interval: ``mean ± t_{(1+level)/2, n-1} · sd / √n``.

    Raises:
        ValueError: a value is not a finite number, or ``level`` is not in (0, 1).
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level!r} must be in (0, 1)")
    xs = [float(v) for v in values]
    if not all(math.isfinite(x) for x in xs):
        raise ValueError(f"values must be finite numbers, got {values!r}")
    n = len(xs)
    if n == 0:
        return Estimate(0, None, None, None, level)
    mean = math.fsum(xs) / n
    if n == 1:
        return Estimate(1, mean, None, None, level)
    sd = statistics.stdev(xs)
    return Estimate(n, mean, sd, t_quantile((1.0 + level) / 2.0, n - 1) * sd / math.sqrt(n), level)


@dataclass(frozen=True)
class Paired:
    """Per-seed differences ``a[s] - b[s]`` over the seeds both arms have, and the seeds one of them lacks."""

    seeds: tuple[int, ...]
    """Seeds with a value in both arms, ascending."""
    diffs: tuple[float, ...]
    """``a[s] - b[s]`` for each of :attr:`seeds`."""
    missing_a: tuple[int, ...]
    """Seeds expected (or present in ``b``) with no value in ``a``."""
    missing_b: tuple[int, ...]
    """Seeds expected (or present in ``a``) with no value in ``b``."""
    estimate: Estimate
    """Mean difference with its confidence interval."""


def paired_differences(a: Mapping[int, float], b: Mapping[int, float], expected: Iterable[int] = (),
                       level: float = LEVEL) -> Paired:
    """Pair two arms by seed: ``a[s] - b[s]`` for every seed in both, then :func:`mean_ci` of the differences.

    Args:
        a, b: seed -> value of the metric (one arm each); only seeds present in both are paired.
        expected: seeds both arms should have (e.g. the study's ``seeds``); one missing from an arm is
            reported in :attr:`Paired.missing_a` / :attr:`Paired.missing_b` like a seed only the other has.
        level: confidence level of the interval.

    Raises:
        ValueError: a value is not finite, or ``level`` is not in (0, 1).
    """
    everything = set(a) | set(b) | set(expected)
    seeds = tuple(sorted(set(a) & set(b)))
    diffs = tuple(float(a[s]) - float(b[s]) for s in seeds)
    return Paired(seeds, diffs, tuple(sorted(everything - set(a))), tuple(sorted(everything - set(b))),
                  mean_ci(diffs, level))


def verdict(estimate: Estimate, direction: str) -> str:
    """The verdict on a claimed difference ``a - b`` (``direction`` ``greater``: ``a > b``; ``less``: ``a < b``)
    from its estimate: :data:`ANECDOTE` when ``n < 3``, else :data:`SUPPORTED`, :data:`REFUTED` or
    :data:`INCONCLUSIVE` by the rule in this module's docstring.

    Raises:
        ValueError: ``direction`` is not one of :data:`DIRECTIONS`.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction={direction!r} must be one of: {', '.join(DIRECTIONS)}")
    if estimate.n < MIN_SEEDS or estimate.half_width is None:
        return ANECDOTE
    sign = 1.0 if direction == "greater" else -1.0
    lo, hi = sorted((sign * estimate.lo, sign * estimate.hi))  # the interval of the claimed-positive quantity
    if lo > 0.0:
        return SUPPORTED
    if hi < 0.0:
        return REFUTED
    return INCONCLUSIVE


def format_estimate(estimate: Estimate, digits: int = 4) -> str:
    """``"mean ± half_width"`` (``digits`` significant digits for the mean, 2 for the half-width); just the mean
    when ``n == 1``; ``""`` when ``n == 0``."""
    if estimate.mean is None:
        return ""
    if estimate.half_width is None:
        return f"{estimate.mean:.{digits}g}"
    return f"{estimate.mean:.{digits}g} ± {estimate.half_width:.2g}"
