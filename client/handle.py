"""A client circuit as the shell sees it, and the one-shot replies tasks wait on.

``ClientCircuitHandle`` pairs the core's ``ClientCircuit`` with the link it
runs on, its streams and the tasks waiting for an answer on it.  The link
reader (``hopchain.client.links``) fills ``Reply`` objects with CREATED,
EXTENDED, CONNECTED, END or RESOLVED, or with ``CLOSED`` when the circuit
dies; the building and attaching tasks await them.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import trio
from hopchain.relay.link import Link
from hopchain.relay.stream import CircuitStream, CreditSignal, forget_if_ended

from hopchain.circuit import CircuitState, ClientCircuit
from hopchain.directory import Descriptor
from hopchain.isolation import IsolationKey
from hopchain.wire import CellCommand

CLEAN_LIFETIME: Final = 3600.0
"""Seconds an unused circuit stays available before it is retired."""


class Reply:
    """A one-shot value set by the link reader and awaited by a task."""

    def __init__(self) -> None:
        self._event = trio.Event()
        self.value: object = None

    def set(self, value: object) -> None:
        """Set the value (only the first call counts) and wake the waiter."""
        if not self._event.is_set():
            self.value = value
            self._event.set()

    async def wait(self) -> object:
        """The value, once set."""
        await self._event.wait()
        return self.value


CLOSED: Final = object()
"""What a ``Reply`` holds when its circuit died before the answer came."""


@dataclass(eq=False)
class ClientCircuitHandle:
    """A circuit as the client shell sees it.

    ``unusable`` marks a circuit that takes no new stream any more because a
    stream on it got no answer in time (Tor's
    ``mark_circuit_unusable_for_new_conns``); its open streams go on, and it
    is destroyed once they have ended.
    """

    core: ClientCircuit
    link: Link
    circ_id: int
    exit: Descriptor
    path: tuple[Descriptor, ...] = ()
    built_at: float = 0.0
    dirty_since: float | None = None
    streams: dict[int, CircuitStream] = field(default_factory=dict)
    waiting: dict[int, Reply] = field(default_factory=dict)
    credit: CreditSignal = field(default_factory=CreditSignal)
    build_reply: Reply | None = None
    isolation: IsolationKey | None = None
    epoch: int = 0
    fallback: bool = False
    unusable: bool = False
    on_overflow: Callable[["ClientCircuitHandle"], None] | None = None

    def forget_if_ended(self, stream_id: int) -> None:
        """Drop a stream once the core has forgotten it (both ENDs)."""
        forget_if_ended(self.streams, self.core.streams, stream_id)

    @property
    def exit_label(self) -> str:
        """The exit's nickname and country, for status output."""
        return f"{self.exit.nickname} ({self.exit.country or '??'})"

    def attach(self, now: float) -> None:
        """A stream uses the circuit: it is dirty from now on (once)."""
        if self.dirty_since is None:
            self.dirty_since = now

    def is_clean_at(self, now: float) -> bool:
        """Open, never used by a stream, and not past ``CLEAN_LIFETIME``."""
        return (
            self.is_open
            and self.dirty_since is None
            and not self.unusable
            and now - self.built_at < CLEAN_LIFETIME
        )

    @property
    def is_open(self) -> bool:
        """Built and not closed."""
        return self.core.state is CircuitState.OPEN and not self.link.closed

    @property
    def idle(self) -> bool:
        """No stream on it and no task waiting for an answer."""
        return not self.streams and not self.waiting

    def send(self, bodies: list[bytes], *, early: bool = False) -> None:
        """Queue relay cells on the circuit's link (RELAY_EARLY if ``early``).

        Only EXTEND goes out as RELAY_EARLY, as in Tor.  That lets each relay
        count how many EXTENDs pass it, so the guard learns the path length
        and a hop learns how many hops follow it; the alternative (sending a
        fixed number of RELAY_EARLY cells) would instead tell the exit the
        path length, and the exit is the hop that sees destinations.
        """
        command = CellCommand.RELAY_EARLY if early else CellCommand.RELAY
        for body in bodies:
            if not self.link.send(self.circ_id, command, body):
                if self.on_overflow is not None:
                    self.on_overflow(self)
                return
