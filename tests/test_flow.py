"""Unit and property tests for hopchain.flow (windows and the stream table)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hopchain.errors import FlowControlError, MessageError
from hopchain.flow import (
    CIRCUIT_WINDOW,
    STREAM_WINDOW,
    ReceiveWindow,
    SendWindow,
    StreamTable,
)
from hopchain.messages import EndReason, Sendme

# --- SendWindow ----------------------------------------------------------------


def test_send_window_spend_and_credit() -> None:
    window = SendWindow(100)
    window.spend(60)
    assert window.available == 40
    window.credit(25)
    assert (window.unacked, window.available) == (35, 65)
    window.spend(65)
    assert window.available == 0


def test_send_window_refuses_spending_past_the_window() -> None:
    window = SendWindow(100)
    window.spend(100)
    with pytest.raises(ValueError, match="available"):
        window.spend(1)


@pytest.mark.parametrize(("unacked", "credit"), [(0, 1), (10, 11), (10, 0), (10, -1)])
def test_send_window_refuses_credit_for_unsent_bytes(unacked: int, credit: int) -> None:
    window = SendWindow(100, unacked)
    with pytest.raises(FlowControlError):
        window.credit(credit)
    assert window.unacked == unacked


# --- ReceiveWindow ---------------------------------------------------------------


def test_receive_window_refuses_data_past_the_window() -> None:
    window = ReceiveWindow(100)
    window.receive(100)
    with pytest.raises(FlowControlError, match="past the window"):
        window.receive(1)


def test_receive_window_credits_in_quarter_steps() -> None:
    window = ReceiveWindow(100)
    window.receive(100)
    assert window.consume(24) == 0
    assert window.consume(1) == 25
    assert window.outstanding == 75
    assert window.consume(30) == 30
    assert window.outstanding == 45
    window.receive(55)
    with pytest.raises(FlowControlError):
        window.receive(1)


@given(
    size=st.integers(4, 200),
    ops=st.lists(st.tuples(st.booleans(), st.integers(1, 100)), max_size=60),
)
def test_prop_windows_conserve_credit(size: int, ops: list[tuple[bool, int]]) -> None:
    """A well-behaved pair never trips either check, and credit matches data."""
    send, receive = SendWindow(size), ReceiveWindow(size)
    unread = 0
    for sending, n in ops:
        if sending:
            n = min(n, send.available)
            send.spend(n)
            receive.receive(n)
            unread += n
        else:
            n = min(n, unread)
            unread -= n
            credit = receive.consume(n)
            if credit:
                send.credit(credit)
        assert send.unacked == receive.outstanding <= size
        assert 0 <= receive.consumed < max(1, size // 4)
    # Draining everything leaves less than a quarter window uncredited.
    credit = receive.consume(unread)
    if credit:
        send.credit(credit)
    assert send.unacked < size // 4 or send.unacked == 0


# --- StreamTable -------------------------------------------------------------------
# Windows count DATA cells: STREAM_WINDOW per stream, CIRCUIT_WINDOW per circuit.


def test_window_sizes() -> None:
    assert CIRCUIT_WINDOW >= 2 * STREAM_WINDOW > 0
    assert STREAM_WINDOW % 4 == 0


def test_stream_table_add_and_duplicate() -> None:
    table = StreamTable()
    table.add(1)
    assert table.get(1) is not None
    assert table.get(2) is None
    with pytest.raises(MessageError, match="already open"):
        table.add(1)


def test_stream_table_sendable_is_bounded_by_both_windows() -> None:
    table = StreamTable()
    table.add(1)
    table.add(2)
    assert table.sendable(1) == STREAM_WINDOW
    table.spend(1, STREAM_WINDOW)
    assert table.sendable(1) == 0
    assert table.sendable(2) == min(STREAM_WINDOW, CIRCUIT_WINDOW - STREAM_WINDOW)
    table.spend(2, CIRCUIT_WINDOW - STREAM_WINDOW)
    assert table.sendable(2) == 0
    assert table.sendable(9) == 0  # unknown stream
    table.add(3)
    assert table.sendable(3) == 0
    table.on_sendme(Sendme(0, 10))
    assert table.sendable(3) == 10
    assert table.sendable(1) == 0
    table.on_sendme(Sendme(1, 4))
    assert table.sendable(1) == 4


def test_stream_table_sendme_for_unsent_cells() -> None:
    table = StreamTable()
    table.add(1)
    table.spend(1, 10)
    with pytest.raises(FlowControlError):
        table.on_sendme(Sendme(1, 11))
    with pytest.raises(FlowControlError):
        table.on_sendme(Sendme(0, 11))
    with pytest.raises(FlowControlError):
        table.on_sendme(Sendme(0, 0))
    # Credit for a stream that is gone is ignored.
    table.on_sendme(Sendme(9, 5))


def receive_cells(table: StreamTable, stream_id: int, n: int) -> list[bool]:
    return [table.on_data(stream_id) for _ in range(n)]


def test_stream_table_stream_window() -> None:
    table = StreamTable()
    table.add(1)
    assert all(receive_cells(table, 1, STREAM_WINDOW))
    with pytest.raises(FlowControlError, match="past the window"):
        table.on_data(1)


def test_stream_table_circuit_window_spans_streams() -> None:
    table = StreamTable()
    streams = range(1, CIRCUIT_WINDOW // STREAM_WINDOW + 1)
    for sid in streams:
        table.add(sid)
        assert all(receive_cells(table, sid, STREAM_WINDOW))
    table.add(99)
    with pytest.raises(FlowControlError, match="past the window"):
        table.on_data(99)


def test_stream_table_data_for_unknown_stream_counts_against_circuit() -> None:
    table = StreamTable()
    quarter = CIRCUIT_WINDOW // 4
    assert receive_cells(table, 5, quarter) == [False] * quarter
    assert table.receive.outstanding == quarter
    assert table.on_consumed(5, quarter) == [Sendme(0, quarter)]
    assert table.receive.outstanding == 0


def test_stream_table_consumed_yields_stream_then_circuit_credit() -> None:
    table = StreamTable()
    table.add(1)
    table.add(2)
    quarter = STREAM_WINDOW // 4
    receive_cells(table, 1, STREAM_WINDOW)
    receive_cells(table, 2, STREAM_WINDOW)
    assert table.on_consumed(1, quarter - 1) == []
    assert table.on_consumed(1, 1) == [Sendme(1, quarter)]
    circuit_quarter = CIRCUIT_WINDOW // 4
    rest = circuit_quarter - quarter
    assert table.on_consumed(2, rest) == [
        Sendme(2, rest),
        Sendme(0, circuit_quarter),
    ]


def test_stream_table_half_close() -> None:
    table = StreamTable()
    table.add(1)
    table.local_end(1, EndReason.DONE)
    assert table.get(1) is not None
    assert table.sendable(1) == 0
    assert table.on_data(1)  # the peer may still send
    table.remote_end(1, EndReason.DONE)
    assert table.get(1) is None


def test_stream_table_data_after_remote_end_is_refused() -> None:
    table = StreamTable()
    table.add(1)
    table.remote_end(1, EndReason.DONE)
    assert table.sendable(1) == STREAM_WINDOW
    with pytest.raises(FlowControlError, match="after end"):
        table.on_data(1)


@pytest.mark.parametrize("reason", [r for r in EndReason if r != EndReason.DONE])
@pytest.mark.parametrize("side", ["local", "remote"])
def test_stream_table_abort_forgets_at_once(reason: EndReason, side: str) -> None:
    table = StreamTable()
    table.add(1)
    getattr(table, f"{side}_end")(1, reason)
    assert table.get(1) is None


def test_stream_table_end_for_unknown_stream_is_ignored() -> None:
    table = StreamTable()
    table.local_end(4, EndReason.DONE)
    table.remote_end(4, EndReason.MISC)
    assert table.streams == {}


def test_stream_table_resolve_stream_is_one_shot() -> None:
    table = StreamTable()
    table.add(1, resolve=True)
    assert table.sendable(1) == 0
    with pytest.raises(MessageError, match="already open"):
        table.add(1)
    with pytest.raises(MessageError, match="data on resolve stream"):
        table.on_data(1)
    table.forget(1)
    assert table.get(1) is None
    table.forget(1)  # forgetting twice is harmless


@pytest.mark.parametrize("side", ["local", "remote"])
def test_stream_table_any_end_forgets_a_resolve_stream(side: str) -> None:
    table = StreamTable()
    table.add(1, resolve=True)
    end = table.local_end if side == "local" else table.remote_end
    end(1, EndReason.DONE)  # not a half-close: a resolve has no halves
    assert table.get(1) is None
