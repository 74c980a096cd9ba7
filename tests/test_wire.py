"""Unit and property tests for hopchain.wire (link cells and encrypted records)."""

import hashlib
from collections.abc import Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hopchain.crypto.primitives import aead_seal
from hopchain.errors import LinkError, ProtocolError
from hopchain.wire import (
    CELL_HEADER,
    MAX_CELL_BODY,
    MAX_RECORD,
    RECORD_HEADER_BYTES,
    Cell,
    CellCommand,
    LinkKeys,
    RecordOpener,
    RecordSealer,
    decode_cells,
    encode_cell,
)

KEY = hashlib.blake2b(b"wire record key", digest_size=32).digest()

cells = st.builds(
    Cell,
    circ_id=st.integers(0, 2**32 - 1),
    command=st.sampled_from(CellCommand),
    body=st.binary(max_size=300),
)
record_bodies = st.binary(min_size=1, max_size=600)

# (cell, bytes) pairs, used in both directions (h11 SIMPLE_CASES style).
SIMPLE_CASES = [
    (Cell(0, CellCommand.PADDING, b""), bytes.fromhex("00000000000000")),
    (Cell(1, CellCommand.CREATE, b"\xaa"), bytes.fromhex("00000001010001aa")),
    (
        Cell(0xDEADBEEF, CellCommand.RELAY, b"xyz"),
        bytes.fromhex("deadbeef030003") + b"xyz",
    ),
    (
        Cell(2**32 - 1, CellCommand.DESTROY, b"\x08"),
        bytes.fromhex("ffffffff05000108"),
    ),
]


def flip_bit(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def open_chunks(opener: RecordOpener, chunks: Iterable[bytes]) -> list[bytes]:
    """Feed ``chunks`` one by one and collect every record that completes."""
    out = []
    for chunk in chunks:
        opener.feed(chunk)
        while (record := opener.next_record()) is not None:
            out.append(record)
    return out


FEED_MODES = ["whole", "byte by byte", "with trailing data"]


def feeds(data: bytes, trailing: bytes, mode: str) -> list[bytes]:
    """The same input whole, byte by byte, or followed by trailing bytes."""
    if mode == "whole":
        return [data]
    if mode == "byte by byte":
        return [data[i : i + 1] for i in range(len(data))]
    return [data + trailing]


# --- cells -------------------------------------------------------------------


@pytest.mark.parametrize(("cell", "raw"), SIMPLE_CASES)
def test_cell_simple_cases(cell: Cell, raw: bytes) -> None:
    assert encode_cell(cell.circ_id, cell.command, cell.body) == raw
    assert decode_cells(raw) == [cell]


def test_cell_simple_cases_back_to_back() -> None:
    raw = b"".join(raw for _, raw in SIMPLE_CASES)
    assert decode_cells(raw) == [cell for cell, _ in SIMPLE_CASES]


@given(st.lists(cells, max_size=8))
def test_prop_cells_round_trip(items: list[Cell]) -> None:
    record = b"".join(encode_cell(c.circ_id, c.command, c.body) for c in items)
    decoded = decode_cells(record)
    assert decoded == items
    assert all(isinstance(c.command, CellCommand) for c in decoded)


def test_cell_max_body() -> None:
    body = bytes(MAX_CELL_BODY)
    assert decode_cells(encode_cell(7, CellCommand.RELAY, body)) == [
        Cell(7, CellCommand.RELAY, body)
    ]
    with pytest.raises(ValueError, match="too long"):
        encode_cell(7, CellCommand.RELAY, body + b"\0")


@pytest.mark.parametrize("size", range(1, CELL_HEADER.size))
def test_cell_truncated_header_is_refused(size: int) -> None:
    raw = encode_cell(1, CellCommand.RELAY, b"abc")
    with pytest.raises(LinkError, match="truncated"):
        decode_cells(raw + raw[:size])


def test_cell_overrunning_its_record_is_refused() -> None:
    raw = encode_cell(1, CellCommand.RELAY, b"abc")
    with pytest.raises(LinkError, match="overruns"):
        decode_cells(raw[:-1])


@pytest.mark.parametrize("command", [7, 100, 255])
def test_cell_unknown_command_is_refused(command: int) -> None:
    with pytest.raises(LinkError, match="unknown cell command"):
        decode_cells(CELL_HEADER.pack(1, command, 0))


@given(st.binary(max_size=200))
def test_prop_decode_cells_arbitrary_bytes(raw: bytes) -> None:
    try:
        decoded = decode_cells(raw)
    except ProtocolError:
        return
    assert sum(CELL_HEADER.size + len(c.body) for c in decoded) == len(raw)


# --- records -----------------------------------------------------------------


@given(bodies=st.lists(record_bodies, min_size=1, max_size=4), data=st.data())
def test_prop_records_round_trip_any_split(
    bodies: list[bytes], data: st.DataObject
) -> None:
    sealer = RecordSealer(KEY)
    stream = b"".join(sealer.seal(b) for b in bodies)
    cuts = sorted(
        data.draw(st.lists(st.integers(0, len(stream)), max_size=6), label="cuts")
    )
    chunks = [
        stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)
    ]
    opener = RecordOpener(KEY)
    assert open_chunks(opener, chunks) == bodies
    assert opener.buffered == 0


@pytest.mark.parametrize("mode", FEED_MODES)
def test_records_incremental(mode: str) -> None:
    sealer = RecordSealer(KEY)
    bodies = [b"first", b"second record" * 20, b"3"]
    stream = b"".join(sealer.seal(b) for b in bodies)
    last = sealer.seal(b"not finished yet")
    trailing, rest = last[:-5], last[-5:]
    opener = RecordOpener(KEY)
    assert open_chunks(opener, feeds(stream, trailing, mode)) == bodies
    if mode == "with trailing data":
        assert opener.buffered > 0
        assert open_chunks(opener, [rest]) == [b"not finished yet"]
    assert opener.buffered == 0


def test_record_layout_and_sizes() -> None:
    record = RecordSealer(KEY).seal(b"hello")
    assert len(record) == RECORD_HEADER_BYTES + 5 + 32
    assert b"hello" not in record


@given(body=record_bodies, data=st.data())
def test_prop_record_flipped_bit_is_refused(body: bytes, data: st.DataObject) -> None:
    record = RecordSealer(KEY).seal(body)
    bit = data.draw(st.integers(0, len(record) * 8 - 1), label="bit")
    with pytest.raises(LinkError):
        open_chunks(RecordOpener(KEY), [flip_bit(record, bit)])


def test_record_replayed_is_refused() -> None:
    record = RecordSealer(KEY).seal(b"once")
    opener = RecordOpener(KEY)
    assert open_chunks(opener, [record]) == [b"once"]
    with pytest.raises(LinkError, match="header"):
        open_chunks(opener, [record])


def test_record_reordered_is_refused() -> None:
    sealer = RecordSealer(KEY)
    first, second = sealer.seal(b"1"), sealer.seal(b"2")
    with pytest.raises(LinkError):
        open_chunks(RecordOpener(KEY), [second, first])


def test_record_with_other_key_is_refused() -> None:
    other = hashlib.blake2b(b"other", digest_size=32).digest()
    with pytest.raises(LinkError):
        open_chunks(RecordOpener(other), [RecordSealer(KEY).seal(b"x")])


@pytest.mark.parametrize("length", [0, MAX_RECORD + 1, 2**32 - 1])
def test_record_announcing_a_bad_length_is_refused(length: int) -> None:
    header = aead_seal(KEY, 0, length.to_bytes(4, "big"), None)
    with pytest.raises(LinkError, match="exceeds"):
        open_chunks(RecordOpener(KEY), [header])


@pytest.mark.parametrize("size", [0, MAX_RECORD + 1])
def test_sealer_refuses_bad_body_sizes(size: int) -> None:
    with pytest.raises(ValueError, match="record body"):
        RecordSealer(KEY).seal(bytes(size))


@given(st.lists(st.binary(max_size=100), max_size=5))
def test_prop_record_opener_arbitrary_bytes(chunks: list[bytes]) -> None:
    try:
        records = open_chunks(RecordOpener(KEY), chunks)
    except ProtocolError:
        return
    assert records == []


def test_link_keys_mirror() -> None:
    prk = hashlib.blake2b(b"link prk", digest_size=32).digest()
    initiator = LinkKeys.from_prk(prk, initiator=True)
    responder = LinkKeys.from_prk(prk, initiator=False)
    assert initiator.send_key == responder.receive_key
    assert initiator.receive_key == responder.send_key
    assert initiator.send_key != initiator.receive_key
    sealed = RecordSealer(initiator.send_key).seal(b"ping")
    assert open_chunks(RecordOpener(responder.receive_key), [sealed]) == [b"ping"]
