"""Link cells and encrypted link records.

Everything a link carries after its handshake is a sequence of *records*:

    record  = SEALED_LEN | SEALED_BODY
    SEALED_LEN  = AEAD(k, 2n,   u32 length of BODY)     4 + 32 = 36 bytes
    SEALED_BODY = AEAD(k, 2n+1, BODY)                   length + 32 bytes

where n counts records per direction and k is that direction's link key, so
an on-path observer sees only random-looking bytes and record sizes.  BODY is
one or more *link cells* back to back:

    cell = circ_id (u32 BE) | command (u8) | length (u16 BE) | body

A record is at most ``MAX_RECORD`` bytes; a peer that announces more, sends a
bad tag, or a cell that overruns its record is disconnected.  The decoder
returns "not yet" on short input; the link shell bounds how much it may buffer.
"""

import enum
import struct
from dataclasses import dataclass
from typing import Final

from hopchain.crypto import kdf
from hopchain.crypto.primitives import AEAD_TAG_BYTES, aead_open, aead_seal
from hopchain.errors import CellAuthError, LinkError

MAX_RECORD: Final = 1 << 20
RECORD_HEADER_BYTES: Final = 4 + AEAD_TAG_BYTES
CELL_HEADER: Final = struct.Struct(">IBH")
MAX_CELL_BODY: Final = 0xFFFF
_LEN: Final = struct.Struct(">I")


class CellCommand(enum.IntEnum):
    """Link cell commands."""

    PADDING = 0
    CREATE = 1
    CREATED = 2
    RELAY = 3
    RELAY_EARLY = 4
    DESTROY = 5
    AUTHENTICATE = 6


@dataclass(frozen=True, slots=True)
class Cell:
    """One link cell."""

    circ_id: int
    command: CellCommand
    body: bytes


def encode_cell(circ_id: int, command: CellCommand, body: bytes) -> bytes:
    """The link-cell bytes for one cell."""
    if len(body) > MAX_CELL_BODY:
        raise ValueError(f"cell body too long: {len(body)} > {MAX_CELL_BODY}")
    return CELL_HEADER.pack(circ_id, command, len(body)) + body


def decode_cells(record: bytes) -> list[Cell]:
    """Split a record body into cells.

    Raises:
        LinkError: a truncated cell or an unknown command.
    """
    cells = []
    offset = 0
    end = len(record)
    unpack = CELL_HEADER.unpack_from
    while offset < end:
        if end - offset < CELL_HEADER.size:
            raise LinkError("truncated cell header in record")
        circ_id, command, length = unpack(record, offset)
        offset += CELL_HEADER.size
        if offset + length > end:
            raise LinkError("cell overruns its record")
        try:
            cmd = CellCommand(command)
        except ValueError as exc:
            raise LinkError(f"unknown cell command {command}") from exc
        cells.append(Cell(circ_id, cmd, record[offset : offset + length]))
        offset += length
    return cells


@dataclass(slots=True)
class LinkKeys:
    """Record keys of one link, from the link handshake's prk."""

    send_key: bytes
    receive_key: bytes

    @classmethod
    def from_prk(cls, prk: bytes, *, initiator: bool) -> "LinkKeys":
        """Initiator-to-responder and responder-to-initiator keys."""
        i2r = kdf.expand(prk, b"link i2r")
        r2i = kdf.expand(prk, b"link r2i")
        return cls(i2r, r2i) if initiator else cls(r2i, i2r)


class RecordSealer:
    """Turns record bodies into encrypted records (one direction)."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._count = 0

    def seal(self, body: bytes) -> bytes:
        """Encrypt one record body (at most MAX_RECORD bytes)."""
        if not 0 < len(body) <= MAX_RECORD:
            raise ValueError(f"record body of {len(body)} bytes")
        n = self._count
        self._count += 2
        return aead_seal(self._key, n, _LEN.pack(len(body)), None) + aead_seal(
            self._key, n + 1, body, None
        )


class RecordOpener:
    """Incremental decoder of encrypted records (one direction).

    Feed it bytes as they arrive; ``next_record`` returns a record body or
    None when more bytes are needed.
    """

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._count = 0
        self._buffer = bytearray()
        self._pending_length: int | None = None

    def feed(self, data: bytes | bytearray) -> None:
        """Add received bytes."""
        self._buffer += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a record."""
        return len(self._buffer)

    def next_record(self) -> bytes | None:
        """The next record body, or None if incomplete.

        Raises:
            LinkError: a bad tag or an oversized record.
        """
        buf = self._buffer
        if self._pending_length is None:
            if len(buf) < RECORD_HEADER_BYTES:
                return None
            try:
                raw = aead_open(self._key, self._count, buf[:RECORD_HEADER_BYTES], None)
            except CellAuthError as exc:
                raise LinkError("record header does not authenticate") from exc
            (length,) = _LEN.unpack(raw)
            if not 0 < length <= MAX_RECORD:
                raise LinkError(f"record of {length} bytes exceeds {MAX_RECORD}")
            del buf[:RECORD_HEADER_BYTES]
            self._pending_length = length
        need = self._pending_length + AEAD_TAG_BYTES
        if len(buf) < need:
            return None
        try:
            body = aead_open(self._key, self._count + 1, buf[:need], None)
        except CellAuthError as exc:
            raise LinkError("record body does not authenticate") from exc
        del buf[:need]
        self._pending_length = None
        self._count += 2
        return body
