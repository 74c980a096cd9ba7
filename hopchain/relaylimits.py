"""A relay's resource-limit settings: ``RelayLimits``, and the
``hopchain relay`` options that set them (``add_limit_options``,
``limits_from_args``).

The relay shell applies them (``hopchain.relay.limits.RelayLimiter``); the
pure pieces it uses are ``hopchain.ratelimit``, ``hopchain.accounting`` and
``hopchain.oom``.
"""

import argparse
import re
from dataclasses import dataclass
from typing import Final

from hopchain.accounting import parse_period
from hopchain.errors import ConfigError

__all__ = [
    "LIMIT_OPTIONS",
    "MIB",
    "RelayLimits",
    "add_limit_options",
    "format_size",
    "limits_from_args",
    "parse_size",
]

MIB: Final = 1024 * 1024
_SIZE = re.compile(r"(\d+)\s*(?:([kmgt])(?:i?b)?|b)?", re.IGNORECASE)
# The config keys (argparse dests) of the options add_limit_options declares.
LIMIT_OPTIONS: Final = (
    "bandwidth_rate",
    "bandwidth_burst",
    "accounting_max",
    "accounting_period",
    "max_links_per_address",
    "max_new_links_per_second",
    "max_creates_per_second",
    "max_creates_burst",
    "handshake_timeout",
    "max_queued_bytes",
)
_UNITS: Final = {"": 1, "k": 1024, "m": MIB, "g": 1024 * MIB, "t": 1024 * 1024 * MIB}


@dataclass
class RelayLimits:
    """The limits (0 means no limit, except where noted).

    Attributes:
        bandwidth_rate: bytes per second the relay reads from links and exit
            connections.
        bandwidth_burst: bytes it may read at once after an idle time (0:
            the rate).
        accounting_max: bytes per accounting period; then new circuits are
            refused until the period ends.
        accounting_period: ``day``, ``week``, ``month`` or seconds.
        links_per_address: concurrent inbound links from one address.
        new_links_per_second: new inbound links per second from one
            address (its burst is ``links_per_address``, or 100 without
            that).
        creates_per_second: circuit creations per second per address.
        creates_burst: circuit creations one address may make at once.
        handshake_timeout: seconds an inbound link has for its handshake
            (always bounded, must be positive).
        max_queued_bytes: cell bytes queued on all links together.
    """

    bandwidth_rate: int = 0
    bandwidth_burst: int = 0
    accounting_max: int = 0
    accounting_period: str | int = "month"
    links_per_address: int = 100
    new_links_per_second: float = 10.0
    creates_per_second: float = 20.0
    creates_burst: int = 400
    handshake_timeout: float = 10.0
    max_queued_bytes: int = 64 * MIB

    def check(self) -> None:
        """Raise ConfigError, naming the option, for values that make no
        sense."""
        numbers = {
            "--bandwidth-rate": self.bandwidth_rate,
            "--bandwidth-burst": self.bandwidth_burst,
            "--accounting-max": self.accounting_max,
            "--max-links-per-address": self.links_per_address,
            "--max-new-links-per-second": self.new_links_per_second,
            "--max-creates-per-second": self.creates_per_second,
            "--max-creates-burst": self.creates_burst,
            "--max-queued-bytes": self.max_queued_bytes,
        }
        for name, value in numbers.items():
            if value < 0:
                raise ConfigError(f"{name} must not be negative")
        if not self.handshake_timeout > 0:
            raise ConfigError("--handshake-timeout must be positive")
        if self.creates_per_second and self.creates_burst < 1:
            raise ConfigError("--max-creates-burst must be at least 1")
        if 0 < self.bandwidth_burst < self.bandwidth_rate:
            raise ConfigError("--bandwidth-burst must be at least --bandwidth-rate")
        if isinstance(self.accounting_period, str):
            try:
                parse_period(self.accounting_period)
            except ValueError as exc:
                raise ConfigError(f"--accounting-period: {exc}") from exc

    @property
    def new_links_burst(self) -> int:
        """How many links one address may open at once."""
        return self.links_per_address or 100

    @property
    def burst(self) -> int:
        """The bandwidth burst in effect."""
        return self.bandwidth_burst or self.bandwidth_rate

    def advertised(self, bandwidth: int) -> int:
        """The bandwidth to put in the descriptor: never above the rate
        limit, or clients would send more than the relay lets through."""
        if self.bandwidth_rate:
            return min(bandwidth, self.bandwidth_rate)
        return bandwidth


def parse_size(text: str) -> int:
    """A byte count: ``1048576``, ``512K``, ``64MiB``, ``2 GB`` (units are
    powers of 1024).

    Raises:
        ValueError: not a size.
    """
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a size: {text!r}")
    return int(match.group(1)) * _UNITS[(match.group(2) or "").lower()]


def format_size(size: int) -> str:
    """``size`` as ``parse_size`` reads it, in the largest unit that keeps
    it whole (``67108864`` -> ``64M``)."""
    for unit in "TGMK":
        if size and size % _UNITS[unit.lower()] == 0:
            return f"{size // _UNITS[unit.lower()]}{unit}"
    return str(size)


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _period(text: str) -> str | int:
    try:
        return parse_period(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_limit_options(parser: argparse.ArgumentParser) -> None:
    """Declare the resource-limit options of ``hopchain relay``.

    Defaults are text, as for every relay option (``hopchain.relayconfig``):
    argparse converts them like a typed value, and ``relay init`` writes
    them as an operator would type them (``64M``, not 67108864).
    """
    d = RelayLimits()
    group = parser.add_argument_group(
        "resource limits",
        "sizes take K, M, G suffixes (powers of 1024); 0 turns a limit off; "
        "all are reloaded on SIGHUP",
    )
    group.add_argument(
        "--bandwidth-rate",
        type=_size,
        default=format_size(d.bandwidth_rate),
        metavar="BYTES",
        help="bytes per second read from links and exit connections, for all "
        "circuits together (default 0: unlimited); the advertised --bandwidth "
        "is lowered to it",
    )
    group.add_argument(
        "--bandwidth-burst",
        type=_size,
        default=format_size(d.bandwidth_burst),
        metavar="BYTES",
        help="bytes that may be read at once after an idle time (default 0: the rate)",
    )
    group.add_argument(
        "--accounting-max",
        type=_size,
        default=format_size(d.accounting_max),
        metavar="BYTES",
        help="bytes read per accounting period; once used, new circuits are "
        "refused until the period ends (default 0: no accounting)",
    )
    group.add_argument(
        "--accounting-period",
        type=_period,
        default=str(d.accounting_period),
        metavar="PERIOD",
        help="day, week (from Monday), month, or a number of seconds; "
        "aligned to UTC (default month)",
    )
    group.add_argument(
        "--max-links-per-address",
        type=int,
        default=str(d.links_per_address),
        metavar="N",
        help=f"concurrent inbound links from one address (default "
        f"{d.links_per_address})",
    )
    group.add_argument(
        "--max-new-links-per-second",
        type=float,
        default=f"{d.new_links_per_second:g}",
        metavar="RATE",
        help=f"new inbound links per second from one address, after a burst of "
        f"--max-links-per-address (default {d.new_links_per_second:g})",
    )
    group.add_argument(
        "--max-creates-per-second",
        type=float,
        default=f"{d.creates_per_second:g}",
        metavar="RATE",
        help=f"circuit creations per second from one client address; relays "
        f"are exempt (default {d.creates_per_second:g})",
    )
    group.add_argument(
        "--max-creates-burst",
        type=int,
        default=str(d.creates_burst),
        metavar="N",
        help=f"circuit creations one client address may make at once "
        f"(default {d.creates_burst})",
    )
    group.add_argument(
        "--handshake-timeout",
        type=float,
        default=f"{d.handshake_timeout:g}",
        metavar="SECONDS",
        help=f"time an inbound link has to finish its handshake "
        f"(default {d.handshake_timeout:g})",
    )
    group.add_argument(
        "--max-queued-bytes",
        type=_size,
        default=format_size(d.max_queued_bytes),
        metavar="BYTES",
        help="cell bytes queued on all links together; above it the circuits "
        "holding the most are closed (default "
        f"{format_size(d.max_queued_bytes)})",
    )


def limits_from_args(args: argparse.Namespace) -> RelayLimits:
    """The ``RelayLimits`` the options of ``add_limit_options`` give.

    Raises:
        ConfigError: an impossible combination.
    """
    limits = RelayLimits(
        bandwidth_rate=args.bandwidth_rate,
        bandwidth_burst=args.bandwidth_burst,
        accounting_max=args.accounting_max,
        accounting_period=args.accounting_period,
        links_per_address=args.max_links_per_address,
        new_links_per_second=args.max_new_links_per_second,
        creates_per_second=args.max_creates_per_second,
        creates_burst=args.max_creates_burst,
        handshake_timeout=args.handshake_timeout,
        max_queued_bytes=args.max_queued_bytes,
    )
    limits.check()
    return limits
