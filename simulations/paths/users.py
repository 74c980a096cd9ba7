"""User models: when a simulated user opens streams, and to which ports.

Each model turns a user's own rng into a time-ordered list of *visits* for
one day: ``(time in seconds since the start of the run, port, streams)``.
A visit's streams open at the same instant to the same port (a web page and
its resources), so they share one circuit decision.  Both models are in the
spirit of TorPS's user models (Johnson et al., CCS 2013) with our own
numbers, listed in docs/simulations.md:

* ``typical`` (web browsing): up to three sessions a day (around 09:00,
  12:30 and 19:00, each taking place with probability 0.8, starting within
  30 minutes either side, lasting 20 to 60 minutes); page visits arrive as a
  Poisson process, one a minute on average; each opens 1 + Poisson(3)
  streams, to 443 (85 %) or 80;
* ``irc`` (long-lived chat): one session a day, starting between 08:00 and
  12:00 and lasting 8 hours; it connects to 6697 at the start and again
  after each disconnection, which come as a Poisson process every 2 hours
  on average; a connection is one stream.
"""

import math
import random
from collections.abc import Callable
from typing import Final

from hopchain.simulations.paths.synthetic import DAY, HOUR

Visit = tuple[float, int, int]
MINUTE: Final = 60.0

TYPICAL_SESSIONS: Final = ((9 * HOUR, 0.8), (12.5 * HOUR, 0.8), (19 * HOUR, 0.8))
TYPICAL_JITTER: Final = 30 * MINUTE
TYPICAL_LENGTH: Final = (20 * MINUTE, 60 * MINUTE)
TYPICAL_VISIT_GAP: Final = 1 * MINUTE
TYPICAL_EXTRA_STREAMS: Final = 3.0
TYPICAL_HTTPS: Final = 0.85
IRC_START: Final = (8 * HOUR, 12 * HOUR)
IRC_LENGTH: Final = 8 * HOUR
IRC_RECONNECT: Final = 2 * HOUR
IRC_PORT: Final = 6697


def _poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method (small means only)."""
    limit, k, p = math.exp(-mean), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def typical_day(day: int, rng: random.Random) -> list[Visit]:
    """One day of web browsing (see the module docstring)."""
    visits: list[Visit] = []
    base = day * DAY
    for start, probability in TYPICAL_SESSIONS:
        if rng.random() >= probability:
            continue
        t = base + start + rng.uniform(-TYPICAL_JITTER, TYPICAL_JITTER)
        end = t + rng.uniform(*TYPICAL_LENGTH)
        while t < end:
            port = 443 if rng.random() < TYPICAL_HTTPS else 80
            visits.append((t, port, 1 + _poisson(rng, TYPICAL_EXTRA_STREAMS)))
            t += rng.expovariate(1 / TYPICAL_VISIT_GAP)
    return visits


def irc_day(day: int, rng: random.Random) -> list[Visit]:
    """One day of an IRC client (see the module docstring)."""
    t = day * DAY + rng.uniform(*IRC_START)
    end = t + IRC_LENGTH
    visits: list[Visit] = []
    while t < end:
        visits.append((t, IRC_PORT, 1))
        t += rng.expovariate(1 / IRC_RECONNECT)
    return visits


MODELS: Final[dict[str, Callable[[int, random.Random], list[Visit]]]] = {
    "typical": typical_day,
    "irc": irc_day,
}
