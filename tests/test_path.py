"""Unit and property tests for hopchain.path (path selection)."""

import hashlib
import ipaddress
import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hopchain.directory import Consensus, Descriptor, RouterStatus
from hopchain.errors import PathSelectionError
from hopchain.path import PathConstraints, select_path

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
