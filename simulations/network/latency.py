"""One-way latency between countries, from distance.

No measured matrix ships with hopchain, so the table is derived, and the
rule is stated so it can be replaced: the great-circle distance between the
countries' reference points (a large city of each: where most relays and
users are), times an inflation factor of 3.2 over the speed of light in
vacuum, plus 5 ms of access network at the two ends.  Bozkurt et al.,
"Why is the Internet so slow?!" (PAM 2017) measured a median round-trip
inflation of about 3.2x over c-latency for the Internet's infrastructure
(fibre at 2/3 c, and routes longer than the great circle).  Two hosts in one
country are taken to be ``DOMESTIC_KM`` apart.

Examples (one way): DE-NL 9 ms, DE-US 79 ms, US-JP 113 ms, DE-AU 181 ms (round trips are
twice that; measured RTTs such as Frankfurt-New York, about 90 ms, sit
between the domestic and this model's transatlantic value, since the US
reference point is Chicago).
"""

import math
from collections.abc import Mapping
from typing import Final

__all__ = ["COUNTRY_WEIGHTS", "LOCATIONS", "country_latency"]

LIGHT_KM_PER_S: Final = 299_792.458
INFLATION: Final = 3.2
ACCESS_S: Final = 0.005
DOMESTIC_KM: Final = 400.0
EARTH_RADIUS_KM: Final = 6371.0

LOCATIONS: Final[Mapping[str, tuple[float, float]]] = {
    "DE": (50.11, 8.68),  # Frankfurt
    "US": (41.88, -87.63),  # Chicago
    "FR": (48.86, 2.35),  # Paris
    "NL": (52.37, 4.90),  # Amsterdam
    "GB": (51.51, -0.13),  # London
    "CA": (43.65, -79.38),  # Toronto
    "SE": (59.33, 18.07),  # Stockholm
    "CH": (47.38, 8.54),  # Zurich
    "FI": (60.17, 24.94),  # Helsinki
    "PL": (52.23, 21.01),  # Warsaw
    "RU": (55.76, 37.62),  # Moscow
    "JP": (35.68, 139.69),  # Tokyo
    "SG": (1.35, 103.82),  # Singapore
    "BR": (-23.55, -46.63),  # Sao Paulo
    "AU": (-33.87, 151.21),  # Sydney
}
"""Reference point (latitude, longitude) of each modelled country."""

COUNTRY_WEIGHTS: Final[Mapping[str, float]] = {
    "DE": 0.25,
    "US": 0.20,
    "FR": 0.10,
    "NL": 0.09,
    "GB": 0.05,
    "CA": 0.04,
    "SE": 0.04,
    "CH": 0.04,
    "FI": 0.04,
    "PL": 0.03,
    "RU": 0.04,
    "JP": 0.02,
    "SG": 0.02,
    "BR": 0.02,
    "AU": 0.02,
}
"""Share of relays (and of clients) per country, roughly the shape of the
Tor network's relay countries: most in Germany, the US, France and the
Netherlands, a tail elsewhere.  An assumption, not a measurement."""


def _distance_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(h))


def country_latency(src: str, dst: str) -> float:
    """One-way latency in seconds between two countries of ``LOCATIONS``.

    Raises:
        KeyError: a country that is not modelled.
    """
    km = DOMESTIC_KM if src == dst else _distance_km(LOCATIONS[src], LOCATIONS[dst])
    return ACCESS_S + INFLATION * km / LIGHT_KM_PER_S
