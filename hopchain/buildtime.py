"""A circuit build timeout learned from observed build times.

Tor fits a Pareto distribution to its build times and abandons a build past
the 80th percentile (circuit build timeout, path-spec section 2.4).  hopchain
keeps the idea in a simpler form: after ``MIN_SAMPLES`` successful builds
the timeout is twice the 80th percentile of the last ``WINDOW`` build times,
clamped to [``FLOOR``, ``CEILING``] seconds; before that it is ``CEILING``.
A slow path is then abandoned and retried on another, instead of making a
stream wait 30 s.  Pure: the client records times and asks for the value.
"""

import statistics
from collections import deque
from typing import Final

MIN_SAMPLES: Final = 20
WINDOW: Final = 100
FLOOR: Final = 5.0  # generous: a loaded machine must not abandon good builds
CEILING: Final = 30.0


class BuildTimes:
    """Recent successful build times and the timeout they imply."""

    def __init__(self) -> None:
        self._samples: deque[float] = deque(maxlen=WINDOW)

    def record(self, seconds: float) -> None:
        """A circuit was built in ``seconds``."""
        self._samples.append(seconds)

    @property
    def timeout(self) -> float:
        """How long a build may take before it is abandoned."""
        if len(self._samples) < MIN_SAMPLES:
            return CEILING
        p80 = statistics.quantiles(self._samples, n=5)[-1]
        return min(CEILING, max(FLOOR, 2 * p80))
