"""Drive a SOCKS4 or SOCKS5 handshake parser as a shell would (test helper)."""

from collections.abc import Callable
from dataclasses import dataclass, field

from hypothesis import strategies as st

from hopchain.errors import SocksError
from hopchain.socks4 import Socks4Server
from hopchain.socks5 import Action, Socks5Server

EARLY_DATA = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
MODES = ["whole", "byte by byte", "with trailing data"]


@dataclass
class Outcome:
    """Everything the parser produced for one input."""

    actions: list[Action] = field(default_factory=list)
    error: int | str | None = "no error"
    remaining: bytes = b""


def drive(server: Socks4Server | Socks5Server, chunks: list[bytes]) -> Outcome:
    """Feed ``chunks`` one by one, acting on each step as a shell would:
    stop at the first request or close, or at the parser's error (its reply
    code goes into ``error``)."""
    outcome = Outcome()
    finished = False
    for chunk in chunks:
        server.receive_data(chunk)
        while not finished:
            try:
                action = server.next_action()
            except SocksError as exc:
                outcome.error = exc.reply_code
                return outcome
            if action is None:
                break
            outcome.actions.append(action)
            finished = action.close or action.request is not None
    outcome.remaining = server.take_remaining()
    return outcome


def splits(data: bytes, trailing: bytes = EARLY_DATA) -> dict[str, list[bytes]]:
    """``data`` whole, byte by byte, and followed by early application data."""
    return {
        "whole": [data],
        "byte by byte": [data[i : i + 1] for i in range(len(data))],
        "with trailing data": [data + trailing],
    }


def assert_any_split_gives_the_same_outcome(
    drive: Callable[[list[bytes]], Outcome], conversation: bytes, data: st.DataObject
) -> None:
    """``conversation`` (a valid handshake ending in a request) followed by
    early data gives the same outcome however the bytes are cut."""
    whole = drive([conversation + EARLY_DATA])
    assert whole.error == "no error"
    assert whole.actions[-1].request is not None
    assert whole.remaining == EARLY_DATA
    cuts = sorted(
        data.draw(st.lists(st.integers(0, len(conversation)), max_size=8), label="cuts")
    )
    stream = conversation + EARLY_DATA
    chunks = [
        stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)
    ]
    assert drive(chunks) == whole
