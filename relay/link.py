"""A link: one encrypted, authenticated TCP connection between two nodes.

The initiator knows the responder's identity and onion key from the
directory and runs the link handshake (``handshake.LINK_LABEL``); records are
then sealed with ``wire.RecordSealer``.  A relay initiator additionally sends
an AUTHENTICATE cell (its identity key and a signature over the handshake's
binding), so the responder knows which relay is the previous hop; a client
never does, and stays anonymous to its guard.

Cells to send are queued without blocking (readers never wait on writers, so
two relays can never deadlock on each other's full buffers); one writer task
per link batches everything queued into a single record.  Each circuit's
share of the queue is bounded (``MAX_QUEUED_PER_CIRCUIT``): a circuit whose
ends ignore flow control is refused, not buffered.

Each link counts the bytes and cells it carries in ``traffic`` (a relay
gives all its links one shared ``RelayStats.traffic``, for its metrics,
before it serves them).

A relay's links also share two limits (``relay.limits``): every queued cell
counts in one ``QueueBudget``, whose ``on_over`` hook (the relay's
out-of-memory handler) runs as soon as a ``send`` takes the total over the
cap; and every read waits for the relay's bandwidth bucket (``ReadLimit``).
A client's links have neither.
"""

import logging
import secrets
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Final, Protocol

import trio
from hopchain.relay.net import RECEIVE_CHUNK, BufferedReader
from hopchain.relay.stats import OTHER_SIZE, SIZE_INDEX, Traffic

from hopchain.crypto import handshake, kdf
from hopchain.crypto.keys import IdentityKey, OnionKey
from hopchain.crypto.primitives import ed25519_verify
from hopchain.errors import HandshakeError, LinkError, ProtocolError
from hopchain.oom import QueueBudget
from hopchain.relaycircuit import MAX_QUEUED_PER_CIRCUIT
from hopchain.wire import (
    MAX_RECORD,
    Cell,
    CellCommand,
    LinkKeys,
    RecordOpener,
    RecordSealer,
    decode_cells,
    encode_cell,
)

logger = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT: Final = 10.0
# What opening a link can raise besides cancellation: catch these together.
LINK_SETUP_ERRORS: Final = (
    OSError,
    HandshakeError,
    EOFError,
    trio.TooSlowError,
    trio.BrokenResourceError,
)
BATCH_BYTES: Final = 256 * 1024
_AUTH_PREFIX: Final = b"hopchain link auth v1\0"


class ReadLimit(Protocol):
    """A bandwidth limit on what links read (``relay.limits.RelayLimiter``)."""

    async def read_allowance(self, wanted: int) -> int:
        """Wait until a read is allowed; the most bytes to read."""
        ...

    def bytes_read(self, n: int) -> None:
        """Charge ``n`` bytes read."""
        ...


@dataclass
class SharedLimits:
    """What all of a relay's links share (see the module docstring)."""

    budget: QueueBudget
    on_over: Callable[[], None]
    read_limit: ReadLimit | None = None


class Link:
    """An established link (see the module docstring)."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        keys: LinkKeys,
        *,
        peer_identity: bytes | None,
        binding: bytes,
        leftover: bytes = b"",
        shared: SharedLimits | None = None,
    ) -> None:
        self.stream = stream
        self.peer_identity = peer_identity
        self.binding = binding
        self.closed = False
        self._sealer = RecordSealer(keys.send_key)
        self._opener = RecordOpener(keys.receive_key)
        self._opener.feed(leftover)
        self._queue: deque[tuple[int, int, bytes]] = deque()
        self._queued: dict[int, int] = {}
        self._wakeup = trio.Event()
        self.traffic = Traffic()
        self._shared = shared
        self._batch_sent = trio.Event()
        self._sending = False

    @property
    def queued_bytes(self) -> int:
        """Bytes of cell bodies waiting in the send queue."""
        return sum(self._queued.values())

    def send(self, circ_id: int, command: CellCommand, body: bytes) -> bool:
        """Queue one cell; False if the circuit's queue share is full.

        With shared limits, a cell that takes the relay's queued bytes over
        the cap runs the out-of-memory handler before this returns (which
        may close this very circuit).
        """
        if self.closed:
            return False
        queued = self._queued.get(circ_id, 0) + len(body)
        if queued > MAX_QUEUED_PER_CIRCUIT:
            return False
        self._queued[circ_id] = queued
        cell = encode_cell(circ_id, command, body)
        self._queue.append((circ_id, len(body), cell))
        self._wakeup.set()
        shared = self._shared
        if shared is not None:
            budget = shared.budget
            budget.add(len(cell))
            if budget.over:
                shared.on_over()
            budget.note_peak()
        return True

    def queued_for(self, circ_id: int) -> int:
        """Body bytes queued for one circuit."""
        return self._queued.get(circ_id, 0)

    def drop_circuit(self, circ_id: int) -> int:
        """Drop the cells queued for one circuit; the cell bytes freed."""
        if circ_id not in self._queued:
            return 0
        del self._queued[circ_id]
        freed = sum(len(cell) for cid, _, cell in self._queue if cid == circ_id)
        self._queue = deque(entry for entry in self._queue if entry[0] != circ_id)
        if self._shared is not None:
            self._shared.budget.remove(freed)
        return freed

    def _drop_all(self) -> None:
        """Forget everything queued (the link has closed)."""
        if self._shared is not None:
            self._shared.budget.remove(sum(len(entry[2]) for entry in self._queue))
        self._queue.clear()
        self._queued.clear()

    async def run_writer(self) -> None:
        """Send queued cells, batched into records, until the link closes."""
        queued = self._queued
        cells_sent = self.traffic.cells_sent
        budget = self._shared.budget if self._shared is not None else None
        try:
            while True:
                while not self._queue:
                    self._wakeup = trio.Event()
                    await self._wakeup.wait()
                queue = self._queue  # drop_circuit replaces it between batches
                batch = []
                size = 0
                while queue and size < BATCH_BYTES:
                    circ_id, body_len, cell = queue.popleft()
                    cells_sent[SIZE_INDEX.get(body_len, OTHER_SIZE)] += 1
                    batch.append(cell)
                    size += len(cell)
                    left = queued.get(circ_id, 0) - body_len
                    if left > 0:
                        queued[circ_id] = left
                    else:
                        queued.pop(circ_id, None)
                if budget is not None:
                    budget.remove(size)
                record = self._sealer.seal(b"".join(batch))
                self._sending = True
                await self.stream.send_all(record)
                self._sending = False
                self.traffic.bytes_sent += len(record)
                sent, self._batch_sent = self._batch_sent, trio.Event()
                sent.set()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.closed = True
            self._batch_sent.set()

    async def flush(self) -> None:
        """Wait until every cell queued so far is written, or the link closed.

        For an orderly close: queue the last cells (END, DESTROY), flush,
        then close.  The caller bounds the wait.
        """
        while (self._queue or self._sending) and not self.closed:
            await self._batch_sent.wait()

    async def receive_cells(self) -> AsyncIterator[list[Cell]]:
        """Cells as they arrive, one record at a time, until EOF.

        Raises:
            LinkError: a bad record (the caller closes the link).
        """
        opener = self._opener
        self.traffic.bytes_received += opener.buffered  # arrived with the handshake
        limit = self._shared.read_limit if self._shared is not None else None
        while True:
            while (record := opener.next_record()) is not None:
                yield decode_cells(record)
            size = RECEIVE_CHUNK
            if limit is not None:
                size = await limit.read_allowance(RECEIVE_CHUNK)
            try:
                data = await self.stream.receive_some(size)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            self.traffic.bytes_received += len(data)
            if limit is not None:
                limit.bytes_read(len(data))
            opener.feed(data)
            if opener.buffered > MAX_RECORD + 2 * RECEIVE_CHUNK:
                raise LinkError("peer sends faster than records complete")

    async def serve(self, on_cell: Callable[[Cell], None]) -> None:
        """Run the writer and feed every received cell to ``on_cell``.

        Returns when the peer closes the link or breaks the protocol (logged
        as a warning); the link is closed on return.
        """
        cells_received = self.traffic.cells_received
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.run_writer)
                try:
                    async for cells in self.receive_cells():
                        for cell in cells:
                            cells_received[
                                SIZE_INDEX.get(len(cell.body), OTHER_SIZE)
                            ] += 1
                            on_cell(cell)
                except ProtocolError as exc:
                    logger.warning("closing a link: %s", exc)
                nursery.cancel_scope.cancel()
        finally:
            self.closed = True
            with trio.CancelScope(shield=True):
                await self.aclose()

    async def aclose(self) -> None:
        """Close the underlying stream and drop what is still queued."""
        self.closed = True
        self._drop_all()
        self._wakeup.set()
        self._batch_sent.set()
        await self.stream.aclose()


def _binding(prk: bytes) -> bytes:
    return kdf.expand(prk, b"link binding")


async def initiate(
    stream: trio.abc.Stream,
    peer_identity: bytes,
    peer_onion_key: bytes,
    *,
    own_identity: IdentityKey | None = None,
    shared: SharedLimits | None = None,
) -> Link:
    """Run the initiator side of the link handshake on a fresh stream.

    Args:
        stream: a connected stream to the peer.
        peer_identity: the responder's identity key from the directory.
        peer_onion_key: the responder's onion key from the directory.
        own_identity: a relay's identity, to authenticate as a relay; None
            for a client (which stays anonymous).
        shared: a relay's limits shared by all its links.

    Raises:
        HandshakeError: the peer does not hold the expected onion key.
        EOFError: the peer closed during the handshake.
    """
    state = handshake.client_start_with_ephemeral(
        handshake.LINK_LABEL, peer_identity, peer_onion_key, secrets.token_bytes(32)
    )
    reader = BufferedReader(stream)
    with trio.fail_after(HANDSHAKE_TIMEOUT):
        await stream.send_all(peer_onion_key + state.ephemeral_public)
        reply = await reader.read_exactly(handshake.SERVER_MESSAGE_BYTES)
    prk = handshake.client_finish(state, reply)
    link = Link(
        stream,
        LinkKeys.from_prk(prk, initiator=True),
        peer_identity=peer_identity,
        binding=_binding(prk),
        leftover=reader.take_buffered(),
        shared=shared,
    )
    if own_identity is not None:
        proof = own_identity.sign(_AUTH_PREFIX + link.binding)
        link.send(0, CellCommand.AUTHENTICATE, own_identity.public + proof)
    return link


async def respond(
    stream: trio.abc.Stream,
    identity: IdentityKey,
    onion_keys: list[OnionKey],
    *,
    timeout: float = HANDSHAKE_TIMEOUT,
    shared: SharedLimits | None = None,
) -> Link:
    """Run the responder side of the link handshake on an accepted stream,
    within ``timeout`` seconds.

    Raises:
        HandshakeError: a malformed or low-order handshake message, or one
            made with an onion key that is not among ``onion_keys``.
        EOFError: the peer closed during the handshake.
        trio.TooSlowError: the peer did not finish in time.
    """
    reader = BufferedReader(stream)
    with trio.fail_after(timeout):
        # B | X: B names which of the onion keys the initiator took from its
        # directory (the previous one stays valid for a while after a rotation).
        message = identity.public + await reader.read_exactly(64)
        reply, prk = handshake.server_reply_with_ephemeral(
            handshake.LINK_LABEL,
            identity.public,
            onion_keys,
            message,
            secrets.token_bytes(32),
        )
        await stream.send_all(reply)
    return Link(
        stream,
        LinkKeys.from_prk(prk, initiator=False),
        peer_identity=None,
        binding=_binding(prk),
        leftover=reader.take_buffered(),
        shared=shared,
    )


def check_authenticate(link: Link, body: bytes) -> bytes:
    """Verify an AUTHENTICATE cell and return the peer relay's identity.

    Raises:
        HandshakeError: malformed, repeated, or a bad signature.
    """
    if link.peer_identity is not None:
        raise HandshakeError("authenticate on an authenticated link")
    if len(body) != 96:
        raise HandshakeError("authenticate must be 96 bytes")
    identity, proof = body[:32], body[32:]
    if not ed25519_verify(identity, _AUTH_PREFIX + link.binding, proof):
        raise HandshakeError("authenticate signature does not verify")
    link.peer_identity = identity
    return identity
