"""Relay and client logs hold no destination and no app address by default.

A stream through the loopback network with every logger at DEBUG: the
destination host and the app's address appear only as ``[scrubbed]``.  With
``RevealSensitive`` (``--unsafe-logging``) the same log lines show them, which
proves the lines that would leak are there and the scrubbing is what hides
them.
"""

import logging
import re

import pytest
import trio
from hopchain.relay.net import BufferedReader

from hopchain.safelog import SCRUBBED, RevealSensitive

from .conftest import LoopbackNet
from .test_exit_policy import _receive_exactly, _socks_address

pytestmark = pytest.mark.trio

DESTINATION = "localhost"  # resolved by the exit (LoopbackOnlyNetwork's table)


async def _echo_by_name(net: LoopbackNet) -> str:
    """ECHO through SOCKS5 to DESTINATION; returns the app's address."""
    stream = await trio.open_tcp_stream("127.0.0.1", net.socks_port)
    async with stream:
        host, port = stream.socket.getsockname()[:2]
        await stream.send_all(b"\x05\x01\x00")
        assert await _receive_exactly(stream, 2) == b"\x05\x00"
        address = _socks_address(DESTINATION) + net.origin_port.to_bytes(2, "big")
        await stream.send_all(b"\x05\x01\x00" + address)
        reply = await _receive_exactly(stream, 10)
        assert reply[1] == 0x00, reply
        await stream.send_all(b"ECHO\n")
        line = await BufferedReader(stream).read_exactly(5)
        assert line == b"peer "
    return f"{host}:{port}"


def _mentions(text: str, app: str) -> list[str]:
    """Which of the destination and the app address ``text`` contains."""
    patterns = [rf"\b{re.escape(DESTINATION)}\b", rf"{re.escape(app)}\b"]
    return [p for p in patterns if re.search(p, text)]


async def test_debug_logs_scrub_destinations_and_app_addresses(
    testnet: LoopbackNet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with trio.fail_after(30):
        app = await _echo_by_name(testnet)
    text = caplog.text
    events = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("socks_connect ") for m in events)  # client
    assert any(m.startswith("exit_stream_connected ") for m in events)  # exit
    assert f"host={SCRUBBED}" in text
    assert f"app={SCRUBBED}" in text
    assert _mentions(text, app) == []

    caplog.clear()
    caplog.handler.addFilter(RevealSensitive())
    try:
        with trio.fail_after(30):
            app = await _echo_by_name(testnet)
    finally:
        caplog.handler.removeFilter(caplog.handler.filters[-1])
    assert len(_mentions(caplog.text, app)) == 2
    assert f"host={DESTINATION}" in caplog.text
