"""Unit and property tests for hopchain.path (path selection)."""

import dataclasses
import hashlib
import ipaddress
import math
import random
from collections import Counter
from collections.abc import Sequence
from statistics import NormalDist

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hopchain.directory import Consensus, Descriptor, RouterStatus
from hopchain.errors import PathSelectionError
from hopchain.exitpolicy import normalise
from hopchain.path import PathConstraints, exit_choice, select_path
from hopchain.pathpool import Pool
from hopchain.weights import (
    BandwidthWeights,
    Position,
    compute_weights,
    position_weight,
)

ALL_PORTS = ((1, 65535),)
GUARD = frozenset({"Running", "Guard", "Fast", "Stable", "Valid"})
MIDDLE = frozenset({"Running", "Fast", "Valid"})
EXIT = frozenset({"Running", "Exit", "Fast", "Valid"})


def ident(n: int) -> bytes:
    return hashlib.blake2b(f"path relay {n}".encode(), digest_size=32).digest()


def relay(
    n: int,
    flags: frozenset[str],
    *,
    address: str | None = None,
    exit_ports: tuple[tuple[int, int], ...] = (),
    family: tuple[int, ...] = (),
    bandwidth: int = 100,
) -> RouterStatus:
    """Relay number ``n``; by default alone in its own /16."""
    desc = Descriptor(
        nickname=f"relay{n}",
        identity=ident(n),
        onion_key=bytes(32),
        address=address or f"{10 + n // 200}.{n % 200}.0.1",
        or_port=9001,
        bandwidth=bandwidth,
        exit_ports=exit_ports if exit_ports or "Exit" not in flags else ALL_PORTS,
        family=tuple(ident(f) for f in family),
        country="",
        published=0.0,
        test_network=False,
    )
    return RouterStatus(desc, flags)


def network(relays: list[RouterStatus]) -> Consensus:
    return Consensus(0.0, 1.0, 2.0, tuple(relays), frozenset())


def subnet(address: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The /16 (IPv4, also when IPv4-mapped) or /32 (IPv6) of ``address``."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ipaddress.ip_network(f"{ip}/{16 if ip.version == 4 else 32}", strict=False)


def check_path(
    path: list[Descriptor], consensus: Consensus, constraints: PathConstraints
) -> None:
    """Every rule a selected path must satisfy."""
    by_id = {r.descriptor.identity: r for r in consensus.relays}
    assert len(path) == constraints.hops
    assert len({d.identity for d in path}) == len(path)
    assert all("Running" in by_id[d.identity].flags for d in path)
    exit_status = by_id[path[-1].identity]
    assert "Exit" in exit_status.flags
    assert path[-1].allows_exit_to(constraints.port)
    for i, a in enumerate(path):
        for b in path[i + 1 :]:
            assert b.identity not in a.family
            assert a.identity not in b.family
            if not constraints.same_subnet_ok:
                assert subnet(a.address) != subnet(b.address)


BIG = network(
    [relay(n, GUARD) for n in range(10)]
    + [relay(n, MIDDLE) for n in range(10, 20)]
    + [relay(n, EXIT, exit_ports=((80, 443),)) for n in range(20, 26)]
    + [relay(n, EXIT, exit_ports=((22, 22),)) for n in range(26, 28)]
)


@given(
    seed=st.integers(0, 2**32),
    hops=st.integers(1, 8),
    port=st.sampled_from([22, 80, 443]),
)
def test_prop_select_path_obeys_the_rules(seed: int, hops: int, port: int) -> None:
    constraints = PathConstraints(hops=hops, port=port)
    path = select_path(BIG, constraints, random.Random(seed))
    check_path(path, BIG, constraints)
    if hops > 1:
        assert "Guard" in next(
            r.flags for r in BIG.relays if r.descriptor.identity == path[0].identity
        )


@st.composite
def crowded_networks(draw: st.DrawFn) -> Consensus:
    """Small networks where subnets and families often collide."""
    size = draw(st.integers(1, 12))
    relays = []
    for n in range(size):
        flags = draw(st.frozensets(st.sampled_from(["Running", "Guard", "Exit"])))
        relays.append(
            relay(
                n,
                flags,
                address=f"10.{draw(st.integers(0, 4))}.{n}.1",
                exit_ports=draw(
                    st.sampled_from([ALL_PORTS, ((80, 80),), ((443, 443),)])
                ),
                family=tuple(draw(st.lists(st.integers(0, size - 1), max_size=2))),
                bandwidth=draw(st.integers(0, 1000)),
            )
        )
    return network(relays)


@given(
    consensus=crowded_networks(),
    seed=st.integers(0, 2**32),
    hops=st.integers(1, 4),
    same_subnet_ok=st.booleans(),
)
def test_prop_select_path_succeeds_correctly_or_refuses(
    consensus: Consensus, seed: int, hops: int, same_subnet_ok: bool
) -> None:
    constraints = PathConstraints(hops=hops, port=80, same_subnet_ok=same_subnet_ok)
    try:
        path = select_path(consensus, constraints, random.Random(seed))
    except PathSelectionError:
        return
    check_path(path, consensus, constraints)


def test_select_path_is_deterministic_for_a_seed() -> None:
    constraints = PathConstraints(hops=3, port=443)
    paths = {
        tuple(d.identity for d in select_path(BIG, constraints, random.Random(7)))
        for _ in range(5)
    }
    assert len(paths) == 1


def test_select_path_exit_must_accept_the_port() -> None:
    for seed in range(50):
        path = select_path(BIG, PathConstraints(port=22), random.Random(seed))
        assert path[-1].identity in {ident(26), ident(27)}


@pytest.mark.parametrize("port", [21, 444, 65535])
def test_select_path_no_exit_for_the_port(port: int) -> None:
    with pytest.raises(PathSelectionError, match=f"port {port}"):
        select_path(BIG, PathConstraints(port=port), random.Random(0))


def test_select_path_without_a_port_takes_any_exit() -> None:
    """A RESOLVE has no port: every exit qualifies, whatever its ports."""
    exits = {
        select_path(BIG, PathConstraints(port=None), random.Random(seed))[-1].identity
        for seed in range(200)
    }
    assert {ident(26), ident(27)} & exits
    assert exits - {ident(26), ident(27)}
    no_exit = network([relay(0, GUARD), relay(1, MIDDLE)])
    with pytest.raises(PathSelectionError, match="accepts any port"):
        select_path(no_exit, PathConstraints(port=None), random.Random(0))


def test_select_path_ignores_exits_that_are_not_running() -> None:
    consensus = network(
        [relay(0, GUARD), relay(1, MIDDLE), relay(2, frozenset({"Exit"}))]
    )
    with pytest.raises(PathSelectionError, match="no running exit"):
        select_path(consensus, PathConstraints(), random.Random(0))


def test_select_path_excludes_the_family() -> None:
    # Guard 0 declares exit 2 as family; guard 1 does not.
    consensus = network(
        [
            relay(0, GUARD, family=(2,)),
            relay(1, GUARD),
            relay(2, EXIT),
            relay(3, MIDDLE),
        ]
    )
    for seed in range(40):
        path = select_path(consensus, PathConstraints(hops=2), random.Random(seed))
        assert [d.identity for d in path] == [ident(1), ident(2)]


def test_select_path_family_declared_by_one_side_is_enough() -> None:
    consensus = network([relay(0, GUARD), relay(2, EXIT, family=(0,))])
    with pytest.raises(PathSelectionError, match="guard"):
        select_path(consensus, PathConstraints(hops=2), random.Random(0))


def test_select_path_one_relay_per_ipv4_16() -> None:
    consensus = network(
        [
            relay(0, GUARD, address="192.0.2.1"),
            relay(1, GUARD, address="192.0.200.9"),
            relay(2, EXIT, address="192.0.3.1"),
        ]
    )
    with pytest.raises(PathSelectionError):
        select_path(consensus, PathConstraints(hops=2), random.Random(0))
    ok = select_path(
        consensus, PathConstraints(hops=2, same_subnet_ok=True), random.Random(0)
    )
    assert ok[-1].identity == ident(2)


def test_select_path_one_relay_per_ipv6_32() -> None:
    consensus = network(
        [
            relay(0, GUARD, address="2001:db8:1::1"),
            relay(1, GUARD, address="2001:db9::1"),
            relay(2, EXIT, address="2001:db8:ffff::2"),
        ]
    )
    for seed in range(20):
        path = select_path(consensus, PathConstraints(hops=2), random.Random(seed))
        assert path[0].identity == ident(1)


def test_select_path_loopback_test_network_needs_same_subnet_ok() -> None:
    consensus = network(
        [relay(n, GUARD | EXIT, address=f"127.0.0.{n + 2}") for n in range(3)]
    )
    with pytest.raises(PathSelectionError):
        select_path(consensus, PathConstraints(hops=3), random.Random(0))
    path = select_path(
        consensus, PathConstraints(hops=3, same_subnet_ok=True), random.Random(0)
    )
    assert len({d.identity for d in path}) == 3


def test_select_path_guard_falls_back_to_running_relays() -> None:
    consensus = network([relay(0, MIDDLE), relay(1, EXIT)])
    path = select_path(consensus, PathConstraints(hops=2), random.Random(0))
    assert [d.identity for d in path] == [ident(0), ident(1)]


def test_select_path_not_enough_relays() -> None:
    consensus = network([relay(0, GUARD), relay(1, MIDDLE), relay(2, EXIT)])
    assert len(select_path(consensus, PathConstraints(hops=3), random.Random(0))) == 3
    with pytest.raises(PathSelectionError, match="4 hops"):
        select_path(consensus, PathConstraints(hops=4), random.Random(0))


def test_select_path_single_hop_is_an_exit() -> None:
    path = select_path(BIG, PathConstraints(hops=1, port=80), random.Random(3))
    assert len(path) == 1
    assert path[0].allows_exit_to(80)


@pytest.mark.parametrize("hops", [0, 9, -1])
def test_select_path_refuses_bad_hop_counts(hops: int) -> None:
    with pytest.raises(ValueError, match="hops"):
        select_path(BIG, PathConstraints(hops=hops), random.Random(0))


def test_select_path_is_weighted_by_bandwidth() -> None:
    consensus = network(
        [
            relay(0, GUARD),
            relay(1, EXIT, bandwidth=10_000),
            relay(2, EXIT, bandwidth=100),
        ]
    )
    rng = random.Random(1234)
    counts = Counter(
        select_path(consensus, PathConstraints(hops=2), rng)[-1].identity
        for _ in range(400)
    )
    assert counts[ident(1)] > 10 * counts[ident(2)]
    assert counts[ident(2)] > 0


def test_select_path_ipv4_mapped_addresses_count_as_their_ipv4_16() -> None:
    """A relay publishing ``::ffff:a.b.c.d`` is in a.b's /16, not in ``::/32``.

    Otherwise one operator could put several relays of one /16 on a path by
    publishing IPv4-mapped addresses (the exit policy unwraps them already).
    """
    same = network(
        [
            relay(0, GUARD, address="10.1.0.1"),
            relay(1, EXIT, address="::ffff:10.1.0.2"),
        ]
    )
    with pytest.raises(PathSelectionError):
        select_path(same, PathConstraints(hops=2), random.Random(0))
    distinct = network(
        [
            relay(0, GUARD, address="::ffff:10.1.0.1"),
            relay(1, EXIT, address="::ffff:10.2.0.1"),
        ]
    )
    path = select_path(distinct, PathConstraints(hops=2), random.Random(0))
    assert [d.identity for d in path] == [ident(0), ident(1)]


COUNTRIES = ["DE", "NL", "US", "SE"]


@st.composite
def networks_with_countries(draw: st.DrawFn) -> Consensus:
    """Like ``crowded_networks``, with each relay in one of four countries."""
    base = draw(crowded_networks())
    relays = [
        RouterStatus(
            dataclasses.replace(r.descriptor, country=draw(st.sampled_from(COUNTRIES))),
            r.flags,
        )
        for r in base.relays
    ]
    return network(relays)


@given(
    consensus=networks_with_countries(),
    seed=st.integers(0, 2**32),
    hops=st.integers(1, 4),
    wanted=st.frozensets(st.sampled_from(COUNTRIES), max_size=2),
    excluded=st.frozensets(st.sampled_from(COUNTRIES), max_size=2),
    anywhere=st.frozensets(st.sampled_from(COUNTRIES), max_size=1),
    same_subnet_ok=st.booleans(),
)
def test_prop_select_path_meets_the_country_rules(
    consensus: Consensus,
    seed: int,
    hops: int,
    wanted: frozenset[str],
    excluded: frozenset[str],
    anywhere: frozenset[str],
    same_subnet_ok: bool,
) -> None:
    constraints = PathConstraints(
        hops=hops,
        port=443,
        same_subnet_ok=same_subnet_ok,
        exit_countries=wanted,
        exclude_exit_countries=excluded,
        exclude_countries_anywhere=anywhere,
    )
    try:
        path = select_path(consensus, constraints, random.Random(seed))
    except PathSelectionError as exc:
        if "no running exit" in str(exc):
            assert not any(
                "Running" in r.flags
                and "Exit" in r.flags
                and r.descriptor.allows_exit_to(443)
                and constraints.allows_exit_country(r.descriptor.country)
                for r in consensus.relays
            )
        return
    check_path(path, consensus, constraints)
    assert constraints.allows_exit_country(path[-1].country)
    assert all(d.country not in anywhere for d in path)


@given(
    consensus=networks_with_countries(),
    port=st.sampled_from([None, 80, 443]),
    wanted=st.frozensets(st.sampled_from(COUNTRIES), max_size=2),
    excluded=st.frozensets(st.sampled_from(COUNTRIES), max_size=2),
    anywhere=st.frozensets(st.sampled_from(COUNTRIES), max_size=1),
)
def test_prop_exit_choice_counts_the_exit_weight_directly(
    consensus: Consensus,
    port: int | None,
    wanted: frozenset[str],
    excluded: frozenset[str],
    anywhere: frozenset[str],
) -> None:
    constraints = PathConstraints(
        port=port,
        exit_countries=wanted,
        exclude_exit_countries=excluded,
        exclude_countries_anywhere=anywhere,
    )
    weights = compute_weights(consensus)
    exits = [
        (
            r.descriptor,
            max(1, r.descriptor.bandwidth) * position_weight(r, Position.EXIT, weights),
        )
        for r in consensus.relays
        if "Running" in r.flags and _ref_usable_exit(r, port)
    ]
    chosen = [(d, w) for d, w in exits if constraints.allows_exit_country(d.country)]
    total = sum(w for _, w in exits)
    choice = exit_choice(consensus, constraints)
    assert choice.matching == tuple(d for d, _ in chosen)
    assert choice.running_exits == len(exits)
    assert choice.bandwidth_share == pytest.approx(
        sum(w for _, w in chosen) / total if total else 0.0
    )


# The statistical test's network: disjoint classes with distinct bandwidths,
# each relay in its own /16 and no family, so every position's distribution
# is exactly computable.  Class totals G=4000, M=2000, E=3500, D=500 (each
# starts at 1): Tor's case 1, where every position weight is above 0.
STAT_NET = network(
    [relay(n, GUARD, bandwidth=bw) for n, bw in enumerate((1500, 1200, 800, 499))]
    + [relay(10 + n, MIDDLE, bandwidth=bw) for n, bw in enumerate((900, 600, 300, 199))]
    + [relay(20 + n, EXIT, bandwidth=bw) for n, bw in enumerate((2000, 1000, 499))]
    + [relay(30 + n, GUARD | EXIT, bandwidth=bw) for n, bw in enumerate((300, 199))]
)


def expected_position_probabilities(
    consensus: Consensus,
) -> dict[Position, dict[bytes, float]]:
    """Each relay's exact probability per position for 3-hop paths: the exit
    drawn by weight among the exits, the guard among the Guard relays other
    than the exit, the middle among the remaining relays (enumerated)."""
    weights = compute_weights(consensus)
    relays = consensus.relays

    def weight(r: RouterStatus, position: Position) -> int:
        return r.descriptor.bandwidth * position_weight(r, position, weights)

    def draw(
        pool: list[RouterStatus], position: Position
    ) -> list[tuple[RouterStatus, float]]:
        total = sum(weight(r, position) for r in pool)
        return [(r, weight(r, position) / total) for r in pool]

    probs: dict[Position, dict[bytes, float]] = {p: {} for p in Position}

    def add(position: Position, r: RouterStatus, p: float) -> None:
        identity = r.descriptor.identity
        probs[position][identity] = probs[position].get(identity, 0.0) + p

    exits = [r for r in relays if "Exit" in r.flags]
    for x, px in draw(exits, Position.EXIT):
        add(Position.EXIT, x, px)
        guards = [r for r in relays if "Guard" in r.flags and r is not x]
        for g, pg in draw(guards, Position.GUARD):
            add(Position.GUARD, g, px * pg)
            middles = [r for r in relays if r is not x and r is not g]
            for m, pm in draw(middles, Position.MIDDLE):
                add(Position.MIDDLE, m, px * pg * pm)
    return probs


def chi_square_critical(df: int, p: float = 0.001) -> float:
    """The chi-square value exceeded with probability ``p`` (Wilson-Hilferty
    approximation: within 1.5% of the exact value for df >= 4)."""
    z = NormalDist().inv_cdf(1 - p)
    h = 2 / (9 * df)
    return float(df * (1 - h + z * math.sqrt(h)) ** 3)


def test_position_frequencies_match_the_weighted_bandwidth_shares() -> None:
    """Over 100,000 paths (seed 20261129), each relay's count in each position
    fits its exact probability from bandwidth x Tor's position weight.

    Chi-square goodness of fit per position, df = the number of relays
    that can fill the position - 1; the threshold is the critical value at
    p = 0.001 by the Wilson-Hilferty approximation (scipy is not a
    dependency), slightly above the exact values: guard df 5 -> 20.75
    (exact 20.52), middle df 12 -> 33.07 (32.91), exit df 4 -> 18.72
    (18.47).  Seen: 1.8, 7.9 and 3.2.  Weighing by raw bandwidth alone, as
    before the position weights, gives about 6,000, 110,000 and 10,600.
    """
    n = 100_000
    rng = random.Random(20261129)
    constraints = PathConstraints(hops=3, port=443)
    counts: dict[Position, Counter[bytes]] = {p: Counter() for p in Position}
    for _ in range(n):
        guard, middle, exit_ = select_path(STAT_NET, constraints, rng)
        counts[Position.GUARD][guard.identity] += 1
        counts[Position.MIDDLE][middle.identity] += 1
        counts[Position.EXIT][exit_.identity] += 1
    for position, probs in expected_position_probabilities(STAT_NET).items():
        assert set(counts[position]) <= set(probs)
        statistic = sum(
            (counts[position][identity] - n * p) ** 2 / (n * p)
            for identity, p in probs.items()
        )
        critical = chi_square_critical(len(probs) - 1)
        assert statistic < critical, (position, statistic, critical)


# The direct implementation of the rules (filter each pool, then
# rng.choices), kept to check that the precomputed pools of
# hopchain.pathpool choose exactly the same paths.


def _ref_subnet(address: str) -> str:
    ip = normalise(address)
    prefix = 16 if ip.version == 4 else 32
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def _ref_conflicts(a: Descriptor, b: Descriptor, same_subnet_ok: bool) -> bool:
    if a.identity == b.identity:
        return True
    if b.identity in a.family or a.identity in b.family:
        return True
    return not same_subnet_ok and _ref_subnet(a.address) == _ref_subnet(b.address)


def _ref_usable_exit(status: RouterStatus, port: int | None) -> bool:
    """Exit flag, not BadExit, and the policy accepts ``port`` (``None``:
    any exit will do)."""
    if "Exit" not in status.flags or "BadExit" in status.flags:
        return False
    return port is None or status.descriptor.allows_exit_to(port)


def _ref_weighted(
    candidates: Sequence[RouterStatus],
    position: Position,
    weights: BandwidthWeights,
    rng: random.Random,
) -> RouterStatus:
    scaled = [
        max(1, r.descriptor.bandwidth) * position_weight(r, position, weights)
        for r in candidates
    ]
    if not any(scaled):
        return rng.choice(candidates)
    return rng.choices(candidates, weights=scaled, k=1)[0]


def reference_select_path(
    consensus: Consensus, constraints: PathConstraints, rng: random.Random
) -> list[Descriptor]:
    """select_path the direct way: filter every pool, then rng.choices.

    Raises:
        PathSelectionError: no path satisfies the constraints; the message
            says which position could not be filled.
    """
    if not 1 <= constraints.hops <= 8:
        raise ValueError(f"hops must be 1..8, not {constraints.hops}")
    running = [
        r
        for r in consensus.relays
        if "Running" in r.flags
        and r.descriptor.country.upper() not in constraints.exclude_countries_anywhere
    ]
    port = constraints.port
    exits = [
        r
        for r in running
        if _ref_usable_exit(r, port)
        and constraints.allows_exit_country(r.descriptor.country)
        and r.descriptor.identity not in constraints.avoid_exits
    ]
    if not exits:
        wanted = "any port" if port is None else f"port {port}"
        where = ""
        if constraints.exit_countries:
            where = " in " + ",".join(sorted(constraints.exit_countries))
        if constraints.exclude_exit_countries:
            where += " outside " + ",".join(sorted(constraints.exclude_exit_countries))
        raise PathSelectionError(
            f"no running exit{where} accepts {wanted} ({len(running)} running relays)"
        )
    weights = compute_weights(consensus)
    chosen = [_ref_weighted(exits, Position.EXIT, weights, rng).descriptor]

    def free(pool: list[RouterStatus]) -> list[RouterStatus]:
        return [
            r
            for r in pool
            if not any(
                _ref_conflicts(r.descriptor, c, constraints.same_subnet_ok)
                for c in chosen
            )
        ]

    if constraints.hops > 1:
        guards = [r for r in running if "Guard" in r.flags] or running
        pool = free(guards)
        if not pool:
            raise PathSelectionError("no guard is compatible with the chosen exit")
        by_identity = {r.descriptor.identity: r for r in pool}
        kept = next(
            (by_identity[i] for i in constraints.guards if i in by_identity), None
        )
        fresh = [
            r for r in pool if r.descriptor.identity not in constraints.avoid_guards
        ]
        guard = kept or _ref_weighted(fresh or pool, Position.GUARD, weights, rng)
        chosen.insert(0, guard.descriptor)
        for _ in range(constraints.hops - 2):
            pool = free(running)
            if not pool:
                raise PathSelectionError(
                    f"not enough compatible relays for {constraints.hops} hops"
                )
            middle = _ref_weighted(pool, Position.MIDDLE, weights, rng)
            chosen.insert(-1, middle.descriptor)
    return chosen


@given(
    consensus=networks_with_countries(),
    seed=st.integers(0, 2**32),
    hops=st.integers(1, 5),
    port=st.sampled_from([None, 80, 443]),
    same_subnet_ok=st.booleans(),
    wanted=st.frozensets(st.sampled_from(COUNTRIES), max_size=2),
    excluded=st.frozensets(st.sampled_from(COUNTRIES), max_size=1),
    anywhere=st.frozensets(st.sampled_from(COUNTRIES), max_size=1),
    guards=st.lists(st.integers(0, 12), max_size=3),
    avoid_exits=st.frozensets(st.integers(0, 12), max_size=3),
    avoid_guards=st.frozensets(st.integers(0, 12), max_size=3),
)
def test_prop_select_path_chooses_what_the_direct_way_chooses(
    consensus: Consensus,
    seed: int,
    hops: int,
    port: int | None,
    same_subnet_ok: bool,
    wanted: frozenset[str],
    excluded: frozenset[str],
    anywhere: frozenset[str],
    guards: list[int],
    avoid_exits: frozenset[int],
    avoid_guards: frozenset[int],
) -> None:
    constraints = PathConstraints(
        hops=hops,
        port=port,
        same_subnet_ok=same_subnet_ok,
        exit_countries=wanted,
        exclude_exit_countries=excluded,
        exclude_countries_anywhere=anywhere,
        guards=tuple(ident(n) for n in guards),
        avoid_exits=frozenset(ident(n) for n in avoid_exits),
        avoid_guards=frozenset(ident(n) for n in avoid_guards),
    )
    results: list[tuple[object, float]] = []
    for choose in (select_path, reference_select_path):
        rng = random.Random(seed)
        try:
            path = [d.identity for d in choose(consensus, constraints, rng)]
        except PathSelectionError as exc:
            results.append((str(exc), rng.random()))
        else:
            results.append((path, rng.random()))
    assert results[0] == results[1]


def test_select_path_matches_the_direct_way_on_many_relays() -> None:
    """A 200-relay network with shared /16s, families and zero bandwidths:
    50 paths per hop count from one seed, identical to the direct way's."""
    gen = random.Random(5)
    relays = [
        relay(
            n,
            gen.choice([GUARD, MIDDLE, EXIT, GUARD | EXIT]),
            address=f"10.{gen.randrange(20)}.{n}.1",
            family=tuple(gen.sample(range(200), gen.choice([0, 0, 0, 2]))),
            bandwidth=gen.choice([0, 10, 100, 1000, 50_000]),
        )
        for n in range(200)
    ]
    consensus = network(relays)
    for hops in (1, 3, 5):
        constraints = PathConstraints(hops=hops, port=443)
        fast, direct = random.Random(hops), random.Random(hops)
        for _ in range(50):
            assert select_path(consensus, constraints, fast) == reference_select_path(
                consensus, constraints, direct
            )


@given(
    weights=st.lists(
        st.one_of(st.just(0), st.integers(1, 10**6), st.integers(1, 10**19)),
        min_size=1,
        max_size=30,
    ),
    data=st.data(),
    seed=st.integers(0, 2**32),
)
def test_prop_pool_draw_is_rng_choices_on_the_filtered_list(
    weights: list[int], data: st.DataObject, seed: int
) -> None:
    """Same member and same rng state after, for any weights (0, huge sums
    past 2**53) and any removed positions, as filtering then calling
    ``rng.choices`` (or ``rng.choice`` when every weight left is 0)."""
    members = [100 + i for i in range(len(weights))]
    removed = sorted(
        data.draw(st.sets(st.integers(0, len(weights) - 1), max_size=len(weights)))
    )
    fast, direct = random.Random(seed), random.Random(seed)
    got = Pool(members, weights).draw(removed, fast)
    kept = [
        (m, w)
        for pos, (m, w) in enumerate(zip(members, weights, strict=True))
        if pos not in removed
    ]
    if not kept:
        expected = None
    elif sum(w for _, w in kept) == 0:
        expected = direct.choice([m for m, _ in kept])
    else:
        expected = direct.choices([m for m, _ in kept], [w for _, w in kept])[0]
    assert got == expected
    assert fast.random() == direct.random()
