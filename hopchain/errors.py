"""The exception hierarchy of hopchain.

The core raises only these (plus ValueError/TypeError for argument misuse).
Parsers raise a ``ProtocolError`` subclass for bytes that came from a peer;
the shells catch them where the peer's bytes enter and close only the link,
circuit or connection that sent them.
"""


class HopchainError(Exception):
    """Base of every error hopchain raises on purpose."""


class ProtocolError(HopchainError):
    """A peer sent bytes that break the protocol."""


class LinkError(ProtocolError):
    """A link record or handshake failed: bad MAC, oversized frame, garbage."""


class CellAuthError(ProtocolError):
    """An onion layer did not authenticate: the cell was changed or replayed."""


class MessageError(ProtocolError):
    """A relay message or cell body is malformed."""


class HandshakeError(ProtocolError):
    """A circuit or link handshake did not authenticate."""


class FlowControlError(ProtocolError):
    """A peer sent data past its window or acknowledged data never sent."""


class SocksError(ProtocolError):
    """A malformed SOCKS request; carries the reply code to answer with, or
    None to close without a reply."""

    def __init__(self, message: str, reply_code: int | None) -> None:
        super().__init__(message)
        self.reply_code = reply_code


class Socks5Error(SocksError):
    """A malformed SOCKS5 request (the reply code is a SOCKS5 reply)."""


class HttpRequestError(ProtocolError):
    """A request to the HTTP proxy port that hopchain refuses; carries the status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Socks4Error(SocksError):
    """A malformed SOCKS4 or SOCKS4a request (the reply code is 0x5B)."""


class CircuitError(HopchainError):
    """A circuit was destroyed, truncated, or could not be built."""


class StreamError(HopchainError):
    """The exit refused a stream or could not reach its target."""

    def __init__(self, message: str, reason: int) -> None:
        super().__init__(message)
        self.reason = reason


class PathSelectionError(HopchainError):
    """No path satisfies the constraints with the current directory."""


class DirectoryError(HopchainError):
    """A directory document has a bad signature, is stale, or is malformed."""


class ConfigError(HopchainError):
    """Invalid configuration or key storage, found before anything starts."""
