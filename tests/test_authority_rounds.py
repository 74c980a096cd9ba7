"""The authorities' timed voting loop, in virtual time.

Three authorities talk over an in-memory directory network (each request is
handed straight to the target authority's request handler over a trio
memory stream), and their wall clock is trio's clock, so under
``autojump_clock`` a minute-long voting period passes in no real time.
"""

import errno
import hashlib
from collections.abc import Callable

import pytest
import trio
import trio.testing
from hopchain.relay import authority as authority_module
from hopchain.relay.authority import AuthorityNode
from hopchain.relay.dirclient import AuthorityAddress

from hopchain.crypto.keys import IdentityKey
from hopchain.directory import verify_consensus
from hopchain.errors import DirectoryError
from hopchain.voting import Schedule

pytestmark = pytest.mark.trio

EPOCH = 1_700_000_040.0  # a multiple of 60: periods start at virtual 0, 60, ...
SCHEDULE = Schedule(60.0)


class MemoryDirectoryNetwork:
    """Directory requests by port, straight to the authority's handler."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.handlers: dict[int, Callable[[trio.abc.Stream], object]] = {}

    async def connect(
        self, host: str, port: int, *, local_address: str | None = None
    ) -> trio.abc.HalfCloseableStream:
        handler = self.handlers.get(port)
        if host != "127.0.0.1" or handler is None:
            raise OSError(errno.ECONNREFUSED, "nothing listens there")
        client, server = trio.testing.memory_stream_pair()
        self.nursery.start_soon(handler, server)
        return client

    async def listen(self, host: str, port: int) -> list[trio.SocketListener]:
        return await trio.open_tcp_listeners(0, host="127.0.0.1")  # never used

    async def resolve(self, host: str, port: int) -> list[str]:
        raise OSError(errno.ENOENT, "no names here")

    async def resolve_ptr(self, address: str) -> str:
        raise OSError(errno.ENOENT, "no names here")


async def _run(node: AuthorityNode, *, task_status: trio.TaskStatus[None]) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(node.serve)
        task_status.started()


async def test_timed_rounds_make_consensus_every_period(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        authority_module, "wall_clock", lambda: EPOCH + trio.current_time()
    )
    network = MemoryDirectoryNetwork(nursery)
    keys = [
        IdentityKey(hashlib.blake2b(f"timed {i}".encode(), digest_size=32).digest())
        for i in range(3)
    ]
    addresses = [
        AuthorityAddress("127.0.0.1", 7001 + i, k.public) for i, k in enumerate(keys)
    ]
    nodes = [
        AuthorityNode(
            key,
            "127.0.0.1",
            0,
            network,
            test_network=True,
            peers=addresses,
            schedule=SCHEDULE,
        )
        for key in keys
    ]
    scopes = []
    for node, address in zip(nodes, addresses, strict=True):
        network.handlers[address.port] = node.handle
        scope = trio.CancelScope()
        scopes.append(scope)

        async def run(node: AuthorityNode, scope: trio.CancelScope) -> None:
            with scope:
                await _run(node, task_status=trio.TASK_STATUS_IGNORED)

        nursery.start_soon(run, node, scope)
    pinned = [a.key for a in addresses]

    await trio.sleep(59.0)  # the first period starts at 60
    assert all(node.consensus() is None for node in nodes)
    await trio.sleep(1.0 + SCHEDULE.collect_delay + 1.0)  # combined at 80
    documents = {node.consensus() for node in nodes}
    assert len(documents) == 1  # every authority serves the same document
    (document,) = documents
    assert document is not None
    consensus = verify_consensus(document, pinned, EPOCH + trio.current_time())
    assert consensus.valid_after == EPOCH + 60.0
    assert consensus.fresh_until == EPOCH + 120.0
    assert consensus.valid_until == EPOCH + 240.0
    assert consensus.signers == set(pinned)

    # One authority stops: the other two go on, and clients accept 2 of 3.
    scopes[2].cancel()
    del network.handlers[addresses[2].port]
    await trio.sleep(120.0)  # to 201: the period after 180 was combined at 200
    document = nodes[0].consensus()
    assert document is not None
    assert document == nodes[1].consensus()
    consensus = verify_consensus(document, pinned, EPOCH + trio.current_time())
    assert consensus.valid_after == EPOCH + 180.0
    assert consensus.signers == set(pinned[:2])
    for scope in scopes:
        scope.cancel()


async def test_signatures_for_periods_without_votes_are_refused(
    nursery: trio.Nursery,
) -> None:
    own, peer = (
        IdentityKey(hashlib.blake2b(f"flood {i}".encode(), digest_size=32).digest())
        for i in range(2)
    )
    node = AuthorityNode(
        own,
        "127.0.0.1",
        0,
        MemoryDirectoryNetwork(nursery),  # the peer is down: nothing listens
        peers=[AuthorityAddress("127.0.0.1", 7001, peer.public)],
        schedule=SCHEDULE,
        timed_rounds=False,
    )
    await node.vote(EPOCH)
    # Unauthenticated requests naming far periods must not push EPOCH out.
    for k in range(1, authority_module.KEEP_PERIODS + 1):
        with pytest.raises(DirectoryError, match="period without votes"):
            node.receive_signature(EPOCH + k * 1e6, peer.public, bytes(64))
    node.receive_signature(EPOCH, peer.public, bytes(64))  # checked once combined
