"""A synthetic Tor-like network, and its hour-by-hour churn.

The generator draws relays with heavy-tailed bandwidths, countries, /16
address blocks, operator families and exit policies, and the flags come
from the authorities' own rules (``hopchain.flags.assign_flags``) applied to
each relay's simulated uptime.  Every figure below is an assumption chosen
to look like the public Tor network of the 2020s (Tor Metrics); they are
documented in docs/simulations.md, and a real network can be replayed
instead (``simulations.paths.torformat``).
"""

import hashlib
import math
import random
from dataclasses import dataclass
from typing import Final

from hopchain.directory import Consensus, Descriptor, RouterStatus
from hopchain.flags import Observation, Thresholds, assign_flags

HOUR: Final = 3600.0
DAY: Final = 86400.0

# Share of relays per country (about Tor Metrics' relays-by-country); the
# rest is spread over OTHER_COUNTRIES.
COUNTRY_SHARES: Final = (
    ("DE", 0.24),
    ("US", 0.18),
    ("FR", 0.08),
    ("NL", 0.07),
    ("CH", 0.04),
    ("SE", 0.03),
    ("GB", 0.03),
    ("FI", 0.03),
    ("CA", 0.03),
    ("AT", 0.02),
    ("PL", 0.02),
    ("RO", 0.02),
    ("LU", 0.02),
    ("RU", 0.02),
    ("NO", 0.015),
    ("CZ", 0.015),
    ("UA", 0.01),
    ("SG", 0.01),
    ("JP", 0.01),
)
OTHER_COUNTRIES: Final = ("IT", "ES", "BG", "DK", "IS", "IN", "BR", "AU", "HK", "LT")

# Bandwidth in bytes/s: lognormal, median 2.5 MB/s, sigma 1.7 (mean about
# 10 MB/s), clipped to [20 kB/s, 250 MB/s].
BANDWIDTH_MEDIAN: Final = 2.5e6
BANDWIDTH_SIGMA: Final = 1.7
BANDWIDTH_RANGE: Final = (20_000, 250_000_000)

EXIT_SHARE: Final = 0.2
"""Share of relays with an exit policy."""
FAMILY_SHARE: Final = 0.35
"""Share of relays run by an operator with more than one relay."""
MEAN_UP_HOURS: Final = 14 * 24.0
MEAN_DOWN_HOURS: Final = 12.0
MEAN_INITIAL_UPTIME_DAYS: Final = 30.0

# Exit policies as accepted port ranges: Tor's ReducedExitPolicy (short
# form: its web, mail, chat and remote-login ports), web only, and
# everything but SMTP.
REDUCED_POLICY: Final = (
    (20, 23),
    (43, 43),
    (53, 53),
    (79, 81),
    (88, 88),
    (110, 110),
    (143, 143),
    (194, 194),
    (220, 220),
    (389, 389),
    (443, 443),
    (464, 465),
    (531, 531),
    (543, 544),
    (554, 554),
    (563, 563),
    (587, 587),
    (636, 636),
    (706, 706),
    (749, 749),
    (873, 873),
    (902, 904),
    (981, 981),
    (989, 995),
    (1194, 1194),
    (1220, 1220),
    (1293, 1293),
    (1500, 1500),
    (1533, 1533),
    (1677, 1677),
    (1723, 1723),
    (1755, 1755),
    (1863, 1863),
    (2082, 2083),
    (2086, 2087),
    (2095, 2096),
    (2102, 2104),
    (3128, 3128),
    (3389, 3389),
    (3690, 3690),
    (4321, 4321),
    (4643, 4643),
    (5050, 5050),
    (5190, 5190),
    (5222, 5223),
    (5228, 5228),
    (5900, 5900),
    (6660, 6669),
    (6679, 6679),
    (6697, 6697),
    (8000, 8000),
    (8008, 8008),
    (8074, 8074),
    (8080, 8080),
    (8082, 8082),
    (8087, 8088),
    (8232, 8233),
    (8332, 8333),
    (8443, 8443),
    (8888, 8888),
    (9418, 9418),
    (9999, 10000),
    (11371, 11371),
    (19294, 19294),
    (19638, 19638),
    (50002, 50002),
    (64738, 64738),
)
WEB_POLICY: Final = ((80, 80), (443, 443))
NO_SMTP_POLICY: Final = ((1, 24), (26, 65535))
POLICIES: Final = ((REDUCED_POLICY, 0.5), (WEB_POLICY, 0.25), (NO_SMTP_POLICY, 0.25))

TOR_THRESHOLDS: Final = Thresholds()
"""The authorities' default bars (Fast 100 kB/s, Stable 1 h, Guard 1 day)."""


@dataclass(frozen=True, slots=True)
class SyntheticRelay:
    """One generated relay and its up/down timeline parameters."""

    descriptor: Descriptor
    up_since: float
    """Start of the current up period (negative: before the simulation)."""


def identity_for(label: str) -> bytes:
    """A 32-byte identity derived from ``label`` (no key pair: nothing is
    signed in a path simulation)."""
    return hashlib.blake2b(label.encode(), digest_size=32).digest()


def _weighted_country(rng: random.Random) -> str:
    roll = rng.random()
    for code, share in COUNTRY_SHARES:
        roll -= share
        if roll < 0:
            return code
    return rng.choice(OTHER_COUNTRIES)


def _bandwidth(rng: random.Random) -> int:
    value = rng.lognormvariate(math.log(BANDWIDTH_MEDIAN), BANDWIDTH_SIGMA)
    low, high = BANDWIDTH_RANGE
    return int(min(max(value, low), high))


def _family_sizes(count: int, rng: random.Random) -> list[int]:
    """Operator sizes covering ``FAMILY_SHARE`` of ``count`` relays: Pareto
    distributed (alpha 1.3), from 2 to 40 relays."""
    sizes: list[int] = []
    remaining = int(count * FAMILY_SHARE)
    while remaining >= 2:
        size = min(40, remaining, 1 + int(rng.paretovariate(1.3)))
        size = max(2, size)
        sizes.append(size)
        remaining -= size
    return sizes


class _Subnets:
    """Public-looking /16 blocks, handed out per country with a Zipf-like
    popularity (a few hosting providers hold many relays)."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        firsts = [a for a in range(11, 224) if a not in (100, 127, 169, 172, 192)]
        self._free = [(a, b) for a in firsts for b in range(256)]
        rng.shuffle(self._free)
        self._by_country: dict[str, list[tuple[int, int]]] = {}

    def new(self) -> tuple[int, int]:
        return self._free.pop()

    def pick(self, country: str) -> tuple[int, int]:
        blocks = self._by_country.setdefault(country, [])
        # A new block with probability 1/(1 + blocks/8), else a popular one.
        if not blocks or self._rng.random() < 8 / (8 + len(blocks)):
            blocks.append(self.new())
            return blocks[-1]
        rank = min(int(self._rng.paretovariate(1.0)) - 1, len(blocks) - 1)
        return blocks[rank]

    def address(self, block: tuple[int, int]) -> str:
        third, fourth = self._rng.randrange(256), self._rng.randrange(1, 255)
        return f"{block[0]}.{block[1]}.{third}.{fourth}"


def generate_relays(count: int, seed: int) -> list[SyntheticRelay]:
    """``count`` relays, the same for the same ``(count, seed)``."""
    if count < 3:
        raise ValueError("a network needs at least 3 relays")
    rng = random.Random(f"hopchain synthetic network {seed}")
    subnets = _Subnets(rng)
    identities = [identity_for(f"synthetic {seed} relay {i}") for i in range(count)]
    order = list(range(count))
    rng.shuffle(order)
    families: dict[int, tuple[int, ...]] = {}
    start = 0
    for size in _family_sizes(count, rng):
        members = tuple(order[start : start + size])
        start += size
        for m in members:
            families[m] = members
    operator_blocks: dict[tuple[int, ...], list[tuple[int, int]]] = {}
    operator_country: dict[tuple[int, ...], str] = {}
    relays = []
    for i in range(count):
        family = families.get(i, ())
        if family:
            country = operator_country.setdefault(family, _weighted_country(rng))
            blocks = operator_blocks.setdefault(family, [])
            if not blocks or (len(blocks) < 3 and rng.random() < 0.2):
                blocks.append(subnets.pick(country))
            block = rng.choice(blocks)
        else:
            country = _weighted_country(rng)
            block = subnets.pick(country)
        exit_ports: tuple[tuple[int, int], ...] = ()
        if rng.random() < EXIT_SHARE:
            roll = rng.random()
            for policy, share in POLICIES:
                exit_ports = policy
                roll -= share
                if roll < 0:
                    break
        descriptor = Descriptor(
            nickname=f"r{i:05d}",
            identity=identities[i],
            onion_key=bytes(32),
            address=subnets.address(block),
            or_port=9001,
            bandwidth=_bandwidth(rng),
            exit_ports=exit_ports,
            family=tuple(identities[m] for m in family if m != i),
            country=country,
            published=0.0,
            test_network=False,
        )
        uptime = rng.expovariate(1 / (MEAN_INITIAL_UPTIME_DAYS * DAY))
        if rng.random() < MEAN_DOWN_HOURS / (MEAN_UP_HOURS + MEAN_DOWN_HOURS):
            uptime = -rng.expovariate(1 / (MEAN_DOWN_HOURS * HOUR))  # down now
        relays.append(SyntheticRelay(descriptor, -uptime))
    return relays


class SyntheticSchedule:
    """Consensuses for consecutive periods: relays go down and come back
    (exponential up and down times), and flags follow their uptime.

    Flags come from the authorities' ``assign_flags``.  A relay's flags
    depend on its own descriptor and observation, plus one network-wide
    figure, the median bandwidth of Fast relays, which is constant here
    because bandwidths are.  So ``assign_flags`` is run once per uptime
    class (down; up for less than the Stable bar; up for less than the Guard
    bar; up longer) over all relays, and each period picks every relay's
    flags by its class: the same flags as calling it every period, for a
    fraction of the cost.

    ``up_since`` > ``now`` means a relay is down until then.  Periods must be
    asked for in order (each builds on the last).
    """

    def __init__(self, relays: list[SyntheticRelay], period: float, seed: int) -> None:
        self.period = period
        self._relays = [r.descriptor for r in relays]
        self._up_since = [r.up_since for r in relays]
        self._rng = random.Random(f"hopchain synthetic churn {seed}")
        self._next = 0
        bars = TOR_THRESHOLDS
        classes = (
            (False, 0.0),
            (True, 0.0),
            (True, bars.stable_uptime),
            (True, max(bars.stable_uptime, bars.guard_uptime)),
        )
        self._by_class = [
            [
                RouterStatus(d, flags)
                for d, flags in zip(
                    self._relays,
                    assign_flags(
                        [Observation(d, running, uptime) for d in self._relays],
                        bars,
                        frozenset(),
                    ),
                    strict=True,
                )
            ]
            for running, uptime in classes
        ]

    def _class(self, up_since: float, now: float) -> int:
        if up_since > now:
            return 0
        uptime = now - up_since
        bars = TOR_THRESHOLDS
        return 1 + (uptime >= bars.stable_uptime) + (uptime >= bars.guard_uptime)

    def _advance(self, start: float) -> None:
        """Move each relay's state to the period starting at ``start``."""
        rng = self._rng
        p_down = 1 - math.exp(-self.period / (MEAN_UP_HOURS * HOUR))
        for i, up_since in enumerate(self._up_since):
            if up_since <= start - self.period and rng.random() < p_down:
                down_for = rng.expovariate(1 / (MEAN_DOWN_HOURS * HOUR))
                self._up_since[i] = start + down_for

    def consensus(self, index: int) -> Consensus:
        """The consensus in force during period ``index`` (0, 1, 2, ...)."""
        if index != self._next:
            raise ValueError(f"periods are built in order: {self._next}, not {index}")
        self._next += 1
        start = index * self.period
        if index:
            self._advance(start)
        by_class = self._by_class
        return Consensus(
            valid_after=start,
            fresh_until=start + self.period,
            valid_until=start + 3 * self.period,
            relays=tuple(
                by_class[self._class(up_since, start)][i]
                for i, up_since in enumerate(self._up_since)
            ),
            signers=frozenset(),
        )
