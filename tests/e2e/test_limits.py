"""A relay's resource limits on real loopback sockets (relay/limits.py).

Each test runs one relay (no authority: it publishes nothing) and talks to
it as raw clients: ``RawClient`` opens a link with ``link.initiate`` and
sends CREATE and RELAY cells built by the client core.  A second client
address is 127.0.0.9 (``local_address``).
"""

import gc
import logging
import random
import secrets
import socket
import tracemalloc
from collections import Counter
from collections.abc import AsyncGenerator, Callable
from functools import partial

import pytest
import trio
import trio.testing
from hopchain.relay.link import Link, initiate
from hopchain.relay.node import RelayConfig, RelayNode

from hopchain.circuit import ClientCircuit, HopSpec
from hopchain.crypto.keys import IdentityKey, OnionKey
from hopchain.messages import Connected, EndReason
from hopchain.relaylimits import RelayLimits
from hopchain.wire import Cell, CellCommand

from .conftest import LoopbackOnlyNetwork, seed

pytestmark = pytest.mark.trio

RELAY_ADDRESS = "127.0.0.2"
OTHER_CLIENT = "127.0.0.9"


async def start_relay(
    nursery: trio.Nursery, limits: RelayLimits, *, exit: bool = False
) -> RelayNode:
    config = RelayConfig(
        nickname="limited",
        address=RELAY_ADDRESS,
        exit=exit,
        test_network=True,
        limits=limits,
    )
    relay = RelayNode(
        config,
        IdentityKey(seed("limits id")),
        OnionKey(seed("limits onion")),
        LoopbackOnlyNetwork(),
    )
    await nursery.start(relay.serve)
    return relay


def hop(relay: RelayNode) -> HopSpec:
    return HopSpec(
        relay.identity.public, relay.onion_keys[0].public, RELAY_ADDRESS, relay.port
    )


async def settle(condition: Callable[[], bool]) -> None:
    """Let every task run until ``condition`` holds (bounded; no sleeping)."""
    for _ in range(200):
        if condition():
            return
        await trio.testing.wait_all_tasks_blocked()
        await trio.lowlevel.checkpoint()
    raise AssertionError("condition never held")


class RawClient:
    """A client link to the relay whose replies are collected per circuit."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.replies: dict[int, Cell] = {}
        self._wanted = 0
        self._enough = trio.Event()

    @classmethod
    async def open(
        cls, nursery: trio.Nursery, relay: RelayNode, local: str | None = None
    ) -> "RawClient":
        stream = await trio.open_tcp_stream(
            RELAY_ADDRESS, relay.port, local_address=local
        )
        spec = hop(relay)
        try:
            link = await initiate(stream, spec.identity, spec.onion_key)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        client = cls(link)
        nursery.start_soon(client.link.serve, client._on_cell)
        return client

    def _on_cell(self, cell: Cell) -> None:
        self.replies[cell.circ_id] = cell
        if len(self.replies) >= self._wanted:
            self._enough.set()

    async def create(self, relay: RelayNode, circ_ids: range) -> dict[int, Cell]:
        """Send a CREATE on each circuit id; the replies once all arrived."""
        cores = {}
        for circ_id in circ_ids:
            core = cores[circ_id] = ClientCircuit()
            body = core.create(hop(relay), secrets.token_bytes(32))
            assert self.link.send(circ_id, CellCommand.CREATE, body)
        self._wanted = len(self.replies) + len(circ_ids)
        self._enough = trio.Event()
        if len(self.replies) < self._wanted:
            await self._enough.wait()
        replies = {i: self.replies[i] for i in circ_ids}
        for circ_id, cell in replies.items():
            if cell.command is CellCommand.CREATED:
                cores[circ_id].on_created(cell.body)  # a real, usable circuit
        return replies


def outcome(replies: dict[int, Cell]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for cell in replies.values():
        if cell.command is CellCommand.CREATED:
            counts["created"] += 1
        else:
            assert cell.command is CellCommand.DESTROY
            assert cell.body == bytes([EndReason.RESOURCE_LIMIT])
            counts["refused"] += 1
    return counts


async def test_circuit_creations_from_one_address_are_throttled_not_others(
    nursery: trio.Nursery,
    mock_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """2,000 CREATEs from 127.0.0.1: the burst is served and the rest refused
    with DESTROY(RESOURCE_LIMIT), while 127.0.0.9 still builds circuits.  The
    clock stands still (mock_clock), so the counts are exact; jumping it by
    one second refills exactly the rate."""
    limits = RelayLimits(creates_per_second=10, creates_burst=20)
    relay = await start_relay(nursery, limits)
    with trio.fail_after(60), caplog.at_level(logging.WARNING):
        flooder = await RawClient.open(nursery, relay)
        replies = await flooder.create(relay, range(1, 2001))
        assert outcome(replies) == {"created": 20, "refused": 1980}

        other = await RawClient.open(nursery, relay, local=OTHER_CLIENT)
        assert outcome(await other.create(relay, range(1, 11))) == {"created": 10}

        mock_clock.jump(1.0)
        replies = await flooder.create(relay, range(2001, 2021))
        assert outcome(replies) == {"created": 10, "refused": 10}
    assert relay.limits.hits["circuit_creation_rate"] == 1990
    lines = [
        r.getMessage()
        for r in caplog.records
        if "circuit creation limit" in r.getMessage()
    ]
    assert len(lines) == 1  # rate-limited: one line per minute
    assert lines[0].startswith(
        "circuit creation limit hit for a client address [scrubbed]: 10/s, refusing"
    )
    assert "127.0.0.1" not in caplog.text


async def test_relays_are_exempt_from_the_creation_limit(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    """A link that authenticated as a relay carries many clients' circuits."""
    relay = await start_relay(
        nursery, RelayLimits(creates_per_second=1, creates_burst=2)
    )
    stream = await trio.open_tcp_stream(RELAY_ADDRESS, relay.port)
    spec = hop(relay)
    peer = IdentityKey(seed("a peer relay"))
    link = await initiate(stream, spec.identity, spec.onion_key, own_identity=peer)
    client = RawClient(link)
    nursery.start_soon(link.serve, client._on_cell)
    with trio.fail_after(30):
        assert outcome(await client.create(relay, range(1, 51))) == {"created": 50}


async def test_concurrent_links_per_address_are_capped(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    limits = RelayLimits(links_per_address=3, new_links_per_second=0)
    relay = await start_relay(nursery, limits)
    with trio.fail_after(30):
        clients = [await RawClient.open(nursery, relay) for _ in range(3)]
        await settle(lambda: relay.limits.links_open == 3)
        with pytest.raises(EOFError):  # closed before any handshake work
            await RawClient.open(nursery, relay)
        assert relay.limits.hits["links_per_address"] == 1
        other = await RawClient.open(nursery, relay, local=OTHER_CLIENT)
        assert outcome(await other.create(relay, range(1, 2))) == {"created": 1}
        await clients[0].link.aclose()
        await settle(lambda: relay.limits.links_from("127.0.0.1") == 2)
        fourth = await RawClient.open(nursery, relay)
        assert outcome(await fourth.create(relay, range(1, 2))) == {"created": 1}


async def test_new_links_per_address_are_rate_limited(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    """A burst of --max-links-per-address links, then the rate; the clock
    stands still until the test jumps it."""
    limits = RelayLimits(links_per_address=3, new_links_per_second=1)
    relay = await start_relay(nursery, limits)
    with trio.fail_after(30):
        for _ in range(3):
            client = await RawClient.open(nursery, relay)
            await client.link.aclose()
        await settle(lambda: relay.limits.links_open == 0)
        with pytest.raises(EOFError):  # no link open, but too many too fast
            await RawClient.open(nursery, relay)
        assert relay.limits.hits["new_links_rate"] == 1
        other = await RawClient.open(nursery, relay, local=OTHER_CLIENT)
        assert outcome(await other.create(relay, range(1, 2))) == {"created": 1}
        mock_clock.jump(1.0)
        again = await RawClient.open(nursery, relay)
        assert outcome(await again.create(relay, range(1, 2))) == {"created": 1}


async def _closed_by_relay(stream: trio.SocketStream) -> None:
    """Read until the relay closes the connection."""
    try:
        while await stream.receive_some(65536):
            pass
    except trio.BrokenResourceError:
        pass  # a reset: closed too


async def _bad_attempt(port: int, kind: int, rng: random.Random) -> None:
    stream = await trio.open_tcp_stream(RELAY_ADDRESS, port)
    async with stream:
        if kind == 0:  # garbage: a "key", then records that do not authenticate
            await stream.send_all(rng.randbytes(32 + rng.randrange(40, 400)))
        elif kind == 1:  # a truncated handshake, then EOF
            await stream.send_all(rng.randbytes(rng.randrange(0, 32)))
            await stream.send_eof()
        else:  # slow: part of a handshake, then nothing
            await stream.send_all(rng.randbytes(rng.randrange(1, 32)))
        await _closed_by_relay(stream)


def _traced_memory(snapshot: tracemalloc.Snapshot) -> int:
    """Traced bytes, without tracemalloc's own."""
    kept = snapshot.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    return sum(stat.size for stat in kept.statistics("filename"))


async def test_garbage_truncated_and_slow_handshakes_are_closed_and_memory_stays_flat(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """1,000 bad connections in batches of 50: every one is closed by the
    relay (slow ones by the handshake deadline), the relay then still builds
    circuits, and traced memory after them is within a generous ratio of
    before.  (pytest keeps every log record, with its exception and
    traceback, so the relay logs only errors here.)"""
    caplog.set_level(logging.ERROR, logger="hopchain")
    limits = RelayLimits(
        handshake_timeout=0.5, links_per_address=100, new_links_per_second=0
    )
    relay = await start_relay(nursery, limits)
    rng = random.Random(5)

    async def batch(first: int) -> None:
        async with trio.open_nursery() as attempts:
            for i in range(first, first + 50):
                attempts.start_soon(_bad_attempt, relay.port, i % 3, rng)

    async def run(count: int) -> None:
        for first in range(0, count, 50):
            with trio.fail_after(30):
                await batch(first)
        await settle(lambda: relay.limits.links_open == 0)

    tracemalloc.start()
    try:
        await run(150)  # warm up caches and trio's internals
        gc.collect()
        before = _traced_memory(tracemalloc.take_snapshot())
        timeouts_before = relay.limits.hits["handshake_timeout"]
        await run(1000)
        gc.collect()
        after = _traced_memory(tracemalloc.take_snapshot())
    finally:
        tracemalloc.stop()
    slow = sum(1 for i in range(1000) if i % 3 == 2)
    # Every slow one timed out; on a loaded machine a few others may too.
    assert slow <= relay.limits.hits["handshake_timeout"] - timeouts_before <= 1000
    assert after < before * 1.2 + 256 * 1024, (before, after)
    assert relay.limits.queued_bytes == 0
    with trio.fail_after(30):
        client = await RawClient.open(nursery, relay)
        assert outcome(await client.create(relay, range(1, 4))) == {"created": 3}


class Origin:
    """Sends ``size`` bytes on every connection; counts the connections that
    broke before all was sent (their circuit was closed at the exit)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.open = 0
        self.broken = 0
        self.changed = trio.Event()

    async def handle(self, stream: trio.SocketStream) -> None:
        self.open += 1
        try:
            chunk = b"x" * 65536
            for _ in range(self.size // len(chunk)):
                await stream.send_all(chunk)
        except trio.BrokenResourceError:
            self.broken += 1
        finally:
            self.open -= 1
            await stream.aclose()
            self.changed.set()
            self.changed = trio.Event()

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self.changed.wait()


async def _stalled_downloads(
    relay: RelayNode, origin_port: int, circuits: int, streams: int
) -> tuple[trio.SocketStream, AsyncGenerator[list[Cell], None]]:
    """A client link that builds 1-hop circuits to the exit, opens downloads
    and then stops reading (its receive buffer is a few KiB)."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.bind(("127.0.0.1", 0))
    await sock.connect((RELAY_ADDRESS, relay.port))
    stream = trio.SocketStream(sock)
    spec = hop(relay)
    link = await initiate(stream, spec.identity, spec.onion_key)
    cores = {}
    for circ_id in range(1, circuits + 1):
        core = cores[circ_id] = ClientCircuit()
        link.send(
            circ_id, CellCommand.CREATE, core.create(spec, secrets.token_bytes(32))
        )
    connected = 0
    cells = link.receive_cells()
    async with trio.open_nursery() as writer:
        writer.start_soon(link.run_writer)
        async for batch in cells:
            for cell in batch:
                core = cores[cell.circ_id]
                if cell.command is CellCommand.CREATED:
                    core.on_created(cell.body)
                    for _ in range(streams):
                        _, begin = core.open_stream("127.0.0.1", origin_port)
                        link.send(cell.circ_id, CellCommand.RELAY, begin)
                elif cell.command is CellCommand.RELAY:
                    received, _ = core.receive(cell.body)  # never credits DATA
                    if received is not None and isinstance(received.message, Connected):
                        connected += 1
            if connected == circuits * streams:
                break
        writer.cancel_scope.cancel()
    return stream, cells


async def test_a_client_that_stops_reading_cannot_grow_queues_past_the_cap(
    nursery: trio.Nursery,
) -> None:
    """Four circuits with two downloads each (up to 16 MiB in flight under
    flow control) to a client that stops reading: the exit's queued cells
    never exceed its 1 MiB cap, the circuits holding the most are closed, and
    the relay keeps serving; when the client goes, the queues are empty."""
    cap = 1024 * 1024
    relay = await start_relay(nursery, RelayLimits(max_queued_bytes=cap), exit=True)
    origin = Origin(8 * 1024 * 1024)
    listeners = await nursery.start(
        partial(trio.serve_tcp, origin.handle, 0, host="127.0.0.1")
    )
    origin_port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(60):
        stream, cells = await _stalled_downloads(relay, origin_port, 4, 2)
        await origin.wait_for(lambda: origin.broken >= 1)
        assert relay.limits.oom_circuits_closed >= 1
        assert relay.limits.hits["oom"] >= 1
        assert 0 < relay.limits.queued_bytes_peak <= cap
        assert relay.limits.queued_bytes <= cap
        assert relay.limits.oom_bytes_freed > 0
        other = await RawClient.open(nursery, relay, local=OTHER_CLIENT)
        assert outcome(await other.create(relay, range(1, 2))) == {"created": 1}
        await cells.aclose()
        await stream.aclose()
        await origin.wait_for(lambda: origin.open == 0)
        await settle(lambda: relay.limits.queued_bytes == 0)
    assert relay.limits.queued_bytes_peak <= cap


async def test_used_up_accounting_refuses_new_circuits(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    """With the period's bytes used (here: a 1-byte maximum, reached by the
    first cells read), CREATEs get DESTROY(RESOURCE_LIMIT) until the period
    ends (the period roll-over is in test_accounting.py)."""
    relay = await start_relay(
        nursery, RelayLimits(accounting_max=1, accounting_period=3600)
    )
    with trio.fail_after(30):
        client = await RawClient.open(nursery, relay)
        assert outcome(await client.create(relay, range(1, 4))) == {"refused": 3}
    assert relay.limits.hibernating
    assert relay.limits.accounting_used > 1
    assert relay.limits.hits["accounting"] == 3
