"""Drive a SOCKS4 or SOCKS5 handshake parser as a shell would (test helper)."""

from dataclasses import dataclass, field

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
