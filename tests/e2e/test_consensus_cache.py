"""The client keeps the last consensus on disk and starts from it when no
authority answers, as long as it is still valid."""

import logging
import random
import socket
from pathlib import Path

import pytest
import trio
from hopchain.client.node import (
    CONSENSUS_CACHE,
    GUARDS_FILE,
    ClientConfig,
    ClientNode,
)
from hopchain.relay.dirclient import AuthorityAddress

from hopchain.errors import DirectoryError

from .conftest import start_testnet

pytestmark = pytest.mark.trio


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens there any more


async def test_cached_consensus_when_authorities_are_down(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "client"
    with trio.fail_after(60):
        net = await start_testnet(nursery, data_dir=data_dir)
    cache = data_dir / CONSENSUS_CACHE
    assert cache.stat().st_mode & 0o777 == 0o600
    key = net.authority.identity.public
    down = [AuthorityAddress("127.0.0.1", _closed_port(), key)]

    def client(directory: Path) -> ClientNode:
        config = ClientConfig(authorities=down, test_network=True, data_dir=directory)
        return ClientNode(config, net.network, random.Random(5))

    with trio.fail_after(30), caplog.at_level(logging.WARNING):
        consensus = await client(data_dir).fetch_consensus()
    assert len(consensus.relays) == 5
    assert any("using the cached consensus" in r.getMessage() for r in caplog.records)

    with trio.fail_after(30), pytest.raises(DirectoryError, match="unreachable"):
        await client(tmp_path / "empty").fetch_consensus()

    cache.write_bytes(b"garbage")
    with trio.fail_after(30), pytest.raises(DirectoryError, match="cached consensus"):
        await client(data_dir).fetch_consensus()


async def test_the_guard_persists_across_circuits_and_restarts(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    data_dir = tmp_path / "client"
    with trio.fail_after(60):
        net = await start_testnet(nursery, data_dir=data_dir)
        manager = net.client.manager
        assert manager is not None
        guards = set()
        for _ in range(6):
            manager.newnym()
            guards.add((await manager.build(80)).core.path[0].identity)
    assert len(guards) == 1  # every new circuit went through the same guard
    state = data_dir / GUARDS_FILE
    assert state.stat().st_mode & 0o777 == 0o600
    (guard,) = guards
    assert guard.hex() in state.read_text()

    restarted = ClientNode(
        ClientConfig(
            authorities=[net.authority_address],
            socks_port=None,
            test_network=True,
            data_dir=data_dir,
        ),
        net.network,
        random.Random(9),
    )
    with trio.fail_after(60):
        await nursery.start(restarted.serve)
        assert restarted.manager is not None
        circuit = await restarted.manager.build(80)
    assert circuit.core.path[0].identity == guard
