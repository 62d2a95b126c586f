"""Confidence intervals over seeds: Student-t intervals of a mean and of paired differences.

scipy is not a dependency and ``torch.distributions.StudentT`` has neither ``cdf`` nor ``icdf``,
so the t quantile is computed here: the distribution function of Student's t with an integer
number of degrees of freedom has a closed form (Abramowitz & Stegun, *Handbook of Mathematical
Functions*, 26.7.3 and 26.7.4), which bisection inverts to float precision. Seeds give integer
degrees of freedom (``n - 1``), so nothing else is needed.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95


def t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with ``df`` (a positive integer) degrees of freedom."""
    if df < 1 or int(df) != df:
        raise ValueError(f"degrees of freedom must be a positive integer, got {df}")
    theta = math.atan(abs(t) / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    # A(|t| | df) = P(-|t| <= T <= |t|), as a finite series in cos²θ (A&S 26.7.3 odd, 26.7.4 even)
    if df % 2:
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for k in range(3, df - 1, 2):  # 1 + 2/3 c² + (2·4)/(3·5) c⁴ + … up to c^(df-3)
            term *= (k - 1) / k * c2
            total += term
        inside = 2.0 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)
    else:
        term, total = 1.0, 1.0
        for k in range(2, df - 1, 2):  # 1 + 1/2 c² + (1·3)/(2·4) c⁴ + … up to c^(df-2)
            term *= (k - 1) / k * c2
            total += term
        inside = math.sin(theta) * total
    return 0.5 + math.copysign(inside / 2.0, t)


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (``t_quantile(0.975, 4)`` = 2.776…)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must lie in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):  # bisection to float precision
        mid = (low + high) / 2.0
        if mid in (low, high):
            break
        low, high = (mid, high) if t_cdf(mid, df) < p else (low, mid)
    return (low + high) / 2.0


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` values with its sample std and a two-sided t interval (None below two values)."""

    mean: float
    std: float
    n: int
    half_width: float | None
    confidence: float = CONFIDENCE

    @property
    def low(self) -> float | None:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.half_width is None else self.mean + self.half_width

    @property
    def resolved(self) -> bool:
        """The interval excludes 0: the sign of the mean is more than noise at this confidence."""
        return self.half_width is not None and abs(self.mean) > self.half_width


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean ± t(1 - (1 - confidence)/2, n - 1) · s / √n of ``values``; no interval for one value."""
    if not values:
        raise ValueError("an interval needs at least one value")
    n = len(values)
    mean = statistics.fmean(values)
    if n == 1:
        return Interval(mean, 0.0, 1, None, confidence)
    std = statistics.stdev(values)
    half = t_quantile(1.0 - (1.0 - confidence) / 2.0, n - 1) * std / math.sqrt(n)
    return Interval(mean, std, n, half, confidence)


def paired_difference(values: Mapping[int, float], baseline: Mapping[int, float], confidence: float = CONFIDENCE) -> Interval | None:
    """The interval of ``values[s] - baseline[s]`` over the keys (seeds) both hold; None when they share none.

    Pairing by seed removes what the two runs of a seed share (data order, meta split), so the
    interval is narrower than that of the difference of two independent means when seeds matter.
    """
    common = [s for s in values if s in baseline]
    if not common:
        return None
    return mean_interval([values[s] - baseline[s] for s in common], confidence)
