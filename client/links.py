"""The client's links to its guards and the circuits multiplexed on them.

``CircuitTable`` holds every circuit by (link, circuit id) and destroys them.
``GuardLinks`` keeps at most one link per guard identity, opened on demand
(under one lock) and reused until it closes, and runs a reader task per
link (``Link.serve``) that hands every incoming cell to its circuit
synchronously:

- a CREATED body, or an EXTENDED message, fills the circuit's
  ``build_reply``;
- RELAY cells go through ``ClientCircuit.receive``; CONNECTED, END and
  RESOLVED first go to a stream's waiting ``Reply``; after that, END(DONE)
  half-closes the ``CircuitStream`` and any other END aborts it; DATA goes
  to the stream; SENDME fires the circuit's credit signal;
- TRUNCATED, DESTROY or a ``ProtocolError`` destroy the circuit; when the
  link ends, every circuit on it is destroyed.

**Silence.**  A guard that goes silent (power cut, partition) sends no reset
and no end of stream, so the link stays open.  ``heard(link)`` is a mark
(the bytes received so far); a link is silent since a mark while nothing
has arrived on it.  ``suspect`` flags a link that stayed silent through a
whole stream attempt: circuits on it are not reused while it stays silent,
so the next circuit is built, and its CREATE on the same link tests the
guard (``hopchain.client.building``).  Any byte from the guard clears the
flag.  ``abandon`` closes a link the guard did not answer on.
"""

import logging
import secrets
from collections.abc import Iterator
from functools import partial

import trio
from hopchain.client.handle import CLOSED, ClientCircuitHandle
from hopchain.relay.link import LINK_SETUP_ERRORS, Link, initiate
from hopchain.relay.net import Network

from hopchain.directory import Descriptor
from hopchain.errors import CircuitError, ProtocolError
from hopchain.messages import (
    Connected,
    Data,
    End,
    EndReason,
    Extended,
    Resolved,
    Sendme,
    Truncated,
)
from hopchain.wire import Cell, CellCommand

logger = logging.getLogger(__name__)


class CircuitTable:
    """The client's circuits by (link, circuit id)."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[Link, int], ClientCircuitHandle] = {}

    def __iter__(self) -> Iterator[ClientCircuitHandle]:
        """Every registered circuit (a snapshot: destroying while iterating
        is allowed)."""
        return iter(list(self._by_key.values()))

    def __len__(self) -> int:
        return len(self._by_key)

    def get(self, link: Link, circ_id: int) -> ClientCircuitHandle | None:
        """The circuit with this id on this link, if any."""
        return self._by_key.get((link, circ_id))

    def add(self, handle: ClientCircuitHandle) -> None:
        """Register a circuit (its id comes from ``new_circ_id``)."""
        self._by_key[(handle.link, handle.circ_id)] = handle

    def new_circ_id(self, link: Link) -> int:
        """A random circuit id not in use on ``link``."""
        while True:
            circ_id = secrets.randbits(32) or 1
            if (link, circ_id) not in self._by_key:
                return circ_id

    def on_link(self, link: Link) -> list[ClientCircuitHandle]:
        """The circuits that run on ``link``."""
        return [h for (on, _), h in self._by_key.items() if on is link]

    def destroy(self, handle: ClientCircuitHandle, *, notify: bool = True) -> None:
        """Close a circuit: abort its streams, wake its waiters with
        ``CLOSED``, and send DESTROY unless ``notify`` is false (the guard
        already knows)."""
        if self._by_key.pop((handle.link, handle.circ_id), None) is None:
            return
        handle.core.close()
        if notify:
            handle.link.send(
                handle.circ_id, CellCommand.DESTROY, bytes([EndReason.DESTROYED])
            )
        for stream in handle.streams.values():
            stream.abort()
        for reply in handle.waiting.values():
            reply.set(CLOSED)
        if handle.build_reply is not None:
            handle.build_reply.set(CLOSED)
        handle.credit.fire()


class GuardLinks:
    """One link per guard, with its reader task (see the module docstring)."""

    def __init__(
        self, network: Network, table: CircuitTable, nursery: trio.Nursery
    ) -> None:
        self.network = network
        self._table = table
        self._nursery = nursery
        self._links: dict[bytes, Link] = {}
        self._lock = trio.Lock()
        self._suspect: dict[Link, int] = {}

    def __iter__(self) -> Iterator[Link]:
        """The open links (a snapshot)."""
        return iter([link for link in self._links.values() if not link.closed])

    async def link_to(self, guard: Descriptor) -> Link:
        """The open link to ``guard``, or a new one.

        Raises:
            CircuitError: the link handshake failed.
            OSError: the connection failed.
        """
        async with self._lock:
            link = self._links.get(guard.identity)
            if link is not None and not link.closed:
                return link
            stream = await self.network.connect(guard.address, guard.or_port)
            try:
                link = await initiate(stream, guard.identity, guard.onion_key)
            except LINK_SETUP_ERRORS as exc:
                await trio.aclose_forcefully(stream)
                raise CircuitError(f"link to guard failed: {exc}") from exc
            self._links[guard.identity] = link
            self._nursery.start_soon(self._run, link)
            return link

    # --- silence -------------------------------------------------------------

    @staticmethod
    def heard(link: Link) -> int:
        """A mark for ``silent_since``: the bytes received on the link so far."""
        return link.traffic.bytes_received

    @staticmethod
    def silent_since(link: Link, mark: int) -> bool:
        """Whether nothing has arrived on the link since ``mark``."""
        return link.traffic.bytes_received == mark

    def suspect(self, link: Link) -> None:
        """The link has been silent for a whole stream attempt: do not reuse
        its circuits until something arrives on it."""
        if not link.closed:
            self._suspect[link] = link.traffic.bytes_received

    def is_suspect(self, link: Link) -> bool:
        """Flagged by ``suspect`` and silent since."""
        mark = self._suspect.get(link)
        if mark is None:
            return False
        if link.closed or not self.silent_since(link, mark):
            del self._suspect[link]
            return False
        return True

    async def abandon(self, link: Link) -> None:
        """Close a link whose guard stopped answering, and every circuit on
        it (their streams are aborted)."""
        for handle in self._table.on_link(link):
            self._table.destroy(handle, notify=False)
        for identity, known in list(self._links.items()):
            if known is link:
                del self._links[identity]
        self._suspect.pop(link, None)
        with trio.CancelScope(shield=True):
            await link.aclose()

    # --- the reader ----------------------------------------------------------

    async def _run(self, link: Link) -> None:
        try:
            await link.serve(partial(self._handle_cell, link))
        finally:
            self._suspect.pop(link, None)
            for handle in self._table.on_link(link):
                self._table.destroy(handle, notify=False)

    def _handle_cell(self, link: Link, cell: Cell) -> None:
        handle = self._table.get(link, cell.circ_id)
        if handle is None:
            return
        if cell.command is CellCommand.CREATED:
            if handle.build_reply is not None:
                handle.build_reply.set(cell.body)
        elif cell.command is CellCommand.RELAY:
            try:
                self._relay(handle, cell.body)
            except ProtocolError as exc:
                logger.warning("destroying a circuit: %s", exc)
                self._table.destroy(handle)
        elif cell.command is CellCommand.DESTROY:
            self._table.destroy(handle, notify=False)

    def _relay(self, handle: ClientCircuitHandle, body: bytes) -> None:
        received, replies = handle.core.receive(body)
        handle.send(replies)
        if received is None:
            return
        message = received.message
        match message:
            case Data(stream_id=sid, data=data):
                stream = handle.streams.get(sid)
                if stream is not None:
                    stream.deliver(data)
                    handle.forget_if_ended(sid)
            case (
                Connected(stream_id=sid) | End(stream_id=sid) | Resolved(stream_id=sid)
            ):
                waiter = handle.waiting.pop(sid, None)
                if waiter is not None:
                    waiter.set(message)
                    return
                stream = handle.streams.get(sid)
                if stream is not None and isinstance(message, End):
                    if message.reason == EndReason.DONE:
                        stream.remote_end()
                    else:
                        stream.abort()
                    handle.forget_if_ended(sid)
            case Sendme():
                handle.credit.fire()
            case Extended():
                if handle.build_reply is not None:
                    handle.build_reply.set(message)
            case Truncated(reason=reason):
                logger.info(
                    "circuit truncated at hop %d: %s", received.hop + 1, reason.name
                )
                self._table.destroy(handle)
