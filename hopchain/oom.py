"""The relay's cell-queue memory budget and its out-of-memory choice.

Every cell a relay queues on any link is counted in one ``QueueBudget``.
When the total goes over the cap, the relay closes circuits, those holding
the most queued bytes first (Tor's out-of-memory handler), until the total
is at most ``OOM_TARGET`` of the cap; stopping below the cap, rather than
just under it, keeps one busy circuit from tripping the handler again with
its next cell.  ``select_victims`` makes that choice; the relay shell
frees the cells and tears the circuits down.
"""

from collections.abc import Hashable, Mapping
from typing import Final, TypeVar

__all__ = ["OOM_TARGET", "QueueBudget", "select_victims"]

OOM_TARGET: Final = 0.9

K = TypeVar("K", bound=Hashable)


class QueueBudget:
    """Bytes queued across all links, against ``cap`` (0: no cap)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.queued = 0
        self.peak = 0

    def add(self, n: int) -> None:
        """Count ``n`` bytes queued."""
        self.queued += n

    def remove(self, n: int) -> None:
        """Count ``n`` bytes sent or dropped."""
        self.queued -= n

    @property
    def over(self) -> bool:
        """Whether the queued bytes exceed the cap."""
        return 0 < self.cap < self.queued

    @property
    def target(self) -> int:
        """What the out-of-memory handler frees down to."""
        return int(self.cap * OOM_TARGET)

    def note_peak(self) -> None:
        """Remember the highest total seen once the cap has been enforced."""
        self.peak = max(self.peak, self.queued)


def select_victims(queued: Mapping[K, int], total: int, target: int) -> list[K]:
    """The keys to close, most queued bytes first, so that ``total`` drops to
    at most ``target``.

    ``queued`` maps each circuit to its queued bytes; ``total`` may be larger
    than their sum (cells of no circuit).  Keys with nothing queued are never
    chosen: closing them frees nothing.  Ties keep the mapping's order.
    """
    victims: list[K] = []
    for key, size in sorted(queued.items(), key=lambda item: -item[1]):
        if total <= target or size <= 0:
            break
        victims.append(key)
        total -= size
    return victims
