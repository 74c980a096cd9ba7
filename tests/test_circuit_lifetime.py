"""When the client stops putting new streams on a circuit (CircuitManager._stale)."""

import random
from typing import Any

import trio
from hopchain.client.circuits import CLEAN_LIFETIME, CircuitManager, ClientCircuitHandle
from hopchain.client.node import ClientConfig

from hopchain.circuit import ClientCircuit
from hopchain.directory import Consensus, Descriptor

EXIT = Descriptor(
    nickname="e",
    identity=bytes([9]) * 32,
    onion_key=bytes(32),
    address="192.0.2.1",
    or_port=9001,
    bandwidth=1,
    exit_ports=((1, 65535),),
    family=(),
    country="DE",
    published=0.0,
    test_network=False,
)


def _manager(nursery: trio.Nursery) -> CircuitManager:
    config = ClientConfig(authorities=[])
    network: Any = None  # never used: nothing is built here
    return CircuitManager(
        network,
        lambda: Consensus(0.0, 1.0, 2.0, (), frozenset()),
        hops=3,
        same_subnet_ok=False,
        dirtiness=config.dirtiness,
        rng=random.Random(1),
        nursery=nursery,
    )


def _handle(built_at: float) -> ClientCircuitHandle:
    link: Any = None
    return ClientCircuitHandle(ClientCircuit(), link, 1, EXIT, built_at=built_at)


async def test_dirtiness_is_ten_minutes_from_the_first_stream() -> None:
    assert ClientConfig(authorities=[]).dirtiness == 600.0
    async with trio.open_nursery() as nursery:
        manager = _manager(nursery)
        handle = _handle(built_at=0.0)
        assert not manager.reuse.stale(handle, 3000.0)  # clean: an hour to be used
        handle.attach(3000.0)
        handle.attach(3100.0)  # only the first stream counts
        assert not manager.reuse.stale(handle, 3000.0 + 599.0)
        assert manager.reuse.stale(handle, 3000.0 + 600.0)


async def test_clean_circuits_age_out_and_newnym_retires_everything() -> None:
    async with trio.open_nursery() as nursery:
        manager = _manager(nursery)
        clean = _handle(built_at=100.0)
        assert not manager.reuse.stale(clean, 100.0 + CLEAN_LIFETIME - 1)
        assert manager.reuse.stale(clean, 100.0 + CLEAN_LIFETIME)
        used = _handle(built_at=100.0)
        used.attach(150.0)
        manager.newnym()
        assert manager.reuse.stale(clean, 101.0)
        assert manager.reuse.stale(used, 151.0)
