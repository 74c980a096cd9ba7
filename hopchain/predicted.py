"""Predicted ports: which clean circuits a client keeps ready (Tor's idea).

A client that opened a stream to port P lately will likely open another
one; a circuit whose exit accepts P, built ahead of time, saves that stream
a whole circuit build.  Tor predicts the ports seen in the last hour
(``PredictedPortsRelevanceTime``) and keeps clean circuits for each; so
does hopchain, with fewer circuits: one clean circuit per predicted port
(Tor wants two) and at most ``MAX_CLEAN`` clean circuits in all (Tor: 14).
Pure: time is passed in; the client shell builds what ``ports_to_prepare``
names.
"""

from collections.abc import Sequence
from typing import Final

from hopchain.directory import Descriptor

__all__ = ["MAX_CLEAN", "MAX_PORTS", "WINDOW", "PredictedPorts", "ports_to_prepare"]

WINDOW: Final = 3600.0
MAX_PORTS: Final = 16
MAX_CLEAN: Final = 4


class PredictedPorts:
    """The ports streams used in the last ``window`` seconds (at most
    ``max_ports`` of them, the most recent)."""

    def __init__(self, window: float = WINDOW, max_ports: int = MAX_PORTS) -> None:
        self._window = window
        self._max_ports = max_ports
        self._last_seen: dict[int, float] = {}

    def seen(self, port: int, now: float) -> None:
        """A stream to ``port`` was asked for at ``now``."""
        self._last_seen.pop(port, None)
        self._last_seen[port] = now
        while len(self._last_seen) > self._max_ports:
            del self._last_seen[next(iter(self._last_seen))]

    def ports(self, now: float) -> tuple[int, ...]:
        """The predicted ports, most recently seen first."""
        for port in [p for p, t in self._last_seen.items() if now - t >= self._window]:
            del self._last_seen[port]
        return tuple(reversed(self._last_seen))


def ports_to_prepare(
    predicted: Sequence[int], clean_exits: Sequence[Descriptor], max_clean: int
) -> list[int]:
    """The predicted ports that no clean circuit's exit accepts, in order,
    as many as ``max_clean`` clean circuits leave room for.  One new circuit
    may serve several of them, so a caller builds for the first and asks
    again."""
    missing = [
        port
        for port in predicted
        if not any(exit.allows_exit_to(port) for exit in clean_exits)
    ]
    return missing[: max(0, max_clean - len(clean_exits))]
