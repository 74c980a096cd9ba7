"""Tests for hopchain.weights (Tor's bandwidth weights).

The expected numbers are worked by hand from the formulas of dir-spec
"Computing Bandwidth Weights" (integer arithmetic, units of 1/10000, C's
truncating division).  ``network(g, m, e, d)`` builds one relay per class
with bandwidth one less than the total, because every total starts at 1.
"""

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hopchain.directory import Consensus, Descriptor, RouterStatus
from hopchain.weights import (
    SCALE,
    BandwidthWeights,
    Position,
    compute_weights,
    consensus_weights,
    position_weight,
    totals,
)

FLAGS = {
    "g": frozenset({"Running", "Guard"}),
    "m": frozenset({"Running"}),
    "e": frozenset({"Running", "Exit"}),
    "d": frozenset({"Running", "Guard", "Exit"}),
}


def status(n: int, flags: frozenset[str], bandwidth: int) -> RouterStatus:
    desc = Descriptor(
        nickname=f"w{n}",
        identity=hashlib.blake2b(f"weights {n}".encode(), digest_size=32).digest(),
        onion_key=bytes(32),
        address=f"10.{n % 250}.0.1",
        or_port=9001,
        bandwidth=bandwidth,
        exit_ports=((1, 65535),) if "Exit" in flags else (),
        family=(),
        country="DE",
        published=0.0,
        test_network=False,
    )
    return RouterStatus(desc, flags)


def network(g: int, m: int, e: int, d: int) -> list[RouterStatus]:
    """Relays whose class totals (G, M, E, D) are exactly g, m, e, d."""
    return [
        status(i, FLAGS[cls], total - 1)
        for i, (cls, total) in enumerate(zip("gmed", (g, m, e, d), strict=True))
    ]


def as_tuple(w: BandwidthWeights) -> tuple[int, ...]:
    """(Wgg, Wgd, Wmg, Wme, Wmd, Wee, Wed)."""
    return (w.wgg, w.wgd, w.wmg, w.wme, w.wmd, w.wee, w.wed)


@pytest.mark.parametrize(
    ("gmed", "case", "expected"),
    [
        # Case 1, T = 10000: Wee = 10^4*(E+G+M)/(3E) = 95e6/10500 = 9047,
        # Wmg = 10^4*(2G-E-M)/(3G) = 25e6/12000 = 2083, Wxd = 10^4/3.
        ((4000, 2000, 3500, 500), "1 ", (7917, 3333, 2083, 953, 3333, 9047, 3333)),
        # Case 2a: R+D = 1500 < S = 3000; all of D to the scarcer class.
        ((3000, 5500, 1000, 500), "2a (E scarce)", (SCALE, 0, 0, 0, 0, SCALE, SCALE)),
        ((1000, 5500, 3000, 500), "2a (G scarce)", (SCALE, SCALE, 0, 0, 0, SCALE, 0)),
        # Case 2b1: Wee = 10^4*2000/3000 = 6666, Wed = 10^4*4000/6000 = 6666,
        # Wme = 10^4*1000/3000 = 3333, Wmd = Wgd = 3334/2 = 1667.
        ((3000, 2000, 3000, 2000), "2b1", (SCALE, 1667, 0, 3333, 1667, 6666, 6666)),
        # Case 2b2 (M > G makes Wme < 0 in 2b1): Wed = 10^4*1000/3900 = 2564,
        # Wmd = 10^4*400/3900 = 1025, Wgd = 10^4 - 2564 - 1025 = 6411.
        ((2500, 3200, 3000, 1300), "2b2", (SCALE, 6411, 0, 0, 1025, SCALE, 2564)),
        # Case 2b3 (M just over T/3): Wmd = 10^4*(-2)/4500 = -4 -> 0,
        # Wed = 10^4*1801/4500 = 4002, Wgd = 5998.
        ((2500, 3401, 2800, 1500), "2b3", (SCALE, 5998, 0, 0, 0, SCALE, 4002)),
        # Case 3a, G scarce: 3(G+D) = 6000 < T; Wme = 10^4*(E-M)/(2E) = 2000.
        (
            (1000, 3000, 5000, 1000),
            "3a (G scarce)",
            (SCALE, SCALE, 0, 2000, 0, 8000, 0),
        ),
        # ... and E < M keeps the exit bandwidth in place (Wme = 0).
        ((1000, 4500, 3500, 1000), "3a (G scarce)", (SCALE, SCALE, 0, 0, 0, SCALE, 0)),
        # Case 3a, E scarce: Wmg = 10^4*(G-M)/(2G) = 2000.
        (
            (5000, 3000, 1000, 1000),
            "3a (E scarce)",
            (8000, 0, 2000, 0, 0, SCALE, SCALE),
        ),
        ((3500, 4500, 1000, 1000), "3a (E scarce)", (SCALE, 0, 0, 0, 0, SCALE, SCALE)),
        # Case 3bg: Wgd = 10^4*4000/6000 = 6666, Wee = 10^4*6000/8000 = 7500,
        # Wmd = Wed = 3334/2 = 1667.
        ((2000, 2000, 4000, 2000), "3bg", (SCALE, 6666, 0, 2500, 1667, 7500, 1667)),
        # Case 3be: Wed = 6666, Wgg = 10^4*(G+M)/(2G) = 7500, Wmd = Wgd = 1667.
        ((4000, 2000, 2000, 2000), "3be", (7500, 1667, 2500, 0, 1667, SCALE, 6666)),
        # Every relay guard+exit (a small test network): 2b1 spreads D in thirds.
        ((1, 1, 1, 9997), "2b1", (SCALE, 3333, 0, 0, 3333, SCALE, 3333)),
    ],
)
def test_each_of_tors_cases(
    gmed: tuple[int, int, int, int], case: str, expected: tuple[int, ...]
) -> None:
    weights = compute_weights(network(*gmed))
    assert weights.case.startswith(case)
    assert weights.computed
    assert as_tuple(weights) == expected
    assert (weights.wgm, weights.wmm, weights.wem, weights.weg) == (
        weights.wgg,
        SCALE,
        weights.wee,
        weights.wed,
    )


def test_division_truncates_toward_zero_as_in_c() -> None:
    """Wmd = 10^4*(T-3M)/(3D) = 10^4*(-1)/10200: C gives 0 (case 2b2), a
    flooring division -1 (which would be case 2b3)."""
    weights = compute_weights(network(2501, 4351, 2800, 3400))
    assert weights.case.startswith("2b2")
    # Wed = 10^4*4652/10200 = 4560, Wgd = 10^4 - 4560 - 0.
    assert as_tuple(weights) == (SCALE, 5440, 0, 0, 0, SCALE, 4560)


def test_a_failed_check_gives_tors_uniform_fallback() -> None:
    """M far above T/3 in case 2b: 2b3 cannot balance guards and exits
    (|Wgg*G + Wgd*D - Wee*E - Wed*D| = 6665000 > 10*T/3), so Tor publishes
    no weights and clients weigh every relay by bandwidth alone."""
    weights = compute_weights(network(2000, 4000, 2500, 1500))
    assert not weights.computed
    assert weights.case.startswith("2b3")
    assert set(as_tuple(weights)) == {SCALE}
    exit_only = status(9, FLAGS["e"], 10)
    assert position_weight(exit_only, Position.GUARD, weights) == SCALE


def test_totals_count_running_relays_and_badexit_as_non_exit() -> None:
    relays = [
        status(0, frozenset({"Running", "Guard", "Exit", "BadExit"}), 100),
        status(1, frozenset({"Running", "Exit", "BadExit"}), 20),
        status(2, frozenset({"Guard", "Exit"}), 1000),  # not Running
        status(3, FLAGS["d"], 7),
        status(4, FLAGS["e"], 3),
    ]
    t = totals(relays)
    assert (t.guard, t.middle, t.exit, t.both) == (101, 21, 4, 8)
    assert t.total == 134


def test_position_weight_by_class_and_position() -> None:
    w = compute_weights(network(4000, 2000, 3500, 500))
    guard, middle, exit_, both = (status(i, FLAGS[c], 1) for i, c in enumerate("gmed"))
    bad_exit = status(5, frozenset({"Running", "Exit", "BadExit"}), 1)
    bad_both = status(6, frozenset({"Running", "Guard", "Exit", "BadExit"}), 1)
    table = {
        Position.GUARD: (w.wgg, w.wgm, 0, w.wgd, w.wgm, w.wgg),
        Position.MIDDLE: (w.wmg, w.wmm, w.wme, w.wmd, w.wmm, w.wmg),
        Position.EXIT: (w.weg, w.wem, w.wee, w.wed, w.wem, w.weg),
    }
    for position, expected in table.items():
        got = tuple(
            position_weight(s, position, w)
            for s in (guard, middle, exit_, both, bad_exit, bad_both)
        )
        assert got == expected


def test_compute_weights_takes_a_consensus_and_consensus_weights_caches() -> None:
    relays = tuple(network(4000, 2000, 3500, 500))
    consensus = Consensus(0.0, 1.0, 2.0, relays, frozenset())
    assert compute_weights(consensus) == compute_weights(relays)
    first = consensus_weights(consensus)
    assert first == compute_weights(relays)
    assert consensus_weights(consensus) is first
    other = Consensus(0.0, 1.0, 2.0, tuple(network(1, 1, 1, 9997)), frozenset())
    assert consensus_weights(other).case.startswith("2b1")
    for n in range(6):  # the cache is bounded: old entries are recomputed
        consensus_weights(Consensus(0.0, 1.0, 2.0 + n, relays, frozenset()))
    assert consensus_weights(consensus) == first


bandwidths = st.integers(1, 10**7)


@given(g=bandwidths, m=bandwidths, e=bandwidths, d=bandwidths)
def test_prop_weights_are_in_range_and_sum_per_class(
    g: int, m: int, e: int, d: int
) -> None:
    w = compute_weights(network(g, m, e, d))
    assert all(0 <= x <= SCALE for x in as_tuple(w))
    assert (w.wgm, w.wmm, w.wem, w.weg) == (w.wgg, SCALE, w.wee, w.wed)
    if not w.computed:
        assert set(as_tuple(w)) == {SCALE}
        return
    # Each class's bandwidth is shared out over the positions it may fill
    # (Tor's check allows a rounding margin of 10).
    assert abs(w.wgg + w.wmg - SCALE) <= 10
    assert abs(w.wee + w.wme - SCALE) <= 10
    assert abs(w.wgd + w.wmd + w.wed - SCALE) <= 10


@given(g=bandwidths, m=bandwidths, e=bandwidths, d=bandwidths)
def test_prop_balanced_cases_equalise_the_positions(
    g: int, m: int, e: int, d: int
) -> None:
    """Where the case balances (1, 2b1, 3b), guard, middle and exit
    bandwidth are equal within Tor's margin of 10*T/3 (scaled); where the
    positions cannot be equalised (2a, 3a), the scarce classes stay whole."""
    w = compute_weights(network(g, m, e, d))
    guard = w.wgg * g + w.wgd * d
    middle = m * SCALE + w.wmd * d + w.wme * e + w.wmg * g
    exit_ = w.wee * e + w.wed * d
    margin = 10 * (g + m + e + d) // 3
    if w.case.startswith(("1 ", "2b1", "3b")):
        assert w.computed
        assert abs(guard - exit_) <= margin
        assert abs(guard - middle) <= margin
    elif w.case.startswith("2a"):
        assert (w.wgg, w.wee, w.wmg, w.wme, w.wmd) == (SCALE, SCALE, 0, 0, 0)
        assert w.wgd + w.wed == SCALE
    elif w.case.startswith("3a (G"):
        assert (w.wgg, w.wgd) == (SCALE, SCALE)
    elif w.case.startswith("3a (E"):
        assert (w.wee, w.wed) == (SCALE, SCALE)
    elif w.computed:  # 2b2 and 2b3 balance guards and exits only
        assert w.case.startswith(("2b2", "2b3"))
        assert abs(guard - exit_) <= margin


@given(g=bandwidths, m=bandwidths, e=bandwidths, d=bandwidths)
def test_prop_case_matches_scarcity(g: int, m: int, e: int, d: int) -> None:
    w = compute_weights(network(g, m, e, d))
    t = g + m + e + d
    if 3 * e >= t and 3 * g >= t:
        assert w.case.startswith("1 ")
    elif 3 * e < t and 3 * g < t:
        assert w.case.startswith("2")
    else:
        assert w.case.startswith("3")
