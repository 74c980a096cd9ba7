"""The directory authority: collects descriptors, tests relays, signs a consensus.

A relay publishes its signed descriptor; before listing it the authority
opens a link to the relay's advertised address and completes the link
handshake with the onion key from the descriptor, which proves both that the
relay is reachable and that it holds the key.  The consensus lists every
relay that passed within ``RELAY_LIFETIME`` and is re-signed whenever the set
changes or it is half-way to its fresh-until time.

Flags come from what the authority measures (``hopchain.flags``): it
re-tests every listed relay's reachability each ``test_interval`` and
tracks its uptime; the operator marks bad exits.  Each relay is listed with a
country: with a GeoIP database (Tor's geoip/geoip6 files), a public address's
country from it (verified); otherwise the country the relay declares (as for
the loopback addresses of test networks), marked as declared.  Bandwidth
measurement and multi-authority voting are documented as future work in
docs/protocol.md.
"""

import logging
from dataclasses import dataclass
from typing import Final

import trio
from hopchain.relay.link import LINK_SETUP_ERRORS, initiate
from hopchain.relay.net import (
    BufferedReader,
    Network,
    bound_port,
    receive_message,
    send_message,
    wall_clock,
)

from hopchain.crypto.keys import IdentityKey, fingerprint
from hopchain.directory import (
    Descriptor,
    SignedDescriptor,
    build_consensus,
    consensus_signing_message,
    sign_consensus,
    verify_descriptor,
)
from hopchain.errors import DirectoryError
from hopchain.flags import (
    TEST_NETWORK_THRESHOLDS,
    Observation,
    Thresholds,
    assign_flags,
)
from hopchain.geoip import GeoIPDatabase, relay_country

logger = logging.getLogger(__name__)

RELAY_LIFETIME: Final = 3 * 3600.0
FRESH_FOR: Final = 600.0
VALID_FOR: Final = 3 * 3600.0
REACHABILITY_TIMEOUT: Final = 10.0
REQUEST_TIMEOUT: Final = 30.0


@dataclass(frozen=True, slots=True)
class _Listed:
    signed: SignedDescriptor
    tested_at: float  # last successful reachability test (trio time)
    up_since: float  # start of the current run of successful tests
    running: bool = True


class AuthorityNode:
    """A directory authority (see the module docstring)."""

    def __init__(
        self,
        identity: IdentityKey,
        address: str,
        port: int,
        network: Network,
        *,
        test_network: bool = False,
        geoip: GeoIPDatabase | None = None,
        bad_exits: frozenset[bytes] = frozenset(),
        test_interval: float = 60.0,
    ) -> None:
        self.identity = identity
        self.geoip = geoip
        self.bad_exits = bad_exits
        self.test_interval = test_interval
        self.address = address
        self.port = port
        self.network = network
        self.test_network = test_network
        self._relays: dict[bytes, _Listed] = {}
        self._consensus: bytes | None = None
        self._consensus_made = 0.0

    async def serve(
        self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Answer publish and consensus requests until cancelled."""
        listeners = await self.network.listen(self.address, self.port)
        self.port = bound_port(listeners)
        logger.info(
            "authority %s listening on port %d",
            fingerprint(self.identity.public),
            self.port,
        )
        task_status.started(self.port)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._test_loop)
            await trio.serve_listeners(self._handle, listeners)

    async def _test_loop(self) -> None:
        """Re-test every listed relay's reachability, for Running and uptime."""
        while True:
            await trio.sleep(self.test_interval)
            for identity, entry in list(self._relays.items()):
                running = await self._reachable(entry.signed.descriptor)
                now = trio.current_time()
                if identity not in self._relays:
                    continue
                if running:
                    up_since = entry.up_since if entry.running else now
                    self._relays[identity] = _Listed(entry.signed, now, up_since)
                else:
                    self._relays[identity] = _Listed(
                        entry.signed, entry.tested_at, now, running=False
                    )
                if running != entry.running:
                    logger.info(
                        "relay %s is %s",
                        entry.signed.descriptor.nickname,
                        "reachable again" if running else "not reachable",
                    )
                    self._consensus = None

    async def _reachable(self, desc: Descriptor) -> bool:
        """Whether a link handshake with the relay succeeds now."""
        try:
            with trio.fail_after(REACHABILITY_TIMEOUT):
                stream = await self.network.connect(desc.address, desc.or_port)
                link = await initiate(stream, desc.identity, desc.onion_key)
                await link.aclose()
        except LINK_SETUP_ERRORS:
            return False
        return True

    async def _handle(self, stream: trio.abc.Stream) -> None:
        async with stream:
            try:
                with trio.fail_after(REQUEST_TIMEOUT):
                    request = await receive_message(BufferedReader(stream))
                    reply = await self._answer(request)
                    await send_message(stream, reply)
            except (
                ValueError,
                EOFError,
                trio.TooSlowError,
                trio.BrokenResourceError,
            ) as exc:
                logger.info("dropping a directory request: %s", exc)

    async def _answer(self, request: object) -> dict[str, object]:
        if not isinstance(request, dict):
            return {"error": "request is not a map"}
        op = request.get("op")
        if op == "consensus":
            return {"consensus": self.consensus()}
        if op == "publish":
            raw = request.get("descriptor")
            if not isinstance(raw, bytes):
                return {"error": "publish without a descriptor"}
            try:
                await self._publish(raw)
            except DirectoryError as exc:
                return {"error": str(exc)}
            return {"ok": True}
        return {"error": f"unknown op {op!r}"}

    async def _publish(self, raw: bytes) -> None:
        signed = verify_descriptor(raw, wall_clock())
        desc = signed.descriptor
        if desc.test_network and not self.test_network:
            raise DirectoryError("test-network relays are refused by this authority")
        if not await self._reachable(desc):
            self._relays.pop(desc.identity, None)
            self._consensus = None
            raise DirectoryError("relay not reachable at its address")
        previous = self._relays.get(desc.identity)
        now = trio.current_time()
        up_since = previous.up_since if previous and previous.running else now
        self._relays[desc.identity] = _Listed(signed, now, up_since)
        if previous is None or previous.signed.raw != raw:
            self._consensus = None
        if previous is None:
            logger.info(
                "listed relay %s (%s)%s",
                desc.nickname,
                fingerprint(desc.identity),
                " exit" if desc.exit_ports else "",
            )

    def consensus(self) -> bytes:
        """The current signed consensus, rebuilt when needed."""
        now_mono = trio.current_time()
        expired = [
            k
            for k, v in self._relays.items()
            if now_mono - v.tested_at > RELAY_LIFETIME
        ]
        for key in expired:
            del self._relays[key]
        if (
            self._consensus is None
            or expired
            or now_mono - self._consensus_made > FRESH_FOR / 2
        ):
            now = wall_clock()
            listed = sorted(
                self._relays.values(), key=lambda v: v.signed.descriptor.identity
            )
            flags = assign_flags(
                [
                    Observation(v.signed.descriptor, v.running, now_mono - v.up_since)
                    for v in listed
                ],
                TEST_NETWORK_THRESHOLDS if self.test_network else Thresholds(),
                self.bad_exits,
            )
            entries = []
            for entry, relay_flags in zip(listed, flags, strict=True):
                desc = entry.signed.descriptor
                country, verified = relay_country(
                    desc.address, desc.country, self.geoip
                )
                entries.append((entry.signed.raw, relay_flags, country, verified))
            body = build_consensus(entries, now, now + FRESH_FOR, now + VALID_FOR)
            signature = self.identity.sign(consensus_signing_message(body))
            self._consensus = sign_consensus(body, [(self.identity.public, signature)])
            self._consensus_made = now_mono
        return self._consensus
