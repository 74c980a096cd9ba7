"""Country lookup from Tor's geoip/geoip6 files, and the country of a relay.

Tor's format (Debian's tor-geoipdb package ships both files in
/usr/share/tor/): one range per line, ``#`` starts a comment.

    geoip     INTLOW,INTHIGH,CC          e.g. 16777216,16777471,AU
    geoip6    IPV6LOW,IPV6HIGH,CC        e.g. 2001:200::,2001:200:ffff:...,JP

Ranges are inclusive and sorted; ``??`` means unknown.  The tables are kept
compact (IPv4 in ``array('I')``, IPv6 as 16-byte big-endian keys in one
``bytes`` blob) because the full files hold about 660,000 ranges, and a
lookup is a binary search.

MaxMind DB files (``.mmdb``: GeoLite2-Country, GeoIP2-Country or City, and
DB-IP's country files, which share MaxMind's layout) are read with the
``maxminddb`` package from bytes in memory; a record's ``country.iso_code``
(else ``registered_country.iso_code``) is its country.  A database may hold
both kinds: the .mmdb answers first, the Tor ranges fill its gaps.

This module reads no files itself: the caller passes the text or the bytes
in (the shells read the files).
"""

from __future__ import annotations  # array[int] is not subscriptable on 3.11

import io
import ipaddress
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import maxminddb
from maxminddb.errors import InvalidDatabaseError
from maxminddb.reader import Reader

from hopchain.errors import ConfigError
from hopchain.exitpolicy import normalise

UNKNOWN = "??"


_CODES: dict[str, str] = {}


def _country(code: str, where: str) -> str:
    """A validated country code, interned (hundreds of thousands of ranges
    share about 250 codes)."""
    known = _CODES.get(code)
    if known is not None:
        return known
    code = code.strip().upper()
    if len(code) != 2 or not code.isascii() or not (code.isalpha() or code == UNKNOWN):
        raise ConfigError(f"{where}: bad country code {code!r}")
    return _CODES.setdefault(code, code)


@dataclass
class GeoIPDatabase:
    """Sorted, non-overlapping address ranges with a country each."""

    v4_low: array[int] = field(default_factory=lambda: array("I"))
    v4_high: array[int] = field(default_factory=lambda: array("I"))
    v4_country: list[str] = field(default_factory=list)
    v6_low: bytes = b""
    v6_high: bytes = b""
    v6_country: list[str] = field(default_factory=list)
    mmdb: Reader | None = None

    @classmethod
    def from_tor_files(
        cls,
        geoip: str | None,
        geoip6: str | None,
        *,
        names: tuple[str, str] = ("geoip", "geoip6"),
    ) -> GeoIPDatabase:
        """Parse the text of Tor's geoip and/or geoip6 files.

        Raises:
            ConfigError: a malformed or out-of-order line (named by number).
        """
        db = cls()
        v6_low, v6_high = bytearray(), bytearray()
        for text, version in ((geoip, 4), (geoip6, 6)):
            last = -1
            for number, line in enumerate((text or "").splitlines(), 1):
                if not line or line[0] == "#" or line.isspace():
                    continue
                where = f"{names[version == 6]} line {number}"
                try:
                    low_text, high_text, code = line.strip().split(",")
                    if version == 4:
                        low, high = int(low_text), int(high_text)
                    else:
                        low = int(ipaddress.IPv6Address(low_text))
                        high = int(ipaddress.IPv6Address(high_text))
                except ValueError as exc:
                    raise ConfigError(f"{where}: not LOW,HIGH,CC") from exc
                limit = 2**32 if version == 4 else 2**128
                if not last < low <= high < limit:
                    raise ConfigError(f"{where}: range empty, out of order or overlaps")
                last = high
                if version == 4:
                    db.v4_low.append(low)
                    db.v4_high.append(high)
                    db.v4_country.append(_country(code, where))
                else:
                    v6_low += low.to_bytes(16, "big")
                    v6_high += high.to_bytes(16, "big")
                    db.v6_country.append(_country(code, where))
        db.v6_low, db.v6_high = bytes(v6_low), bytes(v6_high)
        return db

    @classmethod
    def from_mmdb(cls, data: bytes, *, name: str = "mmdb") -> GeoIPDatabase:
        """A database answering from a MaxMind DB file's bytes.

        Raises:
            ConfigError: the bytes are not a MaxMind DB (named by ``name``).
        """
        db = cls()
        db.add_mmdb(data, name=name)
        return db

    def add_mmdb(self, data: bytes, *, name: str = "mmdb") -> None:
        """Answer from a MaxMind DB file's bytes first (see the module docstring).

        Raises:
            ConfigError: the bytes are not a MaxMind DB (named by ``name``).
        """
        try:
            reader = maxminddb.open_database(io.BytesIO(data), maxminddb.MODE_FD)
        except (InvalidDatabaseError, ValueError, TypeError, IndexError) as exc:
            raise ConfigError(f"{name}: not a MaxMind DB file ({exc})") from exc
        if not isinstance(reader, Reader):  # MODE_FD always gives the pure reader
            raise ConfigError(f"{name}: not a MaxMind DB file")
        self.mmdb = reader

    def __len__(self) -> int:
        """The number of Tor-format ranges plus the .mmdb's search-tree nodes."""
        nodes = 0 if self.mmdb is None else self.mmdb.metadata().node_count
        return len(self.v4_country) + len(self.v6_country) + nodes

    def country(self, address: str) -> str | None:
        """The country of an IP address, or None when no source knows it."""
        ip = normalise(address)
        if self.mmdb is not None:
            found = _mmdb_country(self.mmdb, ip)
            if found is not None:
                return found
        if ip.version == 4:
            index = _last_at_most(lambda i: self.v4_low[i], len(self.v4_low), int(ip))
            if index >= 0 and int(ip) <= self.v4_high[index]:
                return _known(self.v4_country[index])
            return None
        key = ip.packed
        index = _last_at_most(
            lambda i: self.v6_low[16 * i : 16 * i + 16], len(self.v6_country), key
        )
        if index >= 0 and key <= self.v6_high[16 * index : 16 * index + 16]:
            return _known(self.v6_country[index])
        return None


def _known(code: str) -> str | None:
    return None if code == UNKNOWN else code


def _mmdb_country(
    reader: Reader, ip: ipaddress.IPv4Address | ipaddress.IPv6Address
) -> str | None:
    """The record's ISO country code; None for no record, no code, a code
    that is not two letters, an IPv6 address in an IPv4-only file, or a
    corrupt record (the lookup is then as good as unknown)."""
    try:
        record: Any = reader.get(ip)
    except (InvalidDatabaseError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    for key in ("country", "registered_country"):
        part = record.get(key)
        code = part.get("iso_code") if isinstance(part, dict) else None
        if (
            isinstance(code, str)
            and len(code) == 2
            and code.isascii()
            and code.isalpha()
        ):
            return code.upper()
    return None


Key = TypeVar("Key", int, bytes)


def _last_at_most(key_at: Callable[[int], Key], count: int, target: Key) -> int:
    """Index of the last range whose low key is <= target (-1 if none)."""
    low, high = 0, count
    while low < high:
        middle = (low + high) // 2
        if key_at(middle) <= target:
            low = middle + 1
        else:
            high = middle
    return low - 1


def relay_country(
    address: str, declared: str, db: GeoIPDatabase | None
) -> tuple[str, bool]:
    """The country an authority lists for a relay, and whether it was verified.

    A public address is looked up in ``db`` (verified; "" when the database
    does not know it, as the relay's own claim is not trusted then).  A
    private or loopback address (test networks), or no database at all,
    keeps the country the relay declared, marked as declared.
    """
    if db is not None and normalise(address).is_global:
        return db.country(address) or "", True
    return declared, False
