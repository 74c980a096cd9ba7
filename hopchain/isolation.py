"""Stream isolation: which streams may share a circuit.

Two streams share a circuit only if their ``IsolationKey`` is equal, as with
Tor's SOCKSPort isolation flags (proposal 171):

* always: the listener the app used (``socks``, ``http`` or ``api``; Tor isolates
  listeners from one another by default) and its SOCKS username and password
  (Tor's IsolateSOCKSAuth, on by default);
* with ``dest_addr``: the destination host (IsolateDestAddr);
* with ``dest_port``: the destination port (IsolateDestPort);
* always: the exit-country constraints the stream asked for (a circuit's
  exit must satisfy them, so streams with other constraints need another
  circuit).

A circuit is bound to the key of the first stream it carries; later streams
with another key get another circuit.  NEWNYM is handled by the circuit
manager: circuits built before it are not reused at all.
"""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class IsolationRules:
    """Which optional properties of a stream separate it from others."""

    dest_addr: bool = False
    dest_port: bool = False


@dataclass(frozen=True, slots=True)
class IsolationKey:
    """Streams with equal keys may share a circuit; others may not."""

    listener: str
    username: bytes | None = None
    password: bytes | None = None
    dest_addr: str | None = None
    dest_port: int | None = None
    exit_countries: frozenset[str] = frozenset()
    exclude_exit_countries: frozenset[str] = frozenset()


def isolation_key(
    rules: IsolationRules,
    *,
    listener: str,
    host: str,
    port: int,
    username: bytes | None = None,
    password: bytes | None = None,
    exit_countries: frozenset[str] = frozenset(),
    exclude_exit_countries: frozenset[str] = frozenset(),
) -> IsolationKey:
    """The key of a stream to host:port that arrived on ``listener``."""
    return IsolationKey(
        listener=listener,
        username=username,
        password=password,
        dest_addr=host.lower() if rules.dest_addr else None,
        dest_port=port if rules.dest_port else None,
        exit_countries=frozenset(c.upper() for c in exit_countries),
        exclude_exit_countries=frozenset(c.upper() for c in exclude_exit_countries),
    )
