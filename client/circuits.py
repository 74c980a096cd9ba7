"""The client's circuit manager: the one object the client's listeners use.

``CircuitManager`` puts together the pieces of the client's circuit
lifecycle, each in its own module:

- ``hopchain.client.handle``: ``ClientCircuitHandle``, a circuit as the
  shell sees it, and the one-shot ``Reply`` its tasks wait on;
- ``hopchain.client.links``: one link per guard and its reader task, which
  hands every cell to its circuit (``CircuitTable``), and the silence
  tracking of links;
- ``hopchain.client.rules``: the path constraints for a stream (country
  rules, guard set, exits refused by the egress check);
- ``hopchain.client.building``: path choice, the hop-by-hop build within the
  learned timeout, retries, and what a failed build means for the guard;
- ``hopchain.client.reuse``: which open circuit a new stream may use
  (dirtiness, isolation, NEWNYM epochs) and the retirement of stale ones;
- ``hopchain.client.attach``: BEGIN and RESOLVE on a circuit, the stream
  timeout rule (a circuit on which a stream got no answer takes no new
  stream, and the stream is retried once on another), the egress check
  (``hopchain.client.egresscheck``);
- ``hopchain.client.ahead``: clean circuits built ahead for predicted ports.

A stream looks for a reusable circuit first and otherwise builds one, one
build at a time (``_build_lock``), so that streams arriving together share
the circuit the first of them built.
"""

import random
from collections.abc import Callable

import trio
from hopchain.client.ahead import PredictedCircuits
from hopchain.client.attach import STREAM_TIMEOUT, StreamAttacher
from hopchain.client.building import CircuitBuilder
from hopchain.client.egresscheck import EgressChecks
from hopchain.client.handle import CLEAN_LIFETIME, ClientCircuitHandle
from hopchain.client.links import CircuitTable, GuardLinks
from hopchain.client.reuse import ReusePolicy
from hopchain.client.rules import StreamRules
from hopchain.relay.net import Network
from hopchain.relay.stream import CircuitStream

from hopchain.buildtime import BuildTimes
from hopchain.circuit import CircuitState
from hopchain.crypto.keys import fingerprint
from hopchain.directory import Consensus
from hopchain.errors import DirectoryError
from hopchain.geoip import GeoIPDatabase
from hopchain.guards import GuardSet
from hopchain.isolation import IsolationKey
from hopchain.path import CountryRules
from hopchain.predicted import MAX_CLEAN, PredictedPorts

__all__ = [
    "CLEAN_LIFETIME",
    "STREAM_TIMEOUT",
    "CircuitManager",
    "ClientCircuitHandle",
]


class CircuitManager:
    """Builds circuits and attaches streams (see the module docstring)."""

    def __init__(
        self,
        network: Network,
        consensus: Callable[[], Consensus],
        *,
        hops: int,
        same_subnet_ok: bool,
        dirtiness: float,
        rng: random.Random,
        nursery: trio.Nursery,
        countries: CountryRules | None = None,
        guards: GuardSet | None = None,
        on_guards_changed: Callable[[GuardSet], None] | None = None,
        geoip: GeoIPDatabase | None = None,
        max_clean: int = MAX_CLEAN,
        stream_timeout: float = STREAM_TIMEOUT,
    ) -> None:
        self._consensus = consensus
        self.table = CircuitTable()
        self.links = GuardLinks(network, self.table, nursery)
        self.rules = StreamRules(
            hops=hops,
            same_subnet_ok=same_subnet_ok,
            countries=countries or CountryRules(),
            guards=guards or GuardSet(),
        )
        self.builder = CircuitBuilder(
            self.table, self.links, self.rules, consensus, rng, on_guards_changed
        )
        self.reuse = ReusePolicy(
            self.table, self.links, self.rules, dirtiness=dirtiness
        )
        self.ahead = PredictedCircuits(
            self.table, self.reuse, self._build_ahead, max_clean=max_clean
        )
        self.attacher = StreamAttacher(
            self.circuit_for,
            self.links,
            self.reuse,
            EgressChecks(self.rules, geoip),
            self.ahead,
            stream_timeout=stream_timeout,
        )
        self._build_lock = trio.Lock()

    # --- state other parts of the client read or set ------------------------

    @property
    def guards(self) -> GuardSet:
        """The guard set (saved through ``on_guards_changed`` when it changes)."""
        return self.rules.guards

    @property
    def build_times(self) -> BuildTimes:
        """Recent build times and the build timeout they imply."""
        return self.builder.build_times

    @build_times.setter
    def build_times(self, value: BuildTimes) -> None:
        self.builder.build_times = value

    @property
    def built(self) -> int:
        """Circuits built so far."""
        return self.builder.built

    @property
    def epoch(self) -> int:
        """The NEWNYM epoch new circuits are built in."""
        return self.reuse.epoch

    @property
    def predicted(self) -> PredictedPorts:
        """The ports streams used recently (circuits are built ahead for them)."""
        return self.ahead.ports

    @property
    def max_clean(self) -> int:
        """At most this many clean circuits are built ahead."""
        return self.ahead.max_clean

    @max_clean.setter
    def max_clean(self, value: int) -> None:
        self.ahead.max_clean = value

    def newnym(self) -> None:
        """New streams get new circuits from now on (Tor's NEWNYM).

        Circuits in use keep their streams; they are retired when idle.
        """
        self.reuse.newnym()

    # --- circuits ------------------------------------------------------------

    async def circuit_for(
        self, port: int | None, isolation: IsolationKey | None = None
    ) -> ClientCircuitHandle:
        """An open circuit for a stream to ``port`` with this isolation key.

        ``port`` None (a RESOLVE) accepts a circuit to any exit.

        A circuit that no stream has used yet is bound to the first key it
        serves; ``None`` (warm-up builds) binds nothing.

        Raises:
            CircuitError: every build attempt failed.
            PathSelectionError: the directory has no suitable path.
        """
        found = self.reuse.reusable(port, isolation, trio.current_time())
        if found is None:
            async with self._build_lock:
                found = self.reuse.reusable(port, isolation, trio.current_time())
                if found is None:
                    found = await self.build(port, isolation)
        if isolation is not None and found.isolation is None:
            found.isolation = isolation
        return found

    async def build(
        self, port: int | None, isolation: IsolationKey | None = None
    ) -> ClientCircuitHandle:
        """Build a fresh circuit for ``port`` (None: any exit), retrying.

        The exit satisfies the country constraints of ``isolation``.
        """
        handle = await self.builder.build(port, isolation)
        handle.epoch = self.reuse.epoch
        return handle

    async def _build_ahead(self, port: int) -> None:
        async with self._build_lock:
            await self.build(port)

    def close_all(self) -> None:
        """Destroy every circuit (bench/circuit_build.py cleans up with it)."""
        for handle in self.table:
            self.table.destroy(handle)

    def describe(self) -> list[dict[str, object]]:
        """The circuits, for status output and ``hopchain circuits`` (no
        destinations): each hop's nickname, fingerprint prefix, country and
        consensus flags; age, state and stream count."""
        now = trio.current_time()
        try:
            flags = {r.descriptor.identity: r.flags for r in self._consensus().relays}
        except DirectoryError:
            flags = {}
        groups: dict[IsolationKey | None, int] = {}
        out: list[dict[str, object]] = []
        for handle in self.table:
            if handle.core.state is CircuitState.CLOSED or handle.link.closed:
                continue
            group = groups.setdefault(handle.isolation, len(groups))
            out.append(
                {
                    "id": handle.circ_id,
                    "exit": handle.exit_label,
                    "hops": len(handle.core.hops),
                    "path": [
                        {
                            "nickname": d.nickname,
                            "fingerprint": fingerprint(d.identity),
                            "country": d.country or "??",
                            "flags": sorted(flags.get(d.identity, ())),
                        }
                        for d in handle.path
                    ],
                    "state": self.reuse.state_of(handle, now),
                    "age_s": round(now - handle.built_at, 1) if handle.built_at else 0,
                    "streams": len(handle.streams),
                    "isolation_group": group,
                    "fresh": handle.epoch == self.epoch,
                }
            )
        return out

    # --- streams -------------------------------------------------------------

    async def open_stream(
        self, host: str, port: int, isolation: IsolationKey | None = None
    ) -> tuple[ClientCircuitHandle, CircuitStream]:
        """Open a stream to host:port through a circuit; returns once CONNECTED.

        Data that the exit sends right after CONNECTED is buffered in the
        returned stream, so server-first protocols lose nothing.  The caller
        closes the stream and then calls ``release``.  A stream is tried on
        at most two circuits (``hopchain.client.attach``).

        Raises:
            StreamError: the exit refused or could not connect (with reason),
                or did not answer in time (TIMEOUT).
            CircuitError, DirectoryError, PathSelectionError: no circuit.
        """
        return await self.attacher.open_stream(host, port, isolation)

    async def resolve(
        self, query: str, *, ptr: bool, isolation: IsolationKey | None = None
    ) -> list[str]:
        """Have an exit resolve ``query``: a name's addresses, or (``ptr``) an
        IP address's name; tried on at most two circuits as ``open_stream``.

        Raises:
            StreamError: the exit could not or would not resolve (the
                RESOLVED or END reason), or did not answer in time.
            CircuitError, DirectoryError, PathSelectionError: no circuit.
        """
        return await self.attacher.resolve(query, ptr=ptr, isolation=isolation)

    def release(self, handle: ClientCircuitHandle, stream: CircuitStream) -> None:
        """Forget a finished stream (and retire its circuit if it is stale).

        A closed stream stays registered until the exit's END has arrived
        too, so data still in flight is credited and reset, not lost.
        """
        self.attacher.release(handle, stream)

    # --- predicted ports -----------------------------------------------------

    async def keep_circuits_ready(self) -> None:
        """Keep clean circuits for the predicted ports, until cancelled
        (``hopchain.client.ahead``)."""
        await self.ahead.run()

    async def prepared(self) -> None:
        """Wait until the current (or next) pass of ``keep_circuits_ready``
        has ended."""
        await self.ahead.prepared()
