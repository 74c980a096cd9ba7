"""Three directory authorities that vote, on loopback, with one of them stopped.

The voting rounds are driven explicitly (``vote`` on every live authority,
then ``compute``), so nothing waits for a timer.  The refusal cases serve a
crafted consensus from a stand-in authority and check the client's message.
"""

import functools
import logging
import random
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import socks
import trio
from hopchain.client.node import ClientConfig, ClientNode
from hopchain.relay.authority import AuthorityNode
from hopchain.relay.dirclient import AuthorityAddress
from hopchain.relay.net import (
    BufferedReader,
    receive_message,
    send_message,
    wall_clock,
)
from hopchain.relay.node import RelayConfig, RelayNode

from hopchain.crypto.keys import IdentityKey, OnionKey
from hopchain.directory import (
    consensus_body,
    consensus_signing_message,
    sign_consensus,
    verify_consensus,
)
from hopchain.errors import DirectoryError
from hopchain.voting import TEST_NETWORK_INTERVAL, Schedule, combine

from .conftest import COUNTRIES, EXITS, RELAYS, LoopbackOnlyNetwork, seed

pytestmark = pytest.mark.trio

SCHEDULE = Schedule(TEST_NETWORK_INTERVAL)


@dataclass
class VotingNet:
    authorities: list[AuthorityNode]
    addresses: list[AuthorityAddress]
    stopped: int | None  # index of the authority that was stopped
    relays: list[RelayNode]
    network: LoopbackOnlyNetwork

    @property
    def live(self) -> list[AuthorityNode]:
        return [a for i, a in enumerate(self.authorities) if i != self.stopped]

    @property
    def pinned(self) -> list[bytes]:
        return [a.key for a in self.addresses]

    async def round(self, valid_after: float) -> None:
        for authority in self.live:
            await authority.vote(valid_after)
        for authority in self.live:
            await authority.compute(valid_after)

    def client(self, authorities: list[AuthorityAddress] | None = None) -> ClientNode:
        config = ClientConfig(
            authorities=authorities or self.addresses,
            socks_port=0,
            test_network=True,
            bootstrap_timeout=30,
        )
        return ClientNode(config, self.network, random.Random(3))


async def _run_stoppable(
    node: AuthorityNode,
    stopped: trio.Event,
    *,
    task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED,
) -> None:
    try:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(node.serve)
                task_status.started(scope)
    finally:
        stopped.set()


async def _start_voting_net(
    nursery: trio.Nursery, network: LoopbackOnlyNetwork, stop: int | None
) -> VotingNet:
    """Three authorities and RELAYS relays publishing to all of them; then
    authority ``stop`` (if any) is stopped."""
    authorities, scopes, events = [], [], []
    for i in range(3):
        node = AuthorityNode(
            IdentityKey(seed(f"voting authority {i}")),
            "127.0.0.1",
            0,
            network,
            test_network=True,
            schedule=SCHEDULE,
            timed_rounds=False,
        )
        stopped = trio.Event()
        scopes.append(await nursery.start(_run_stoppable, node, stopped))
        authorities.append(node)
        events.append(stopped)
    addresses = [
        AuthorityAddress("127.0.0.1", a.port, a.identity.public) for a in authorities
    ]
    for node in authorities:
        node.set_peers(addresses)  # its own entry is skipped
    relays = []
    for i in range(RELAYS):
        config = RelayConfig(
            nickname=f"voted{i}",
            address=f"127.0.0.{2 + i}",
            authorities=addresses,
            exit=i >= RELAYS - EXITS,
            test_network=True,
            country=COUNTRIES[i],
        )
        relay = RelayNode(
            config,
            IdentityKey(seed(f"voted id{i}")),
            OnionKey(seed(f"voted onion{i}")),
            network,
        )
        await nursery.start(relay.serve)
        relays.append(relay)
    for relay in relays:
        await relay.published.wait()  # published to all three
    if stop is not None:
        scopes[stop].cancel()
        await events[stop].wait()
    return VotingNet(authorities, addresses, stop, relays, network)


@pytest.fixture
async def voting_net(nursery: trio.Nursery) -> AsyncIterator[VotingNet]:
    network = LoopbackOnlyNetwork()
    with trio.fail_after(60):
        net = await _start_voting_net(nursery, network, stop=2)
    yield net
    assert network.violations == [], "the test network tried to leave loopback"


async def test_three_authorities_sign_one_document_without_a_lone_relay(
    nursery: trio.Nursery,
) -> None:
    network = LoopbackOnlyNetwork()
    with trio.fail_after(60):
        net = await _start_voting_net(nursery, network, stop=None)
        loner = RelayNode(
            RelayConfig(
                nickname="loner",
                address="127.0.0.20",
                authorities=net.addresses[:1],  # known to one authority only
                test_network=True,
            ),
            IdentityKey(seed("loner id")),
            OnionKey(seed("loner onion")),
            network,
        )
        await nursery.start(loner.serve)
        await loner.published.wait()
        await net.round(SCHEDULE.period_start(wall_clock()))
    served = {a.consensus() for a in net.authorities}
    assert len(served) == 1  # byte-identical everywhere, all three signatures
    (document,) = served
    assert document is not None
    consensus = verify_consensus(document, net.pinned, wall_clock())
    assert consensus.signers == set(net.pinned)
    listed = {r.descriptor.nickname for r in consensus.relays}
    assert listed == {f"voted{i}" for i in range(RELAYS)}  # not the loner
    assert network.violations == []


async def _origin(stream: trio.SocketStream) -> None:
    async with stream:
        peer = stream.socket.getpeername()[0]
        await stream.send_all(f"peer {peer}\n".encode())


def _peer_through(socks_port: int, origin_port: int) -> str:
    with socks.socksocket() as sock:
        sock.set_proxy(socks.SOCKS5, "127.0.0.1", socks_port, rdns=True)
        sock.settimeout(20)
        sock.connect(("127.0.0.1", origin_port))
        data = b""
        while b"\n" not in data and (chunk := sock.recv(100)):
            data += chunk
    return data.decode().split()[1]


async def test_two_of_three_authorities_make_a_consensus_clients_use(
    voting_net: VotingNet, nursery: trio.Nursery
) -> None:
    assert voting_net.live[0].consensus() is None  # no round yet
    period = SCHEDULE.period_start(wall_clock())
    with trio.fail_after(60):
        await voting_net.round(period)
    served = [a.consensus() for a in voting_net.live]
    assert served[0] is not None
    assert served[0] == served[1]  # the same document, with both signatures
    consensus = verify_consensus(served[0], voting_net.pinned, wall_clock())
    assert consensus.signers == {a.identity.public for a in voting_net.live}
    assert consensus.valid_after == period
    assert consensus.fresh_until == period + TEST_NETWORK_INTERVAL
    assert len(consensus.relays) == RELAYS
    assert all("Running" in r.flags for r in consensus.relays)

    # A client pinning all three (one is down) bootstraps and carries traffic.
    origin = await nursery.start(
        functools.partial(trio.serve_tcp, _origin, 0, host="127.0.0.1")
    )
    origin_port = origin[0].socket.getsockname()[1]
    client = voting_net.client()
    with trio.fail_after(60):
        await nursery.start(client.serve)
        peer = await trio.to_thread.run_sync(
            _peer_through, client.socks_port, origin_port
        )
    exits = {r.config.address for r in voting_net.relays if r.config.exit}
    assert peer in exits


async def test_an_older_round_does_not_replace_the_served_consensus(
    voting_net: VotingNet,
) -> None:
    period = SCHEDULE.period_start(wall_clock())
    with trio.fail_after(60):
        await voting_net.round(period)
        served = voting_net.live[0].consensus()
        await voting_net.round(period - SCHEDULE.interval)
    assert voting_net.live[0].consensus() == served


async def _serve_document(
    nursery: trio.Nursery, document: bytes, keys: list[bytes]
) -> list[AuthorityAddress]:
    """A stand-in authority that serves ``document``, under each real key."""

    async def handler(stream: trio.SocketStream) -> None:
        async with stream:
            await receive_message(BufferedReader(stream))
            await send_message(stream, {"consensus": document})

    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
    )
    port = listeners[0].socket.getsockname()[1]
    return [AuthorityAddress("127.0.0.1", port, key) for key in keys]


def _signed_by(body: bytes, signers: list[IdentityKey]) -> bytes:
    message = consensus_signing_message(body)
    return sign_consensus(body, [(s.public, s.sign(message)) for s in signers])


async def _refusal(
    net: VotingNet, nursery: trio.Nursery, document: bytes
) -> DirectoryError:
    client = net.client(await _serve_document(nursery, document, net.pinned))
    with trio.fail_after(30), pytest.raises(DirectoryError) as refused:
        await client.fetch_consensus()
    return refused.value


async def test_a_consensus_signed_by_one_authority_of_three_is_refused(
    voting_net: VotingNet, nursery: trio.Nursery
) -> None:
    with trio.fail_after(60):
        await voting_net.round(SCHEDULE.period_start(wall_clock()))
    served = voting_net.live[0].consensus()
    assert served is not None
    alone = _signed_by(consensus_body(served), [voting_net.live[0].identity])
    error = await _refusal(voting_net, nursery, alone)
    assert "consensus signed by 1 of the 3 pinned authorities, 2 needed" in str(error)


async def test_a_consensus_signed_by_a_key_that_is_not_pinned_is_refused(
    voting_net: VotingNet, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(60):
        await voting_net.round(SCHEDULE.period_start(wall_clock()))
    served = voting_net.live[0].consensus()
    assert served is not None
    body = consensus_body(served)
    rogue = IdentityKey(seed("rogue authority"))
    error = await _refusal(voting_net, nursery, _signed_by(body, [rogue]))
    assert (
        "consensus signed by 0 of the 3 pinned authorities, 2 needed; "
        "1 signature(s) by keys that are not pinned ignored"
    ) in str(error)

    # Beside a majority of pinned keys, the unknown key is ignored (debug log).
    document = _signed_by(body, [*(a.identity for a in voting_net.live), rogue])
    client = voting_net.client(
        await _serve_document(nursery, document, voting_net.pinned)
    )
    with trio.fail_after(30), caplog.at_level(logging.DEBUG, "hopchain.client"):
        consensus = await client.fetch_consensus()
    assert len(consensus.signers) == 2
    assert any(
        r.levelno == logging.DEBUG
        and "not pinned" in r.getMessage()
        and rogue.public.hex() in r.getMessage()
        for r in caplog.records
    )


async def test_a_stale_consensus_is_refused_with_the_times(
    voting_net: VotingNet, nursery: trio.Nursery
) -> None:
    old = SCHEDULE.period_start(wall_clock()) - 100 * SCHEDULE.interval
    votes = [a.own_vote(*SCHEDULE.times(old)) for a in voting_net.live]
    body = combine(votes, 3)
    stale = _signed_by(body, [a.identity for a in voting_net.live])
    error = await _refusal(voting_net, nursery, stale)
    assert re.search(
        r"consensus is stale: valid until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC, "
        r"but the clock says \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC "
        r"\(allowed skew 60 s\)",
        str(error),
    ), error
