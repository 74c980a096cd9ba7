"""Medians across seeds with distribution-free confidence intervals.

For ``n`` seeds, the interval between the k-th smallest and the k-th
largest value holds the true median with probability
``1 - 2 * P(Binomial(n, 1/2) < k)``.  ``median_ci`` takes the largest k
whose coverage is at least the level asked for; with too few seeds for
that level (fewer than 6 for 95 %) it gives the smallest and largest values
and says what coverage they have.  No normality is assumed.
"""

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Estimate:
    """A median across seeds and its confidence interval."""

    median: float
    low: float
    high: float
    coverage: float

    def as_dict(self) -> dict[str, float]:
        """For JSON."""
        return {
            "median": self.median,
            "ci_low": self.low,
            "ci_high": self.high,
            "ci_coverage": self.coverage,
        }


def _coverage(n: int, k: int) -> float:
    below = sum(math.comb(n, i) for i in range(k)) / float(2**n)
    return 1.0 - 2.0 * below


def median_ci(values: Sequence[float], level: float = 0.95) -> Estimate:
    """The median of ``values`` with its order-statistic interval."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    n = len(ordered)
    k = 1
    while k + 1 <= n // 2 and _coverage(n, k + 1) >= level:
        k += 1
    return Estimate(
        median=statistics.median(ordered),
        low=ordered[k - 1],
        high=ordered[n - k],
        coverage=_coverage(n, k) if n > 1 else 0.0,
    )
