"""The directory authority: tests relays, votes, and serves a signed consensus.

A relay publishes its signed descriptor; before listing it the authority
opens a link to the relay's advertised address and completes the link
handshake with the onion key from the descriptor, which proves both that the
relay is reachable and that it holds the key.  It re-tests every listed
relay each ``test_interval`` for Running and uptime (``hopchain.flags``);
the operator marks bad exits.  Each relay is listed with a country (GeoIP
for a public address, verified; else as declared) and a bandwidth (its
observed throughput capped by its declared one, ``voting.listed_bandwidth``).

With peers (other authorities, ``--peer``), the authorities vote
(``hopchain.voting``): at the start of each period every authority signs a
vote with its own view and sends it to its peers; after the collection
delay it combines the votes it holds (if they come from more than half of
the authorities), signs the result and sends its signature to its peers,
adding theirs when they signed the same document.  It serves the newest
consensus signed by more than half of the authorities.  Without peers (a
single-authority network, such as a one-authority demo) it builds and
signs the consensus from its own vote whenever asked and something changed.
"""

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Final

import trio
from hopchain.relay.dirclient import AuthorityAddress, request
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
from hopchain.crypto.primitives import ed25519_verify
from hopchain.directory import (
    Descriptor,
    Listing,
    SignedDescriptor,
    Vote,
    consensus_signing_message,
    sign_consensus,
    sign_vote,
    utc_text,
    verify_descriptor,
    verify_vote,
)
from hopchain.errors import DirectoryError
from hopchain.flags import (
    TEST_NETWORK_THRESHOLDS,
    Observation,
    Thresholds,
    assign_flags,
)
from hopchain.geoip import GeoIPDatabase, relay_country
from hopchain.voting import Schedule, combine, listed_bandwidth, majority

logger = logging.getLogger(__name__)

RELAY_LIFETIME: Final = 3 * 3600.0
REACHABILITY_TIMEOUT: Final = 10.0
REQUEST_TIMEOUT: Final = 30.0
KEEP_PERIODS: Final = 4  # votes and signatures kept for this many periods


@dataclass(frozen=True, slots=True)
class _Listed:
    signed: SignedDescriptor
    tested_at: float  # last successful reachability test (trio time)
    up_since: float  # start of the current run of successful tests
    running: bool = True


@dataclass
class _Round:
    """One voting period as this authority sees it."""

    votes: dict[bytes, Vote] = field(default_factory=dict)
    body: bytes | None = None  # the consensus body this authority computed
    signatures: dict[bytes, bytes] = field(default_factory=dict)
    early: dict[bytes, bytes] = field(default_factory=dict)  # before `body`


class AuthorityNode:
    """A directory authority (see the module docstring).

    ``peers`` are the other authorities (this one's own address may be
    among them and is skipped).  ``schedule`` gives the voting interval
    (and, alone, the consensus lifetime).  With peers and ``timed_rounds``,
    ``serve`` votes at every period start; without ``timed_rounds`` the
    owner drives the rounds by calling ``vote`` and then ``compute`` on
    every authority (tests, simulations).
    """

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
        peers: list[AuthorityAddress] | None = None,
        schedule: Schedule = Schedule(),  # noqa: B008 (frozen)
        timed_rounds: bool = True,
    ) -> None:
        self.identity = identity
        self.geoip = geoip
        self.bad_exits = bad_exits
        self.test_interval = test_interval
        self.address = address
        self.port = port
        self.network = network
        self.test_network = test_network
        self.schedule = schedule
        self.timed_rounds = timed_rounds
        self.peers: list[AuthorityAddress] = []
        self.set_peers(peers or [])
        self._relays: dict[bytes, _Listed] = {}
        self._rounds: dict[float, _Round] = {}
        self._served: bytes | None = None
        self._served_after = -1.0  # valid-after of the served consensus
        self._single_made = -1.0  # trio time of the last single-authority build

    def set_peers(self, peers: list[AuthorityAddress]) -> None:
        """The other authorities (before the first round)."""
        own = self.identity.public
        unique = {p.key: p for p in peers if p.key != own}
        self.peers = list(unique.values())

    @property
    def authority_keys(self) -> frozenset[bytes]:
        """Every configured authority's key, this one's included."""
        return frozenset([self.identity.public, *(p.key for p in self.peers)])

    async def serve(
        self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Answer directory requests (and vote, with peers) until cancelled."""
        listeners = await self.network.listen(self.address, self.port)
        self.port = bound_port(listeners)
        logger.info(
            "authority %s listening on port %d, %d peers",
            fingerprint(self.identity.public),
            self.port,
            len(self.peers),
        )
        task_status.started(self.port)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._test_loop)
            if self.peers and self.timed_rounds:
                nursery.start_soon(self._voting_loop)
            await trio.serve_listeners(self.handle, listeners)

    # --- reachability -------------------------------------------------------

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
                    self.listing_changed()

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

    # --- requests -----------------------------------------------------------

    async def handle(self, stream: trio.abc.Stream) -> None:
        """Answer one directory request on ``stream``, then close it."""
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
        try:
            if op == "consensus":
                consensus = self.consensus()
                if consensus is None:
                    return {"error": "no consensus signed by a majority yet"}
                return {"consensus": consensus}
            if op == "publish":
                raw = request.get("descriptor")
                if not isinstance(raw, bytes):
                    return {"error": "publish without a descriptor"}
                await self._publish(raw)
                return {"ok": True}
            if op == "vote":
                raw = request.get("vote")
                if not isinstance(raw, bytes):
                    return {"error": "vote op without a vote"}
                self.receive_vote(raw)
                return {"ok": True}
            if op == "signature":
                self.receive_signature(
                    request.get("valid_after"),
                    request.get("authority"),
                    request.get("signature"),
                )
                return {"ok": True}
        except DirectoryError as exc:
            return {"error": str(exc)}
        return {"error": f"unknown op {op!r}"}

    async def _publish(self, raw: bytes) -> None:
        signed = verify_descriptor(raw, wall_clock())
        desc = signed.descriptor
        if desc.test_network and not self.test_network:
            raise DirectoryError("test-network relays are refused by this authority")
        if not await self._reachable(desc):
            self._relays.pop(desc.identity, None)
            self.listing_changed()
            raise DirectoryError("relay not reachable at its address")
        previous = self._relays.get(desc.identity)
        now = trio.current_time()
        up_since = previous.up_since if previous and previous.running else now
        self._relays[desc.identity] = _Listed(signed, now, up_since)
        if previous is None or previous.signed.raw != raw:
            self.listing_changed()
        if previous is None:
            logger.info(
                "listed relay %s (%s)%s",
                desc.nickname,
                fingerprint(desc.identity),
                " exit" if desc.exit_ports else "",
            )

    # --- this authority's view ----------------------------------------------

    def own_vote(
        self, valid_after: float, fresh_until: float, valid_until: float
    ) -> Vote:
        """This authority's vote: every relay it lists, with its measurements
        (relays not reachable for ``RELAY_LIFETIME`` are dropped first)."""
        now_mono = trio.current_time()
        for key in [
            k
            for k, v in self._relays.items()
            if now_mono - v.tested_at > RELAY_LIFETIME
        ]:
            del self._relays[key]
        listed = sorted(
            self._relays.values(), key=lambda v: v.signed.descriptor.identity
        )
        bandwidths = [
            listed_bandwidth(
                v.signed.descriptor.bandwidth, v.signed.descriptor.observed_bandwidth
            )
            for v in listed
        ]
        # Flags judge the bandwidth the authority lists, not the declared one.
        flags = assign_flags(
            [
                Observation(
                    _with_bandwidth(v.signed.descriptor, bandwidth),
                    v.running,
                    now_mono - v.up_since,
                )
                for v, bandwidth in zip(listed, bandwidths, strict=True)
            ],
            TEST_NETWORK_THRESHOLDS if self.test_network else Thresholds(),
            self.bad_exits,
        )
        listings = []
        for entry, relay_flags, bandwidth in zip(
            listed, flags, bandwidths, strict=True
        ):
            desc = entry.signed.descriptor
            country, verified = relay_country(desc.address, desc.country, self.geoip)
            listings.append(
                Listing(entry.signed, relay_flags, country, verified, bandwidth)
            )
        return Vote(
            self.identity.public,
            valid_after,
            fresh_until,
            valid_until,
            tuple(listings),
        )

    def listing_changed(self) -> None:
        """The operator changed a setting (``bad_exits``): a single authority
        re-signs at the next request; voting authorities use it from the next
        period on."""
        self._single_made = -1.0

    def consensus(self) -> bytes | None:
        """The consensus this authority serves (None: none signed by a
        majority yet)."""
        if not self.peers:
            self._single_authority_consensus()
        return self._served

    def _single_authority_consensus(self) -> None:
        """Alone, sign a consensus from the own vote whenever the listed set
        changed or half of the interval has passed."""
        schedule = self.schedule
        now_mono = trio.current_time()
        expired = any(
            now_mono - v.tested_at > RELAY_LIFETIME for v in self._relays.values()
        )
        if (
            self._served is not None
            and not expired
            and self._single_made >= 0
            and now_mono - self._single_made <= schedule.interval / 2
        ):
            return
        vote = self.own_vote(*schedule.times(wall_clock()))
        body = combine([vote], 1)
        signature = self.identity.sign(consensus_signing_message(body))
        self._served = sign_consensus(body, [(self.identity.public, signature)])
        self._single_made = now_mono

    # --- voting -------------------------------------------------------------

    async def _voting_loop(self) -> None:
        """Vote at each period start; combine after the collection delay.

        Sending to the peers is cut off after the collection delay, so a peer
        that accepts connections but never answers cannot hold up a round
        (a vote that late would be dropped anyway).
        """
        schedule = self.schedule
        while True:
            valid_after = schedule.next_period(wall_clock())
            await trio.sleep(max(0.0, valid_after - wall_clock()))
            try:
                with trio.move_on_after(schedule.collect_delay):
                    await self.vote(valid_after)
                await trio.sleep(
                    max(0.0, valid_after + schedule.collect_delay - wall_clock())
                )
                with trio.move_on_after(schedule.collect_delay):
                    await self.compute(valid_after)
            except DirectoryError as exc:  # a peer's votes crowded the period out
                logger.warning("voting round failed: %s", exc)

    def _round(self, valid_after: float) -> _Round:
        """The state of a period, created on demand.  Only the newest
        ``KEEP_PERIODS`` are kept, so memory stays bounded.

        Raises:
            DirectoryError: the period is older than every one kept.
        """
        state = self._rounds.get(valid_after)
        if state is None:
            if len(self._rounds) >= KEEP_PERIODS:
                oldest = min(self._rounds)
                if valid_after < oldest:
                    raise DirectoryError("period is long gone")
                del self._rounds[oldest]
            state = self._rounds[valid_after] = _Round()
        return state

    async def vote(self, valid_after: float) -> None:
        """Make, keep and send this authority's vote for the period."""
        vote = self.own_vote(*self.schedule.times(valid_after))
        self._round(valid_after).votes[vote.authority] = vote
        raw = sign_vote(vote, self.identity.sign)
        logger.info(
            "voting for the period from %s: %d relays",
            utc_text(valid_after),
            len(vote.listings),
        )
        await self._to_peers({"op": "vote", "vote": raw}, "vote")

    def receive_vote(self, raw: bytes) -> None:
        """A peer's vote: kept for its period unless that was already combined.

        Raises:
            DirectoryError: the vote does not verify, or it is this
                authority's own key.
        """
        vote = verify_vote(raw, self.authority_keys, wall_clock())
        if vote.authority == self.identity.public:
            raise DirectoryError("a vote under this authority's own key")
        current = self._rounds.get(vote.valid_after)
        if current is not None and current.body is not None:
            logger.info(
                "late vote from %s for a period already combined",
                fingerprint(vote.authority),
            )
            return
        self._round(vote.valid_after).votes[vote.authority] = vote

    async def compute(self, valid_after: float) -> None:
        """Combine the period's votes, sign, and send the signature to peers."""
        state = self._round(valid_after)
        count = len(self.authority_keys)
        if len(state.votes) < majority(count):
            logger.warning(
                "votes from %d of %d authorities for the period from %s: "
                "not enough for a consensus",
                len(state.votes),
                count,
                utc_text(valid_after),
            )
            return
        state.body = combine(list(state.votes.values()), count)
        message = consensus_signing_message(state.body)
        signature = self.identity.sign(message)
        state.signatures[self.identity.public] = signature
        for key, early in state.early.items():
            self._add_signature(state, valid_after, key, early)
        state.early.clear()
        self._maybe_serve(valid_after, state)
        await self._to_peers(
            {
                "op": "signature",
                "valid_after": valid_after,
                "authority": self.identity.public,
                "signature": signature,
            },
            "signature",
        )

    def receive_signature(
        self, valid_after: object, authority: object, signature: object
    ) -> None:
        """A peer's signature on its consensus for a period.

        Only for a period this authority holds votes for: the request is not
        authenticated until the signature is checked, and a period made on
        demand would push the current one out of the ``KEEP_PERIODS`` kept.

        Raises:
            DirectoryError: malformed, from an authority not configured, or
                for a period without votes here.
        """
        if not (
            isinstance(valid_after, float)
            and isinstance(authority, bytes)
            and isinstance(signature, bytes)
        ):
            raise DirectoryError("signature op needs valid_after, authority, signature")
        if authority not in self.authority_keys - {self.identity.public}:
            raise DirectoryError("signature from an authority that is not configured")
        state = self._rounds.get(valid_after)
        if state is None:
            raise DirectoryError("signature for a period without votes here")
        if state.body is None:
            state.early[authority] = signature
            return
        self._add_signature(state, valid_after, authority, signature)
        self._maybe_serve(valid_after, state)

    def _add_signature(
        self, state: _Round, valid_after: float, key: bytes, signature: bytes
    ) -> None:
        assert state.body is not None
        if ed25519_verify(key, consensus_signing_message(state.body), signature):
            state.signatures[key] = signature
        else:
            logger.warning(
                "authority %s signed a different consensus for the period from %s",
                fingerprint(key),
                utc_text(valid_after),
            )

    def _maybe_serve(self, valid_after: float, state: _Round) -> None:
        """Serve the period's consensus once a majority signed it (and
        re-issue it as more signatures arrive)."""
        assert state.body is not None
        if valid_after < self._served_after:
            return
        if len(state.signatures) < majority(len(self.authority_keys)):
            return
        if valid_after > self._served_after:
            logger.info(
                "consensus for the period from %s signed by %d of %d authorities",
                utc_text(valid_after),
                len(state.signatures),
                len(self.authority_keys),
            )
        self._served = sign_consensus(state.body, sorted(state.signatures.items()))
        self._served_after = valid_after

    async def _to_peers(self, message: dict[str, object], what: str) -> None:
        """Send one message to every peer at once; failures are logged."""

        async def send(peer: AuthorityAddress) -> None:
            try:
                await request(self.network, peer, message)
            except DirectoryError as exc:
                logger.warning(
                    "sending the %s to %s:%d failed: %s",
                    what,
                    peer.host,
                    peer.port,
                    exc,
                )

        async with trio.open_nursery() as nursery:
            for peer in self.peers:
                nursery.start_soon(send, peer)


def _with_bandwidth(desc: Descriptor, bandwidth: int) -> Descriptor:
    """The descriptor as the authority judges it: its listed bandwidth."""
    return dataclasses.replace(desc, bandwidth=bandwidth)
