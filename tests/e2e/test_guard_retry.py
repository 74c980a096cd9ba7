"""A guard that cannot be reached is marked down and the next guard is used."""

import errno

import pytest
import trio
from hopchain.relay.net import Network, wall_clock

from hopchain.isolation import IsolationKey

from .conftest import LoopbackNet, echo_once

pytestmark = pytest.mark.trio


class _Unreachable:
    """The test network, with one address refusing every connection."""

    def __init__(self, inner: Network, address: str) -> None:
        self._inner = inner
        self._address = address
        self.refused = 0

    async def connect(
        self, host: str, port: int, *, local_address: str | None = None
    ) -> trio.abc.HalfCloseableStream:
        if host == self._address:
            self.refused += 1
            raise OSError(errno.ECONNREFUSED, "refused by the test")
        return await self._inner.connect(host, port, local_address=local_address)


async def test_an_unreachable_guard_waits_for_its_retry_and_the_next_is_used(
    testnet: LoopbackNet,
) -> None:
    manager = testnet.client.manager
    assert manager is not None
    manager.max_clean = 0
    (first,) = manager.guards.guards  # the warm-up circuit's guard
    guard = next(r for r in testnet.relays if r.identity.public == first.identity)
    manager.close_all()
    for link in list(manager.links):
        await link.aclose()
    blocked = _Unreachable(testnet.network, guard.config.address)
    manager.links.network = blocked
    with trio.fail_after(30):
        handle = await echo_once(
            manager, testnet.origin_port, IsolationKey("api", b"alice")
        )
    assert blocked.refused == 1  # tried once, then skipped until its retry
    assert handle.path[0].identity != first.identity
    now = wall_clock()
    assert manager.guards.waiting(now) == {first.identity}
    assert first.identity not in manager.guards.preferred(now)
    assert first.identity in manager.guards.preferred(now + 600)  # 10 min later
    assert handle.path[0].identity in manager.guards.preferred(now)
