"""A relay's circuits as its shell sees them, and the table that finds them.

``Circuit`` joins the core's ``RelayCircuit`` to the two links it uses, the
previous hop's (toward the client) and, once extended, the next hop's, and
holds the exit streams and pending exit tasks on it.  ``CircuitTable``
finds a circuit from the link and circuit id a cell arrived with, in
either direction, and tears circuits down: DESTROY to the other side,
streams aborted, pending tasks cancelled.  Its out-of-memory handler
closes the circuits holding the most queued cells.
"""

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import trio
from hopchain.relay.link import Link
from hopchain.relay.stream import CircuitStream, CreditSignal

from hopchain.messages import EndReason
from hopchain.oom import select_victims
from hopchain.relaycircuit import RelayCircuit
from hopchain.wire import CellCommand

__all__ = ["Circuit", "CircuitTable"]


@dataclass(eq=False)
class Circuit:
    """One circuit: core state, its links, and its exit streams and tasks."""

    core: RelayCircuit
    prev: Link
    prev_id: int
    next: Link | None = None
    next_id: int = 0
    streams: dict[int, CircuitStream] = field(default_factory=dict)
    connecting: dict[int, trio.CancelScope] = field(default_factory=dict)
    resolving: dict[int, trio.CancelScope] = field(default_factory=dict)
    half_closed: set[int] = field(default_factory=set)
    credit: CreditSignal = field(default_factory=CreditSignal)
    closed: bool = False

    def queued(self) -> int:
        """Cell bytes of this circuit waiting in its links' send queues."""
        queued = self.prev.queued_for(self.prev_id)
        if self.next is not None:
            queued += self.next.queued_for(self.next_id)
        return queued


class CircuitTable:
    """The open circuits, by (link, circuit id) on either side.

    ``on_closed`` is called after each teardown (the node counts it, and
    a draining node checks whether it is done).
    """

    def __init__(self, on_closed: Callable[[], None]) -> None:
        self.by_prev: dict[tuple[Link, int], Circuit] = {}
        self.by_next: dict[tuple[Link, int], Circuit] = {}
        self._on_closed = on_closed

    def __len__(self) -> int:
        return len(self.by_prev)

    def add(self, circuit: Circuit) -> None:
        """A circuit a CREATE made."""
        self.by_prev[(circuit.prev, circuit.prev_id)] = circuit

    def extended(self, circuit: Circuit, link: Link) -> int:
        """Give ``circuit`` a new circuit id on ``link``, its next hop."""
        while True:
            circ_id = secrets.randbits(32) or 1
            if (link, circ_id) not in self.by_next:
                break
        circuit.next, circuit.next_id = link, circ_id
        self.by_next[(link, circ_id)] = circuit
        return circ_id

    def on_link(self, link: Link) -> list[Circuit]:
        """The circuits that use ``link``, on either side."""
        return [
            circuit
            for key, circuit in [*self.by_prev.items(), *self.by_next.items()]
            if key[0] is link
        ]

    def teardown(self, circuit: Circuit, notify_source: Link | None = None) -> None:
        """Close ``circuit``: DESTROY to each side but ``notify_source`` (the
        link the DESTROY came from, or that closed), abort its streams and
        cancel its pending connects and lookups."""
        if circuit.closed:
            return
        circuit.closed = True
        self.by_prev.pop((circuit.prev, circuit.prev_id), None)
        destroy = bytes([EndReason.DESTROYED])
        if circuit.prev is not notify_source:
            circuit.prev.send(circuit.prev_id, CellCommand.DESTROY, destroy)
        if circuit.next is not None:
            self.by_next.pop((circuit.next, circuit.next_id), None)
            if circuit.next is not notify_source:
                circuit.next.send(circuit.next_id, CellCommand.DESTROY, destroy)
        for stream in circuit.streams.values():
            stream.abort()
        for scope in [*circuit.connecting.values(), *circuit.resolving.values()]:
            scope.cancel()
        circuit.credit.fire()
        self._on_closed()

    def close_largest(self, queued: int, target: int) -> list[Circuit]:
        """The out-of-memory handler's work: close the circuits holding the
        most queued cells (``oom.select_victims``), dropping those cells,
        until ``queued`` bytes would be down to ``target``.  Returns them."""
        circuits = {*self.by_prev.values(), *self.by_next.values()}
        sizes = {circuit: circuit.queued() for circuit in circuits}
        victims = select_victims(sizes, queued, target)
        for circuit in victims:
            circuit.prev.drop_circuit(circuit.prev_id)
            if circuit.next is not None:
                circuit.next.drop_circuit(circuit.next_id)
            self.teardown(circuit)
        return victims
