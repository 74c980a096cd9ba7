"""Tor's bandwidth weights: how much of each relay class to use in each position.

Path selection draws each hop with probability proportional to the relay's
bandwidth times a *position weight* that depends on the relay's class:

* G, guard-only: Guard flag, not a usable exit;
* E, exit-only: Exit flag and not BadExit, no Guard flag;
* D, guard+exit: both;
* M, neither (a BadExit relay counts as a non-exit, as in Tor).

The weights balance the network: guard and exit bandwidth is scarce, so it is
kept for those positions and only the surplus is lent to the middle
position.  They are computed exactly as Tor's directory authorities do
(dir-spec, "Computing Bandwidth Weights", section 3.8.3; tor's
``src/feature/dirauth/dirvote.c``, ``networkstatus_compute_bw_weights_v10``
with consensus method >= 26): integer arithmetic in units of 1/10000 with
C's truncating division, the totals G, M, E and D start at 1, the cases 1,
2a, 2b1/2b2/2b3, 3a and 3b, and ``networkstatus_check_weights`` with a
margin of 10.  When a case fails its check, Tor publishes no weights and
clients fall back to weight 1 everywhere (``compute_weighted_bandwidths`` in
``src/feature/nodelist/node_select.c``); ``BandwidthWeights.computed`` is
then False.  How a client applies them per position (guard: Wgg, Wgm, 0 for
exit-only relays, Wgd; middle: Wmg, Wmm, Wme, Wmd; exit: Weg, Wem, Wee, Wed)
is also taken from ``compute_weighted_bandwidths``.

**Computed by clients, not signed into the consensus.**  Tor's authorities
compute the weights and sign them into the consensus.  Here every client
computes them from the consensus it verified: the inputs (each relay's listed
bandwidth and flags) are already signed by the authorities, the arithmetic is
integer and deterministic, so every client of one consensus gets the same
weights, the wire format stays as it is, and weights can never disagree with
the bandwidths they were computed from.  What this gives up is Tor's way of
changing the algorithm by a consensus method: here that takes a client
release.  Only Running relays count, since Tor's consensus lists no others.

The directory-request weights (Wgb, Wmb, Web, Wdb, Wbg, Wbm, Wbe, Wbd) are
left out: hopchain clients fetch the consensus from the authorities, not
from bandwidth-weighted directory caches.
"""

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from hopchain.directory import Consensus, RouterStatus

__all__ = [
    "SCALE",
    "BandwidthTotals",
    "BandwidthWeights",
    "Position",
    "compute_weights",
    "consensus_weights",
    "position_weight",
    "totals",
]

SCALE: Final = 10_000
"""Tor's ``bwweightscale`` default: weights are in units of 1/10000."""

_MARGIN: Final = 10
_CACHE_SIZE: Final = 4


class Position(enum.Enum):
    """A hop's position in a circuit."""

    GUARD = "guard"
    MIDDLE = "middle"
    EXIT = "exit"


@dataclass(frozen=True, slots=True)
class BandwidthTotals:
    """Tor's G, M, E, D: the Running relays' bandwidth per class, each
    starting at 1 (consensus method 26)."""

    guard: int
    middle: int
    exit: int
    both: int

    @property
    def total(self) -> int:
        """T = G + M + E + D."""
        return self.guard + self.middle + self.exit + self.both


@dataclass(frozen=True, slots=True)
class BandwidthWeights:
    """Tor's position weights, in units of 1/``SCALE``.

    The first letter is the position (g, m, e), the second the relay class
    (g guard-only, m neither, e exit-only, d guard+exit): ``wmd`` is the
    weight of a guard+exit relay in the middle position.  ``case`` names
    the case of dir-spec 3.8.3 that produced them (Tor's ``casename``).
    ``computed`` is False when Tor would publish no weights (a case failed
    its check): every weight is then ``SCALE``, and exit-only relays are
    not zeroed in the guard position either.
    """

    wgg: int
    wgm: int
    wgd: int
    wmg: int
    wmm: int
    wme: int
    wmd: int
    weg: int
    wem: int
    wee: int
    wed: int
    case: str
    computed: bool = True

    @classmethod
    def uniform(cls, case: str) -> "BandwidthWeights":
        """Weight 1 everywhere: Tor's fallback when no weights are published."""
        s = SCALE
        return cls(s, s, s, s, s, s, s, s, s, s, s, case, computed=False)


def _class_of(status: RouterStatus) -> tuple[bool, bool]:
    """(is guard, is exit) as Tor counts them: a BadExit is no exit."""
    flags = status.flags
    return "Guard" in flags, "Exit" in flags and "BadExit" not in flags


def totals(relays: Iterable[RouterStatus]) -> BandwidthTotals:
    """G, M, E, D over the Running relays, from their listed bandwidth."""
    g = m = e = d = 1
    for status in relays:
        if "Running" not in status.flags:
            continue
        bandwidth = max(0, status.descriptor.bandwidth)
        is_guard, is_exit = _class_of(status)
        if is_guard and is_exit:
            d += bandwidth
        elif is_exit:
            e += bandwidth
        elif is_guard:
            g += bandwidth
        else:
            m += bandwidth
    return BandwidthTotals(g, m, e, d)


def _div(a: int, b: int) -> int:
    """C's integer division, truncating toward zero (Python's // floors)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def _close(a: int, b: int, margin: int) -> bool:
    return abs(a - b) <= margin


def _check(w: dict[str, int], t: BandwidthTotals, *, balance_mid: bool = True) -> bool:
    """``networkstatus_check_weights`` with margin 10 and balancing.

    With ``balance_mid`` False an error in the guard = middle balance is
    tolerated (Tor accepts ``BW_WEIGHTS_BALANCE_MID_ERROR`` in case 2b).
    """
    g, m, e, d = t.guard, t.middle, t.exit, t.both
    if not (
        _close(w["wed"] + w["wmd"] + w["wgd"], SCALE, _MARGIN)
        and _close(w["wmg"] + w["wgg"], SCALE, _MARGIN)
        and _close(w["wme"] + w["wee"], SCALE, _MARGIN)
        and all(0 <= w[k] <= SCALE for k in w)
    ):
        return False
    guard_bw = w["wgg"] * g + w["wgd"] * d
    margin = _MARGIN * t.total // 3
    if not _close(guard_bw, w["wee"] * e + w["wed"] * d, margin):
        return False
    middle_bw = m * SCALE + w["wmd"] * d + w["wme"] * e + w["wmg"] * g
    return not balance_mid or _close(guard_bw, middle_bw, margin)


def _case_1(t: BandwidthTotals) -> dict[str, int]:
    g, m, e = t.guard, t.middle, t.exit
    wee = _div(SCALE * (e + g + m), 3 * e)
    wmg = _div(SCALE * (2 * g - e - m), 3 * g)
    third = SCALE // 3
    return {
        "wgd": third,
        "wed": third,
        "wmd": third,
        "wee": wee,
        "wme": SCALE - wee,
        "wmg": wmg,
        "wgg": SCALE - wmg,
    }


def _case_2(t: BandwidthTotals) -> tuple[str, dict[str, int] | None]:
    g, m, e, d = t.guard, t.middle, t.exit, t.both
    if min(e, g) + d < max(e, g):
        w = {"wgg": SCALE, "wee": SCALE, "wmg": 0, "wme": 0, "wmd": 0}
        if e < g:
            return "2a (E scarce)", w | {"wed": SCALE, "wgd": 0}
        return "2a (G scarce)", w | {"wed": 0, "wgd": SCALE}
    wed = _div(SCALE * (d - 2 * e + 4 * g - 2 * m), 3 * d)
    w = {
        "wee": _div(SCALE * (e - g + m), e),
        "wed": wed,
        "wme": _div(SCALE * (g - m), e),
        "wmg": 0,
        "wgg": SCALE,
        "wmd": _div(SCALE - wed, 2),
        "wgd": _div(SCALE - wed, 2),
    }
    if _check(w, t):
        return "2b1 (Wgg=1, Wmd=Wgd)", w
    case = "2b2 (Wgg=1, Wee=1)"
    wed = _div(SCALE * (d - 2 * e + g + m), 3 * d)
    wmd = _div(SCALE * (d - 2 * m + g + e), 3 * d)
    if wmd < 0:
        case, wmd = "2b3 (Wmd=0)", 0
    w = {
        "wgg": SCALE,
        "wee": SCALE,
        "wed": wed,
        "wmd": wmd,
        "wme": 0,
        "wmg": 0,
        "wgd": SCALE - wed - wmd,
    }
    return case, w if _check(w, t, balance_mid=False) else None


def _case_3(t: BandwidthTotals) -> tuple[str, dict[str, int] | None]:
    g, m, e, d = t.guard, t.middle, t.exit, t.both
    if 3 * (min(e, g) + d) < t.total:
        if g < e:
            wme = 0 if e < m else _div(SCALE * (e - m), 2 * e)
            w = {"wgg": SCALE, "wgd": SCALE, "wmd": 0, "wed": 0, "wmg": 0}
            return "3a (G scarce)", w | {"wme": wme, "wee": SCALE - wme}
        wmg = 0 if g < m else _div(SCALE * (g - m), 2 * g)
        w = {"wee": SCALE, "wed": SCALE, "wmd": 0, "wgd": 0, "wme": 0}
        return "3a (E scarce)", w | {"wmg": wmg, "wgg": SCALE - wmg}
    if g < e:
        wgd = _div(SCALE * (d - 2 * g + e + m), 3 * d)
        wee = _div(SCALE * (e + m), 2 * e)
        case = "3bg (G scarce, Wgg=1, Wmd=Wed)"
        w = {"wgg": SCALE, "wgd": wgd, "wmg": 0, "wee": wee, "wme": SCALE - wee}
        w |= {"wmd": _div(SCALE - wgd, 2), "wed": _div(SCALE - wgd, 2)}
    else:
        wed = _div(SCALE * (d - 2 * e + g + m), 3 * d)
        wgg = _div(SCALE * (g + m), 2 * g)
        case = "3be (E scarce, Wee=1, Wmd=Wgd)"
        w = {"wee": SCALE, "wed": wed, "wme": 0, "wgg": wgg, "wmg": SCALE - wgg}
        w |= {"wmd": _div(SCALE - wed, 2), "wgd": _div(SCALE - wed, 2)}
    return case, w if _check(w, t) else None


def compute_weights(relays: Consensus | Iterable[RouterStatus]) -> BandwidthWeights:
    """Tor's bandwidth weights for a consensus (or its relays).

    Follows ``networkstatus_compute_bw_weights_v10``: case 1 when neither
    exits nor guards are scarce (E >= T/3 and G >= T/3), case 2 when both
    are, case 3 when one is.  Wgm = Wgg, Wmm = 1, Wem = Wee, Weg = Wed, as
    Tor publishes them.
    """
    t = totals(relays.relays if isinstance(relays, Consensus) else relays)
    w: dict[str, int] | None
    if 3 * t.exit >= t.total and 3 * t.guard >= t.total:
        case, w = "1 (Wgd=Wmd=Wed)", _case_1(t)
        w = w if _check(w, t) else None
    elif 3 * t.exit < t.total and 3 * t.guard < t.total:
        case, w = _case_2(t)
    else:
        case, w = _case_3(t)
    if w is None:
        return BandwidthWeights.uniform(f"{case} failed its check: uniform")
    return BandwidthWeights(
        wgg=w["wgg"],
        wgm=w["wgg"],
        wgd=w["wgd"],
        wmg=w["wmg"],
        wmm=SCALE,
        wme=w["wme"],
        wmd=w["wmd"],
        weg=w["wed"],
        wem=w["wee"],
        wee=w["wee"],
        wed=w["wed"],
        case=case,
    )


def position_weight(
    status: RouterStatus, position: Position, weights: BandwidthWeights
) -> int:
    """The weight (1/``SCALE`` units) of ``status`` in ``position``.

    The relay's selection weight is its bandwidth times this.  As in Tor's
    ``compute_weighted_bandwidths``, an exit-only relay never serves as a
    guard (weight 0) unless no weights were computed.
    """
    is_guard, is_exit = _class_of(status)
    if position is Position.GUARD:
        if is_exit and not is_guard:
            return 0 if weights.computed else SCALE
        return weights.wgd if is_exit else weights.wgg if is_guard else weights.wgm
    if position is Position.MIDDLE:
        if is_exit:
            return weights.wmd if is_guard else weights.wme
        return weights.wmg if is_guard else weights.wmm
    if is_exit:
        return weights.wed if is_guard else weights.wee
    return weights.weg if is_guard else weights.wem


_cache: dict[int, tuple[Consensus, BandwidthWeights]] = {}


def consensus_weights(consensus: Consensus) -> BandwidthWeights:
    """``compute_weights(consensus)``, computed once per consensus object.

    A consensus is immutable, but hashing one walks every relay, so the
    cache is keyed by identity; it keeps the consensus itself alive so the
    id is not reused, and holds the last few consensuses only.  A pure
    memo: the result is what ``compute_weights`` returns.
    """
    entry = _cache.get(id(consensus))
    if entry is not None and entry[0] is consensus:
        return entry[1]
    weights = compute_weights(consensus)
    if len(_cache) >= _CACHE_SIZE:
        del _cache[next(iter(_cache))]
    _cache[id(consensus)] = (consensus, weights)
    return weights
