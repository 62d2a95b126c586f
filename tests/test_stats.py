"""t intervals and paired differences against values computed by hand (and t tables)."""

from __future__ import annotations

import math

import pytest

from rfsearch.stats import mean_interval, paired_difference, t_cdf, t_quantile

# two-sided 95 % critical values t(0.975, df) from the standard tables
T_TABLE = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 9: 2.2622, 10: 2.2281, 20: 2.0860, 29: 2.0452, 30: 2.0423, 120: 1.9799}


@pytest.mark.parametrize("df", sorted(T_TABLE))
def test_t_quantile_matches_the_tables(df: int) -> None:
    assert t_quantile(0.975, df) == pytest.approx(T_TABLE[df], abs=1e-4)
    assert t_quantile(0.025, df) == pytest.approx(-T_TABLE[df], abs=1e-4)


def test_t_cdf_closed_forms() -> None:
    assert t_cdf(0.0, 3) == 0.5
    assert t_cdf(1.0, 1) == pytest.approx(0.75)  # Cauchy: 1/2 + atan(1)/π
    assert t_cdf(1.0, 2) == pytest.approx(0.5 + 1 / (2 * math.sqrt(3)))  # df 2: 1/2 + t / (2 √(2 + t²))
    assert t_cdf(-2.0, 6) == pytest.approx(1 - t_cdf(2.0, 6))
    assert t_quantile(0.95, 7) == pytest.approx(1.8946, abs=1e-4)  # one-sided 95 %
    assert t_quantile(0.975, 1000) == pytest.approx(1.9623, abs=1e-4)  # near the normal's 1.96
    with pytest.raises(ValueError):
        t_quantile(0.975, 0)


def test_mean_interval_by_hand() -> None:
    ci = mean_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    # mean 3, s = √2.5 = 1.5811, half = 2.7764 · 1.5811 / √5 = 1.9632
    assert (ci.mean, ci.n) == (3.0, 5) and ci.std == pytest.approx(1.58114, abs=1e-5)
    assert ci.half_width == pytest.approx(1.96324, abs=1e-4)
    assert (ci.low, ci.high) == (pytest.approx(1.03676, abs=1e-4), pytest.approx(4.96324, abs=1e-4))
    assert ci.resolved  # 0 lies outside [1.04, 4.96]
    single = mean_interval([85.8])
    assert single.half_width is None and single.low is None and not single.resolved and single.std == 0.0


def test_paired_difference_by_hand() -> None:
    pmpl = {0: 80.0, 1: 82.0, 2: 85.0, 3: 90.0}
    plain = {0: 78.0, 1: 81.0, 2: 80.0}  # seed 3 has no partner and is left out
    d = paired_difference(pmpl, plain)
    assert d is not None
    # differences 2, 1, 5: mean 8/3, s = √(13/3) = 2.0817, half = 4.3027 · 2.0817 / √3 = 5.1714
    assert d.n == 3 and d.mean == pytest.approx(8 / 3) and d.std == pytest.approx(math.sqrt(13 / 3))
    assert d.half_width == pytest.approx(5.1714, abs=1e-3) and not d.resolved  # [-2.50, 7.84] holds 0

    steady = paired_difference({0: 52.0, 1: 33.0, 2: 92.0, 3: 63.0}, {0: 50.0, 1: 30.0, 2: 90.0, 3: 60.0})
    assert steady is not None
    # differences 2, 3, 2, 3: mean 2.5, s = 0.57735, half = 3.1824 · 0.57735 / 2 = 0.91868
    assert steady.half_width == pytest.approx(0.91868, abs=1e-4) and steady.resolved
    # the same numbers unpaired: the spread of the seeds swamps a 2.5-point difference
    unpaired = mean_interval([52.0, 33.0, 92.0, 63.0]).half_width
    assert unpaired is not None and unpaired > 10 * steady.half_width

    assert paired_difference({0: 1.0}, {1: 2.0}) is None
