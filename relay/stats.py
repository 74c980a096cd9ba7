"""Counters a relay keeps about itself, for its metrics (counts only).

The relay's code bumps these plain integers where things happen (one line
per event); ``hopchain.relay.metrics`` reads them when the metrics endpoint
is scraped, so the hot path never touches the Prometheus library.  Nothing
here holds an address, a destination or a key: counts by fixed labels only.

``Traffic`` counts what links carry after their handshake.  Every link
starts with its own; the relay hands all of its links one shared
``RelayStats.traffic`` when it starts serving them.
"""

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

import trio

from hopchain.errors import HandshakeError
from hopchain.messages import LARGE_BODY, SMALL_BODY

# Cell size classes (protocol.md): relay cells are SMALL_BODY or LARGE_BODY
# bytes; CREATE, CREATED, DESTROY and AUTHENTICATE are "other".  Cells are
# counted in lists indexed by class, the cheapest count per cell in Python.
SIZE_CLASSES: Final = ("small", "large", "other")
SIZE_INDEX: Final = {SMALL_BODY: 0, LARGE_BODY: 1}
OTHER_SIZE: Final = 2

# Which handshake failed, and why (``handshake_failure``): a fixed label set.
HANDSHAKES: Final = {
    "link": ("timeout", "closed", "invalid", "network"),
    "circuit": ("invalid",),
    "authenticate": ("invalid",),
}
# Limits the relay itself enforces today; resource-limit code adds its kinds.
CIRCUIT_QUEUE_LIMIT: Final = "circuit_queue"


class _Closable(Protocol):
    closed: bool


@dataclass(slots=True)
class Traffic:
    """Bytes (records on the wire) and cells of links; cell counts are
    indexed like ``SIZE_CLASSES`` (``SIZE_INDEX.get(len(body), OTHER_SIZE)``)."""

    bytes_received: int = 0
    bytes_sent: int = 0
    cells_received: list[int] = field(default_factory=lambda: [0, 0, 0])
    cells_sent: list[int] = field(default_factory=lambda: [0, 0, 0])

    def cells(self, direction: str) -> dict[str, int]:
        """Cells ``received`` or ``sent``, by size class name."""
        counts = self.cells_received if direction == "received" else self.cells_sent
        return dict(zip(SIZE_CLASSES, counts, strict=True))


def handshake_failure_reason(exc: BaseException) -> str:
    """The ``reason`` label for a failed link handshake."""
    if isinstance(exc, trio.TooSlowError):
        return "timeout"
    if isinstance(exc, EOFError):
        return "closed"
    if isinstance(exc, HandshakeError):
        return "invalid"
    return "network"


@dataclass
class RelayStats:
    """What a relay has done since it started (see the module docstring).

    ``queued_bytes`` reports the memory held by queued cells when asked; the
    relay points it at its own measure (``RelayNode``: the cell bytes its
    queue budget counts on all links).  ``limit_hits`` counts refusals by
    limit kind (snake_case).
    """

    started: float = 0.0
    traffic: Traffic = field(default_factory=Traffic)
    links_opened: Counter[str] = field(default_factory=Counter)
    links_closed: Counter[str] = field(default_factory=Counter)
    circuits_created: int = 0
    circuits_closed: int = 0
    streams_opened: int = 0
    streams_closed: int = 0
    exit_bytes_received: int = 0
    exit_bytes_sent: int = 0
    handshake_failures: Counter[tuple[str, str]] = field(default_factory=Counter)
    limit_hits: Counter[str] = field(
        default_factory=lambda: Counter({CIRCUIT_QUEUE_LIMIT: 0})
    )
    queued_bytes: Callable[[], int] = lambda: 0

    def handshake_failure(self, handshake: str, exc: BaseException) -> None:
        """Count one failed handshake (``handshake`` is a key of HANDSHAKES)."""
        self.handshake_failures[handshake, handshake_failure_reason(exc)] += 1

    def queue_refused(self, link: _Closable) -> None:
        """A link refused a cell: a limit hit, unless the link had closed."""
        if not link.closed:
            self.limit_hits[CIRCUIT_QUEUE_LIMIT] += 1
