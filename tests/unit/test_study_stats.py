"""hpcfed.study.stats: Student-t quantiles and intervals against hand-computed values, paired differences by
seed, and the verdict rule on constructed intervals (all outcomes, n < 3, an end on 0)."""

import math

import pytest

from hpcfed.study import stats


def test_t_quantiles_match_the_tables():
    assert stats.t_quantile(0.975, 2) == pytest.approx(4.302653, abs=1e-6)
    assert stats.t_quantile(0.975, 1) == pytest.approx(12.706205, abs=1e-6)
    assert stats.t_quantile(0.975, 10) == pytest.approx(2.228139, abs=1e-6)
    for p, df in ((1.0, 2), (0.0, 2), (0.975, 0), (0.975, 1.5)):
        with pytest.raises(ValueError):
            stats.t_quantile(p, df)


def test_mean_ci_by_hand():
    # 0.80, 0.82, 0.84: mean 0.82, sd 0.02, half-width t(0.975, 2) * 0.02 / sqrt(3) = 4.302653 * 0.011547005
    e = stats.mean_ci([0.80, 0.82, 0.84])
    assert (e.n, e.level) == (3, 0.95)
    assert e.mean == pytest.approx(0.82) and e.sd == pytest.approx(0.02)
    assert e.half_width == pytest.approx(0.0496828, abs=1e-7)
    assert (e.lo, e.hi) == (pytest.approx(0.7703172, abs=1e-7), pytest.approx(0.8696828, abs=1e-7))
    # 1, 2, 4: mean 7/3, variance (16/9 + 1/9 + 25/9) / 2 = 7/3, half-width 4.302653 * sqrt(7/3) / sqrt(3)
    e = stats.mean_ci([1.0, 2.0, 4.0])
    assert e.mean == pytest.approx(7 / 3) and e.sd == pytest.approx(math.sqrt(7 / 3))
    assert e.half_width == pytest.approx(4.302653 * math.sqrt(7 / 9), abs=1e-5)
    # n = 2: t(0.975, 1) = 12.706205, sd = |a - b| / sqrt(2)
    e = stats.mean_ci([0.5, 0.7])
    assert e.half_width == pytest.approx(12.706205 * 0.2 / math.sqrt(2) / math.sqrt(2), abs=1e-6)
    # a 90% interval: t(0.95, 2) = 2.919986
    assert stats.mean_ci([0.80, 0.82, 0.84], level=0.9).half_width == pytest.approx(2.919986 * 0.011547005, abs=1e-6)


def test_mean_ci_small_and_bad_inputs():
    one = stats.mean_ci([0.7])
    assert (one.n, one.mean, one.sd, one.half_width, one.lo, one.hi) == (1, 0.7, None, None, None, None)
    none = stats.mean_ci([])
    assert (none.n, none.mean) == (0, None)
    assert stats.format_estimate(one) == "0.7" and stats.format_estimate(none) == ""
    assert stats.format_estimate(stats.mean_ci([0.80, 0.82, 0.84])) == "0.82 ± 0.05"
    for bad in ([0.1, float("nan")], [float("inf")]):
        with pytest.raises(ValueError, match="finite"):
            stats.mean_ci(bad)
    with pytest.raises(ValueError, match="level"):
        stats.mean_ci([1.0, 2.0], level=95)


def test_paired_differences_pair_by_seed_and_report_missing_seeds():
    a = {0: 0.80, 1: 0.82, 2: 0.85, 3: 0.90}
    b = {2: 0.81, 0: 0.78, 1: 0.80}
    p = stats.paired_differences(a, b, expected=range(5))
    assert p.seeds == (0, 1, 2) and p.diffs == pytest.approx((0.02, 0.02, 0.04))
    assert p.missing_a == (4,) and p.missing_b == (3, 4)
    # differences 0.02, 0.02, 0.04: mean 0.026667, sd sqrt(1.3333e-4) = 0.011547, half-width 4.302653 * 0.0066667
    assert p.estimate.n == 3 and p.estimate.mean == pytest.approx(0.0266667, abs=1e-7)
    assert p.estimate.half_width == pytest.approx(0.0286844, abs=1e-6)
    assert stats.verdict(p.estimate, "greater") == stats.INCONCLUSIVE  # [-0.0020, 0.0554] holds 0
    # pairing is by seed, not by position: swapping b's insertion order changes nothing
    assert stats.paired_differences(a, dict(sorted(b.items()))).diffs == p.diffs
    assert stats.paired_differences({}, {}).estimate.n == 0


def _est(n, mean, half_width):
    return stats.Estimate(n=n, mean=mean, sd=1.0, half_width=half_width)


@pytest.mark.parametrize("est, direction, expected", [
    (_est(3, 0.05, 0.02), "greater", stats.SUPPORTED),      # [0.03, 0.07]
    (_est(3, 0.05, 0.02), "less", stats.REFUTED),
    (_est(5, -0.05, 0.02), "less", stats.SUPPORTED),        # [-0.07, -0.03]
    (_est(5, -0.05, 0.02), "greater", stats.REFUTED),
    (_est(3, 0.05, 0.06), "greater", stats.INCONCLUSIVE),   # [-0.01, 0.11]
    (_est(3, -0.05, 0.06), "less", stats.INCONCLUSIVE),
    (_est(3, 0.02, 0.02), "greater", stats.INCONCLUSIVE),   # [0, 0.04]: an end on 0 does not exclude it
    (_est(2, 0.5, 0.01), "greater", stats.ANECDOTE),        # n < 3: not a verdict, however narrow
    (_est(1, 0.5, None), "greater", stats.ANECDOTE),
    (stats.Estimate(0, None, None, None), "less", stats.ANECDOTE),
])
def test_verdict_rule(est, direction, expected):
    assert stats.verdict(est, direction) == expected


def test_verdict_rejects_unknown_direction():
    with pytest.raises(ValueError, match="greater, less"):
        stats.verdict(_est(3, 0.1, 0.01), "bigger")
