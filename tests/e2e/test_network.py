"""End to end: real clients through a whole network on loopback."""

import dataclasses
import functools
import hashlib
import logging
import os
import random
import socket

import pytest
import socks
import trio
import trio.testing
from hopchain.client.node import ClientConfig, ClientNode
from hopchain.relay.dirclient import AuthorityAddress

from hopchain.errors import DirectoryError
from hopchain.flow import CIRCUIT_WINDOW

from .conftest import LoopbackNet, pattern

pytestmark = pytest.mark.trio


def _socks_socket(net: LoopbackNet, timeout: float = 20) -> socks.socksocket:
    sock = socks.socksocket()
    sock.set_proxy(socks.SOCKS5, "127.0.0.1", net.socks_port, rdns=True)
    sock.settimeout(timeout)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while data := sock.recv(1 << 20):
        chunks.append(data)
    return b"".join(chunks)


def _echo_session(net: LoopbackNet, host: str) -> tuple[str, bytes]:
    """ECHO through the proxy with a half-close; returns (peer, the rest)."""
    with _socks_socket(net) as sock:
        sock.connect((host, net.origin_port))
        sock.sendall(b"ECHO\nhello through three hops")
        sock.shutdown(socket.SHUT_WR)
        data = _read_all(sock)
    first, _, rest = data.partition(b"\n")
    return first.decode().split()[1], rest


def _download(net: LoopbackNet, size: int) -> bytes:
    with _socks_socket(net, timeout=60) as sock:
        sock.connect(("127.0.0.1", net.origin_port))
        sock.sendall(f"BYTES {size}\n".encode())
        return _read_all(sock)


async def test_pysocks_reaches_origin_from_an_exit_address(
    testnet: LoopbackNet,
) -> None:
    with trio.fail_after(30):
        peer, rest = await trio.to_thread.run_sync(_echo_session, testnet, "127.0.0.1")
    assert peer in testnet.exit_addresses
    assert peer != "127.0.0.1"
    # The client half-closed its side and still read the echo and the close.
    assert rest == b"hello through three hopsclosed\n"


async def test_domain_name_is_resolved_by_the_exit(testnet: LoopbackNet) -> None:
    with trio.fail_after(30):
        peer, rest = await trio.to_thread.run_sync(_echo_session, testnet, "localhost")
    assert peer in testnet.exit_addresses
    assert rest.endswith(b"closed\n")


async def test_bulk_download_arrives_intact(testnet: LoopbackNet) -> None:
    size = 8 * 1024 * 1024 + 12345
    with trio.fail_after(60):
        body = await trio.to_thread.run_sync(_download, testnet, size)
    assert hashlib.sha256(body).digest() == hashlib.sha256(pattern(size)).digest()


async def test_32_concurrent_streams_complete(testnet: LoopbackNet) -> None:
    size = 256 * 1024
    expected = hashlib.sha256(pattern(size)).digest()
    results: list[bytes] = []

    async def one() -> None:
        body = await trio.to_thread.run_sync(_download, testnet, size)
        results.append(hashlib.sha256(body).digest())

    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            for _ in range(32):
                nursery.start_soon(one)
    assert results == [expected] * 32


async def _raw_socks(net: LoopbackNet, payload: bytes) -> bytes:
    """Send raw bytes and EOF to the SOCKS port; return the answer before close."""
    stream = await trio.open_tcp_stream("127.0.0.1", net.socks_port)
    async with stream:
        await stream.send_all(payload)
        await stream.send_eof()
        received = b""
        while data := await stream.receive_some(1024):
            received += data
        return received


async def test_malformed_socks_requests_get_errors_and_service_continues(
    testnet: LoopbackNet,
) -> None:
    with trio.fail_after(60):
        # Not SOCKS5 at all: closed without a reply.
        assert await _raw_socks(testnet, b"GET / HTTP/1.1\r\n\r\n") == b""
        # No acceptable method.
        assert await _raw_socks(testnet, b"\x05\x01\x80") == b"\x05\xff"
        # BIND: command not supported (7).
        reply = await _raw_socks(
            testnet, b"\x05\x01\x00\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50"
        )
        assert reply[:2] == b"\x05\x00"
        assert reply[2:4] == b"\x05\x07"
        # Unknown address type: 8.
        reply = await _raw_socks(testnet, b"\x05\x01\x00\x05\x01\x00\x09\x00\x00")
        assert reply[2:4] == b"\x05\x08"
        # Port 0 to a real host: general failure.
        reply = await _raw_socks(
            testnet, b"\x05\x01\x00\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x00"
        )
        assert reply[2:4] == b"\x05\x01"
        peer, _ = await trio.to_thread.run_sync(_echo_session, testnet, "127.0.0.1")
    assert peer in testnet.exit_addresses


async def test_refused_port_maps_to_socks_connection_refused(
    testnet: LoopbackNet,
) -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    closed_port = listener.getsockname()[1]
    listener.close()  # nothing listens there now

    def attempt() -> None:
        with _socks_socket(testnet) as sock:
            sock.connect(("127.0.0.1", closed_port))

    with trio.fail_after(30), pytest.raises(socks.GeneralProxyError) as info:
        await trio.to_thread.run_sync(attempt)
    assert "Connection refused" in str(info.value)


async def test_garbage_to_a_relay_closes_only_that_link(
    testnet: LoopbackNet, caplog: pytest.LogCaptureFixture
) -> None:
    relay = testnet.relays[0]
    with (
        caplog.at_level(logging.WARNING, logger="hopchain.relay.link"),
        trio.fail_after(30),
    ):
        stream = await trio.open_tcp_stream(relay.config.address, relay.port)
        async with stream:
            # A well-formed handshake (B | X), so that the records are read.
            await stream.send_all(relay.onion_keys[0].public + os.urandom(32))
            assert await stream.receive_some(64)  # the reply, not a close
            await stream.send_all(os.urandom(4096))  # records with bad tags
            with trio.move_on_after(10) as waiting:
                while await stream.receive_some(4096):
                    pass
        assert not waiting.cancelled_caught, "the relay kept the bad link open"
        assert "record header does not authenticate" in caplog.text
        peer, _ = await trio.to_thread.run_sync(_echo_session, testnet, "127.0.0.1")
    assert peer in testnet.exit_addresses


async def test_client_refuses_a_consensus_from_an_unpinned_key(
    testnet: LoopbackNet,
) -> None:
    wrong = AuthorityAddress("127.0.0.1", testnet.authority.port, bytes(32))
    client = ClientNode(
        ClientConfig(authorities=[wrong], socks_port=0, test_network=True),
        testnet.network,
        random.Random(2),
    )
    with (
        trio.fail_after(30),
        pytest.raises(DirectoryError, match="signed by 0 of the 1 pinned"),
    ):
        await client.fetch_consensus()


def _ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_available(), reason="no IPv6 loopback here")
async def test_ipv6_target_by_address_type_4(
    testnet: LoopbackNet, nursery: trio.Nursery
) -> None:
    from .conftest import _origin_handler

    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, _origin_handler, 0, host="::1")
    )
    port = listeners[0].socket.getsockname()[1]
    request = (
        b"\x05\x01\x00\x05\x01\x00\x04" + bytes(15) + b"\x01" + port.to_bytes(2, "big")
    )
    with trio.fail_after(30):
        stream = await trio.open_tcp_stream("127.0.0.1", testnet.socks_port)
        async with stream:
            await stream.send_all(request + b"ECHO\n")
            received = b""
            while b"\n" not in received[12:]:
                received += await stream.receive_some(1024)
    assert received[:4] == b"\x05\x00\x05\x00"
    assert received[12:].startswith(b"peer ::1\n")


async def test_dirty_idle_circuits_are_retired(testnet: LoopbackNet) -> None:
    manager = testnet.client.manager
    assert manager is not None
    manager.reuse.dirtiness = 0.0  # every circuit is dirty as soon as it is used
    manager.max_clean = 0  # and none is built ahead for the port just used
    with trio.fail_after(30):
        await trio.to_thread.run_sync(_echo_session, testnet, "127.0.0.1")
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
    assert not any(h.is_open for h in manager.table)
    # Each relay dropped the destroyed circuit too.
    assert not any(r.circuits.by_prev or r.circuits.by_next for r in testnet.relays)


async def test_expired_consensus_fails_the_stream_not_the_client(
    testnet: LoopbackNet,
) -> None:
    manager = testnet.client.manager
    assert manager is not None
    fresh = testnet.client._consensus
    assert fresh is not None
    manager.reuse.dirtiness = 0.0  # every stream needs a new circuit, so a consensus
    manager.max_clean = 0  # (none is built ahead, and the clean ones are gone)
    manager.close_all()
    testnet.client._consensus = dataclasses.replace(fresh, valid_until=0.0)

    def attempt() -> None:
        with _socks_socket(testnet) as sock:
            sock.connect(("127.0.0.1", testnet.origin_port))

    with trio.fail_after(30), pytest.raises(socks.GeneralProxyError, match="0x01"):
        await trio.to_thread.run_sync(attempt)
    testnet.client._consensus = fresh
    with trio.fail_after(30):
        peer, _ = await trio.to_thread.run_sync(_echo_session, testnet, "127.0.0.1")
    assert peer in testnet.exit_addresses


MALFORMED_SOCKS = {
    "greeting with 0 methods": b"\x05\x00",
    "greeting with 255 unknown methods": b"\x05\xff"
    + bytes(range(3, 256))
    + b"\x80\x81",
    "unknown version": b"\x06\x01\x00",
    "version 0": b"\x00\x01\x00",
    "domain of length 0": b"\x05\x01\x00\x05\x01\x00\x03\x00\x00\x50",
    "truncated request then close": b"\x05\x01\x00\x05\x01\x00\x01\x7f",
    "255-byte domain name": b"\x05\x01\x00\x05\x01\x00\x03\xff"
    + b"a" * 247
    + b".invalid\x00\x50",
    "domain with control bytes": b"\x05\x01\x00\x05\x01\x00\x03\x03a\nb\x00\x50",
    "RFC 1929 empty fields": b"\x05\x01\x02\x01\x00\x00\x05\x01\x00\x03\x00\x00\x50",
    "RFC 1929 255-byte fields": b"\x05\x01\x02\x01\xff"
    + b"u" * 255
    + b"\xff"
    + b"p" * 255,
    "RFC 1929 wrong subnegotiation version": b"\x05\x01\x02\x02\x01u\x01p",
    "UDP ASSOCIATE": b"\x05\x01\x00\x05\x03\x00\x01\x7f\x00\x00\x01\x00\x50",
}


@pytest.mark.parametrize(
    "payload", MALFORMED_SOCKS.values(), ids=MALFORMED_SOCKS.keys()
)
async def test_malformed_socks_input_never_hurts_the_client(
    testnet: LoopbackNet, payload: bytes
) -> None:
    with trio.fail_after(30):
        reply = await _raw_socks(testnet, payload)
        # Whatever came back is a SOCKS reply, never a traceback or garbage.
        assert reply[:1] in (b"", b"\x05", b"\x01")
        peer, _ = await trio.to_thread.run_sync(_echo_session, testnet, "127.0.0.1")
    assert peer in testnet.exit_addresses


async def test_late_data_after_the_destination_closed_keeps_the_circuit(
    testnet: LoopbackNet,
) -> None:
    """The origin closes while the app still uploads: only that stream ends."""
    manager = testnet.client.manager
    assert manager is not None
    manager.max_clean = 0  # one circuit: none built ahead for the port used

    def upload_into_a_closed_destination() -> None:
        with _socks_socket(testnet) as sock:
            sock.connect(("127.0.0.1", testnet.origin_port))
            sock.sendall(b"BYTES 0\n")  # the origin answers nothing and closes
            try:
                for _ in range(64):
                    sock.sendall(b"x" * 65536)
                while sock.recv(65536):
                    pass
            except OSError:
                pass  # reset: expected once the exit has told the client

    with trio.fail_after(60):
        await trio.to_thread.run_sync(_echo_session, testnet, "127.0.0.1")
        (before,) = [c["id"] for c in manager.describe()]
        await trio.to_thread.run_sync(upload_into_a_closed_destination)
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        assert [c["id"] for c in manager.describe()] == [before]  # not destroyed
        _, rest = await trio.to_thread.run_sync(_echo_session, testnet, "127.0.0.1")
    assert rest.endswith(b"closed\n")
    assert [c["id"] for c in manager.describe()] == [before]
    # Nothing is left registered, and no credit went missing: what is not yet
    # credited is less than the quarter window that SENDMEs are batched in.
    handle = next(iter(manager.table))
    assert handle.streams == {}
    assert handle.core.streams.send.unacked < CIRCUIT_WINDOW // 4
    assert handle.core.streams.receive.outstanding < CIRCUIT_WINDOW // 4
