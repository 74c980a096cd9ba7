"""The relay side of one circuit: peel or add one layer, extend, exit streams.

Theory of operation
-------------------

A relay holds one ``HopKeys`` per circuit.  A forward cell is peeled; if the
circuit has been extended the result is forwarded to the next hop, otherwise
this relay is the last hop and the message is for it.  Backward cells from
the next hop get this relay's layer added; messages this relay originates
(EXTENDED, TRUNCATED, and as an exit CONNECTED/DATA/END/SENDME/RESOLVED) are
sealed with ``originate``.

Extension rules (checked here, before any network work):

* EXTEND only in a RELAY_EARLY cell, and at most ``MAX_EARLY`` RELAY_EARLY
  cells per circuit, which bounds the path to ``onion.MAX_HOPS`` hops;
* one extension at a time, and none once the circuit goes on past this hop
  (after a failed extension this hop is the last one again and may retry);
* never to this relay itself nor back to the previous hop;
* never on a circuit that already carries streams.

(The relay shell also refuses extensions to private or non-IP addresses
outside a test network: ``hopchain.relay.exit.Exit.may_reach``.)

As an exit the circuit keeps a ``StreamTable`` with the same windows as the
client, so a client that ignores flow control is caught here.  A RESOLVE
takes its stream id in that table as a one-shot stream (a duplicate id is an
error, DATA on it too) until ``resolved`` sends the one RESOLVED that frees
it, or the client's END cancels it.
"""

import enum
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from hopchain.crypto import onion
from hopchain.crypto.onion import HopKeys
from hopchain.errors import MessageError
from hopchain.flow import CIRCUIT_WINDOW, StreamTable
from hopchain.messages import (
    LARGE_BODY,
    MAX_ANSWERS,
    MAX_DATA,
    Begin,
    Data,
    Drop,
    End,
    EndReason,
    Extend,
    Extended,
    RelayMessage,
    Resolve,
    Resolved,
    Sendme,
    Truncated,
    decode,
    encode,
)

MAX_EARLY: Final = onion.MAX_HOPS - 1
# A relay's queue for one circuit on one link may hold one circuit window of
# DATA cells plus some control cells (BEGIN, END, SENDME), counted in cell-body
# bytes; more means an end ignores flow control.
MAX_QUEUED_PER_CIRCUIT: Final = (CIRCUIT_WINDOW + 32) * LARGE_BODY


class Position(enum.Enum):
    """Whether this relay is the last hop of the circuit."""

    LAST = "last"
    EXTENDING = "extending"
    MIDDLE = "middle"


@dataclass(frozen=True, slots=True)
class Forward:
    """Send ``body`` to the next hop."""

    body: bytes


@dataclass(frozen=True, slots=True)
class Deliver:
    """A message for this relay (it is the last hop)."""

    message: RelayMessage


@dataclass(frozen=True, slots=True)
class Respond:
    """Send these bodies back towards the client (nothing else to do)."""

    bodies: list[bytes]


class RelayCircuit:
    """Relay-side circuit state machine (see the module docstring)."""

    def __init__(
        self, keys: HopKeys, own_identity: bytes, previous_identity: bytes | None
    ) -> None:
        self.keys = keys
        self.position = Position.LAST
        self.streams = StreamTable()
        self._own = own_identity
        self._previous = previous_identity
        self._early = 0

    def forward(
        self, body: bytes, *, early: bool
    ) -> Forward | Deliver | Respond | None:
        """Process a cell from the previous hop.

        Returns:
            Forward, Deliver, Respond (credit for data of a closed stream), or
            None when nothing is to be done (padding).

        Raises:
            ProtocolError: a bad layer, a malformed message, a flow-control
                violation, or a forbidden extension.  Destroy the circuit.
        """
        if early:
            self._early += 1
            if self._early > MAX_EARLY:
                raise MessageError(f"more than {MAX_EARLY} relay_early cells")
        payload, stack = onion.open_forward(self.keys, body)
        if self.position is Position.MIDDLE:
            return Forward(payload + stack)
        if self.position is Position.EXTENDING:
            raise MessageError("cell for a hop that is still extending")
        message = decode(payload)
        match message:
            case Extend(identity=identity):
                if not early:
                    raise MessageError("extend outside relay_early")
                if hmac.compare_digest(identity, self._own):
                    raise MessageError("extend to this relay itself")
                if self._previous is not None and hmac.compare_digest(
                    identity, self._previous
                ):
                    raise MessageError("extend back to the previous hop")
                if self.streams.streams:
                    raise MessageError("extend on a circuit with streams")
                self.position = Position.EXTENDING
            case Begin(stream_id=sid):
                self.streams.add(sid)
            case Resolve(stream_id=sid):
                self.streams.add(sid, resolve=True)
            case Data(stream_id=sid):
                if not self.streams.on_data(sid):
                    return Respond(self.consumed(sid, 1))
            case End(stream_id=sid, reason=reason):
                self.streams.remote_end(sid, reason)
            case Sendme():
                self.streams.on_sendme(message)
            case Drop():
                return None
            case _:
                raise MessageError(f"relay got {type(message).__name__}")
        return Deliver(message)

    def backward(self, body: bytes) -> bytes:
        """Add this relay's layer to a cell from the next hop."""
        return onion.add_backward(self.keys, body)

    def originate(self, message: RelayMessage) -> bytes:
        """Seal a message this relay sends to the client."""
        return onion.originate_backward(self.keys, encode(message))

    def extended(self, reply: bytes) -> bytes:
        """The next hop answered CREATED: the EXTENDED body for the client."""
        if self.position is not Position.EXTENDING:
            raise MessageError("created for a circuit that is not extending")
        self.position = Position.MIDDLE
        return self.originate(Extended(reply))

    def extend_failed(self, reason: EndReason) -> bytes:
        """The extension failed: the TRUNCATED body; this is the last hop again."""
        self.position = Position.LAST
        return self.originate(Truncated(reason))

    # --- exit streams ------------------------------------------------------

    def sendable(self, stream_id: int) -> int:
        """Bytes the exit may send now (whole DATA cells the windows allow)."""
        return self.streams.sendable(stream_id) * MAX_DATA

    def send_data(self, stream_id: int, data: bytes | bytearray) -> list[bytes]:
        """Bodies carrying ``data`` to the client (within ``sendable``)."""
        return [
            onion.originate_backward(self.keys, message)
            for message in self.streams.data_messages(stream_id, data)
        ]

    def consumed(self, stream_id: int, n: int) -> list[bytes]:
        """SENDMEs after writing ``n`` DATA cells of the stream to its target."""
        return [self.originate(m) for m in self.streams.on_consumed(stream_id, n)]

    def resolved(
        self,
        stream_id: int,
        answers: Sequence[str] = (),
        reason: EndReason | None = None,
    ) -> list[bytes]:
        """RESOLVED for a RESOLVE stream, which frees its id.

        Give either answers (at most ``MAX_ANSWERS`` are sent) or a reason.
        Returns nothing if the client already ended the stream.
        """
        if (reason is None) == (not answers):
            raise ValueError("resolved needs either answers or a reason")
        state = self.streams.get(stream_id)
        if state is None:
            return []
        if not state.resolve:
            raise ValueError(f"stream {stream_id} is not a resolve stream")
        self.streams.forget(stream_id)
        answer = Resolved(stream_id, tuple(answers[:MAX_ANSWERS]), reason)
        return [self.originate(answer)]

    def end_stream(self, stream_id: int, reason: EndReason) -> list[bytes]:
        """END for the stream, or nothing if it is already gone."""
        if self.streams.get(stream_id) is None:
            return []
        self.streams.local_end(stream_id, reason)
        return [self.originate(End(stream_id, reason))]
