"""Tor's network-status consensus (dir-spec section 3.4.1), as hopchain
consensus objects.

Only what path selection needs is read: the validity times, and per relay
the ``r`` line (nickname, identity, address, OR port), ``s`` (flags), ``w``
(``Bandwidth=``, in kilobytes per second) and ``p`` (the exit port summary).
Families are not in a consensus (they are in the relays' descriptors), so
relays of one operator are not kept apart: see docs/simulations.md.
Countries come from a GeoIP database when one is given.  Signatures are not
checked: the file is the researcher's input, not a client's download.
"""

import base64
import binascii
import datetime
import re
from dataclasses import dataclass
from typing import Final

from hopchain.directory import FLAGS, Consensus, Descriptor, RouterStatus
from hopchain.errors import ConfigError
from hopchain.geoip import GeoIPDatabase

MAX_PORT: Final = 65535
_TIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")


@dataclass(slots=True)
class _Entry:
    nickname: str
    identity: bytes
    address: str
    or_port: int
    flags: frozenset[str] = frozenset()
    bandwidth: int = 0
    exit_ports: tuple[tuple[int, int], ...] = ()


def _timestamp(text: str, where: str) -> float:
    if not _TIME.match(text):
        raise ConfigError(f"{where}: not a time (YYYY-MM-DD HH:MM:SS): {text!r}")
    try:
        parsed = datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S")
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    return parsed.replace(tzinfo=datetime.UTC).timestamp()


def parse_port_list(text: str, where: str) -> tuple[tuple[int, int], ...]:
    """``80,443,6660-6669`` as sorted inclusive ranges."""
    ranges = []
    for item in text.split(","):
        low_text, _, high_text = item.partition("-")
        try:
            low = int(low_text)
            high = int(high_text) if high_text else low
        except ValueError as exc:
            raise ConfigError(f"{where}: bad port list {text!r}") from exc
        if not 1 <= low <= high <= MAX_PORT:
            raise ConfigError(f"{where}: bad port range {item!r}")
        ranges.append((low, high))
    return tuple(sorted(ranges))


def accepted_ports(
    action: str, ports: tuple[tuple[int, int], ...]
) -> tuple[tuple[int, int], ...]:
    """The accepted ranges of a ``p accept|reject PORTLIST`` summary."""
    if action == "accept":
        return ports
    accepted = []
    next_low = 1
    for low, high in ports:
        if low > next_low:
            accepted.append((next_low, low - 1))
        next_low = max(next_low, high + 1)
    if next_low <= MAX_PORT:
        accepted.append((next_low, MAX_PORT))
    return tuple(accepted)


def _identity(text: str, where: str) -> bytes:
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError(f"{where}: identity is not base64") from exc
    if len(raw) != 20:
        raise ConfigError(f"{where}: identity is not 20 bytes")
    # hopchain identities are 32 bytes: the SHA-1 fingerprint, zero-padded.
    return raw.ljust(32, b"\0")


def fingerprint(identity: bytes) -> str:
    """The Tor fingerprint (40 hex digits) of an identity made by this parser."""
    return identity[:20].hex().upper()


def parse_consensus(
    text: str, *, name: str = "consensus", geoip: GeoIPDatabase | None = None
) -> Consensus:
    """Parse one consensus document.

    Raises:
        ConfigError: not a consensus, or a malformed line (named by number).
    """
    times: dict[str, float] = {}
    entries: list[_Entry] = []
    seen_header = False
    for number, line in enumerate(text.splitlines(), 1):
        where = f"{name} line {number}"
        keyword, _, rest = line.partition(" ")
        if keyword == "network-status-version":
            seen_header = True
        elif keyword in ("valid-after", "fresh-until", "valid-until"):
            times[keyword] = _timestamp(rest.strip(), where)
        elif keyword == "r":
            # nickname identity [digest] date time address orport dirport:
            # the full consensus has the digest, the microdesc flavour not.
            parts = rest.split()
            if len(parts) not in (7, 8):
                raise ConfigError(f"{where}: 'r' line needs 7 or 8 fields")
            try:
                or_port = int(parts[-2])
            except ValueError as exc:
                raise ConfigError(f"{where}: bad OR port") from exc
            entries.append(
                _Entry(parts[0], _identity(parts[1], where), parts[-3], or_port)
            )
        elif keyword in ("s", "w", "p") and not entries:
            raise ConfigError(f"{where}: {keyword!r} line before any 'r' line")
        elif keyword == "s":
            entries[-1].flags = frozenset(f for f in rest.split() if f in FLAGS)
        elif keyword == "w":
            for item in rest.split():
                key, _, value = item.partition("=")
                if key == "Bandwidth":
                    try:
                        entries[-1].bandwidth = int(value) * 1000
                    except ValueError as exc:
                        raise ConfigError(f"{where}: bad Bandwidth") from exc
        elif keyword == "p":
            action, _, ports = rest.partition(" ")
            if action not in ("accept", "reject"):
                raise ConfigError(f"{where}: 'p' must accept or reject")
            entries[-1].exit_ports = accepted_ports(
                action, parse_port_list(ports.strip(), where)
            )
        elif keyword == "directory-footer":
            break
    if not seen_header:
        raise ConfigError(f"{name}: not a Tor consensus (no network-status-version)")
    missing = {"valid-after", "fresh-until", "valid-until"} - times.keys()
    if missing:
        raise ConfigError(f"{name}: missing {', '.join(sorted(missing))}")
    statuses = []
    for entry in entries:
        country = geoip.country(entry.address) if geoip is not None else None
        descriptor = Descriptor(
            nickname=entry.nickname,
            identity=entry.identity,
            onion_key=bytes(32),
            address=entry.address,
            or_port=entry.or_port,
            bandwidth=entry.bandwidth,
            exit_ports=entry.exit_ports,
            family=(),
            country=country or "",
            published=times["valid-after"],
            test_network=False,
        )
        statuses.append(RouterStatus(descriptor, entry.flags, country is not None))
    return Consensus(
        valid_after=times["valid-after"],
        fresh_until=times["fresh-until"],
        valid_until=times["valid-until"],
        relays=tuple(statuses),
        signers=frozenset(),
    )
