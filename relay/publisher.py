"""Descriptor publishing: the relay's signed descriptor, uploaded to every
authority once a publish interval, again at once when it changed (a new
onion key, a reloaded exit policy or bandwidth), and retried every
``PUBLISH_RETRY`` seconds while no authority accepts it.
"""

import logging
from collections.abc import Callable, Sequence
from typing import Final

import trio
from hopchain.relay import dirclient
from hopchain.relay.dirclient import AuthorityAddress
from hopchain.relay.net import Network

from hopchain.errors import DirectoryError

__all__ = ["PUBLISH_RETRY", "Publisher"]

logger = logging.getLogger(__name__)

PUBLISH_RETRY: Final = 2.0


class Publisher:
    """Publishes what ``descriptor()`` returns (``RelayNode.publisher``).

    ``published`` is set once an authority has accepted a descriptor.
    """

    def __init__(
        self,
        network: Network,
        authorities: Sequence[AuthorityAddress],
        descriptor: Callable[[], bytes],
        interval: float,
    ) -> None:
        self.network = network
        self.authorities = list(authorities)
        self.descriptor = descriptor
        self.interval = interval
        self.published = trio.Event()
        self._republish = trio.Event()

    def republish(self) -> None:
        """The descriptor changed: publish it now, not at the next interval."""
        self._republish.set()

    async def run(self) -> None:
        """Publish until cancelled."""
        while True:
            ok = await self._publish_everywhere(self.descriptor())
            if not ok:
                await trio.sleep(PUBLISH_RETRY)
                continue
            if not self.published.is_set():
                logger.info("descriptor published to %d authorities", ok)
            self.published.set()
            with trio.move_on_after(self.interval):
                await self._republish.wait()
            self._republish = trio.Event()

    async def _publish_everywhere(self, descriptor: bytes) -> int:
        """Upload to every authority at once (one that is down does not hold
        up the others); returns how many accepted."""
        accepted = 0

        async def publish(authority: AuthorityAddress) -> None:
            nonlocal accepted
            try:
                await dirclient.publish(self.network, authority, descriptor)
            except DirectoryError as exc:
                logger.warning(
                    "publishing to %s:%d failed: %s",
                    authority.host,
                    authority.port,
                    exc,
                )
                return
            accepted += 1

        async with trio.open_nursery() as nursery:
            for authority in self.authorities:
                nursery.start_soon(publish, authority)
        return accepted
