"""The relay's circuit table (relay/circuit.py), with links that only record."""

import hashlib

import trio
from hopchain.relay.circuit import Circuit, CircuitTable
from hopchain.relay.link import Link

from hopchain.crypto.onion import HopKeys
from hopchain.messages import EndReason
from hopchain.relaycircuit import RelayCircuit
from hopchain.wire import CellCommand


class RecordingLink:
    """Records what is sent and dropped, and reports a queued size per id."""

    def __init__(self, queued: dict[int, int] | None = None) -> None:
        self.sent: list[tuple[int, CellCommand, bytes]] = []
        self.dropped: list[int] = []
        self.queued = queued or {}

    def send(self, circ_id: int, command: CellCommand, body: bytes) -> bool:
        self.sent.append((circ_id, command, body))
        return True

    def queued_for(self, circ_id: int) -> int:
        return self.queued.get(circ_id, 0)

    def drop_circuit(self, circ_id: int) -> None:
        self.dropped.append(circ_id)
        self.queued.pop(circ_id, None)


def circuit(link: RecordingLink, circ_id: int) -> Circuit:
    prk = hashlib.blake2b(b"circuit %d" % circ_id, digest_size=32).digest()
    core = RelayCircuit(HopKeys.from_prk(prk), bytes(32), None)
    return Circuit(core, link, circ_id)  # type: ignore[arg-type]


def as_link(link: RecordingLink) -> Link:
    return link  # type: ignore[return-value]


DESTROY = (CellCommand.DESTROY, bytes([EndReason.DESTROYED]))


def test_teardown_destroys_both_sides_but_the_source_and_cancels_the_tasks() -> None:
    closed: list[int] = []
    table = CircuitTable(lambda: closed.append(len(table)))
    prev, nxt = RecordingLink(), RecordingLink()
    c = circuit(prev, 5)
    table.add(c)
    next_id = table.extended(c, as_link(nxt))
    assert next_id != 0
    assert c.next is nxt
    assert table.by_prev[(as_link(prev), 5)] is c
    assert table.by_next[(as_link(nxt), next_id)] is c
    assert table.on_link(as_link(nxt)) == [c] == table.on_link(as_link(prev))
    connecting = trio.CancelScope()
    c.connecting[1] = connecting

    table.teardown(c, notify_source=as_link(nxt))  # the next hop sent DESTROY
    assert prev.sent == [(5, *DESTROY)]
    assert nxt.sent == []
    assert connecting.cancel_called
    assert c.closed
    assert not table.by_prev
    assert not table.by_next
    assert closed == [0]
    table.teardown(c)  # a second teardown changes nothing
    assert closed == [0]
    assert prev.sent == [(5, *DESTROY)]


def test_new_circuit_ids_are_unique_on_a_link() -> None:
    table = CircuitTable(lambda: None)
    prev, nxt = RecordingLink(), RecordingLink()
    ids = set()
    for n in range(1, 200):
        c = circuit(prev, n)
        table.add(c)
        ids.add(table.extended(c, as_link(nxt)))
    assert len(ids) == 199
    assert 0 not in ids


def test_close_largest_closes_the_circuits_holding_the_most() -> None:
    table = CircuitTable(lambda: None)
    prev = RecordingLink({1: 100, 2: 5000, 3: 40})
    nxt = RecordingLink()
    circuits = {n: circuit(prev, n) for n in (1, 2, 3)}
    for c in circuits.values():
        table.add(c)
    nxt_id = table.extended(circuits[1], as_link(nxt))
    nxt.queued[nxt_id] = 3000  # circuit 1 holds 3,100 bytes over its two links

    victims = table.close_largest(queued=8140, target=1000)
    assert victims == [circuits[2], circuits[1]]
    assert sorted(prev.dropped) == [1, 2]
    assert nxt.dropped == [nxt_id]
    assert circuits[1].closed
    assert circuits[2].closed
    assert not circuits[3].closed
    assert list(table.by_prev.values()) == [circuits[3]]
