"""Talking to a directory authority: publish a descriptor, fetch a consensus.

The directory protocol is one length-prefixed msgpack request and one reply
per TCP connection.  Integrity comes from the signatures on the documents,
not from the channel (as with Tor's directory fetches from authorities).
"""

from dataclasses import dataclass
from typing import Final

import trio
from hopchain.relay.net import BufferedReader, Network, receive_message, send_message

from hopchain.errors import ConfigError, DirectoryError
from hopchain.relayconfig import split_authority

REQUEST_TIMEOUT: Final = 30.0


@dataclass(frozen=True, slots=True)
class AuthorityAddress:
    """Where an authority listens and the key a client pins for it."""

    host: str
    port: int
    key: bytes

    @classmethod
    def parse(cls, text: str) -> "AuthorityAddress":
        """Parse ``HOST:PORT=HEXKEY``.

        Raises:
            ConfigError: the text does not have that form.
        """
        try:
            return cls(*split_authority(text))
        except ValueError as exc:
            raise ConfigError(f"authority {exc}") from None

    def __str__(self) -> str:
        return f"{self.host}:{self.port}={self.key.hex()}"


async def request(
    network: Network, authority: AuthorityAddress, message: dict[str, object]
) -> dict[str, object]:
    """Send one request to an authority and return its reply map.

    Raises:
        DirectoryError: the authority could not be reached or replied with
            an error or garbage.
    """
    try:
        with trio.fail_after(REQUEST_TIMEOUT):
            stream = await network.connect(authority.host, authority.port)
            async with stream:
                await send_message(stream, message)
                reply = await receive_message(BufferedReader(stream))
    except (
        OSError,
        EOFError,
        ValueError,
        trio.TooSlowError,
        trio.BrokenResourceError,
    ) as exc:
        raise DirectoryError(
            f"authority {authority.host}:{authority.port} unreachable: {exc}"
        ) from exc
    if not isinstance(reply, dict):
        raise DirectoryError("authority replied with garbage")
    error = reply.get("error")
    if error is not None:
        raise DirectoryError(f"authority refused: {error}")
    return reply


async def publish(
    network: Network, authority: AuthorityAddress, descriptor: bytes
) -> None:
    """Upload a signed descriptor; the authority tests reachability first."""
    await request(network, authority, {"op": "publish", "descriptor": descriptor})


async def fetch_consensus(network: Network, authority: AuthorityAddress) -> bytes:
    """The authority's current signed consensus (unverified bytes)."""
    reply = await request(network, authority, {"op": "consensus"})
    raw = reply.get("consensus")
    if not isinstance(raw, bytes):
        raise DirectoryError("authority reply has no consensus")
    return raw
