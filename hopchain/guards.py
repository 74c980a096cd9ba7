"""Entry guards: a small, persistent set of first hops.

Choosing the first hop afresh for every circuit would, over time, hand a
guard-owning adversary a view of the client's traffic; a client instead
keeps a few guards for weeks (Tor's guard-spec, much simplified).

* The set holds at most ``MAX_GUARDS`` reachable guards, each with an
  expiry drawn uniformly from ``LIFETIME`` when it was added (rotation).
* Path selection prefers the guards in order (oldest first): the first one
  that is running, Guard-flagged, compatible with the rest of the path and
  not waiting for a retry is used.
* When none of them is usable, path selection picks a new one (bandwidth
  weighted, avoiding the guards that are down); ``after_use`` then adds it,
  dropping the oldest reachable guards beyond the cap (never the one just
  used: a guard that comes back may push out one added while it was down).
* A guard the client cannot reach (``failed``) is marked unreachable and
  skipped, so the next guard is used meanwhile; it is tried again on the
  ``RETRY_SCHEDULE`` counted from when it first failed, and a circuit built
  through it (``after_use``) marks it reachable again.  Unreachable guards
  do not count against ``MAX_GUARDS``; they leave the set by expiry, or when
  more than ``MAX_UNREACHABLE`` are down (the one down longest first).

The retry schedule is the one guard-spec gives primary guards (section
"When a guard fails"): every 10 minutes for the first 6 hours, every 90
minutes for the next 90 hours, every 4 hours for the next 3 days, then every
9 hours.  Differences from Tor's guard-spec, on purpose: no separate sampled
and primary sets (so one schedule, the primary one, for every guard), no
confirmed/unconfirmed states, and no circuit held back waiting for a better
guard.  Time is passed in (wall clock seconds); randomness is injected.  The
set serialises to JSON for the client's data directory.
"""

import json
import math
import random
from dataclasses import dataclass, replace
from typing import Final

from hopchain.errors import ConfigError

MAX_GUARDS: Final = 3
MAX_UNREACHABLE: Final = 8
LIFETIME: Final = (30 * 86400.0, 60 * 86400.0)
HOUR: Final = 3600.0
# (down for less than this many seconds, retry every this many seconds)
RETRY_SCHEDULE: Final = (
    (6 * HOUR, 600.0),
    (96 * HOUR, 90 * 60.0),
    (168 * HOUR, 4 * HOUR),
    (math.inf, 9 * HOUR),
)


def retry_interval(down_for: float) -> float:
    """Seconds between retries of a guard that has been down ``down_for`` s."""
    return next(every for limit, every in RETRY_SCHEDULE if down_for < limit)


@dataclass(frozen=True, slots=True)
class Guard:
    """One guard: its identity key, when it was added, when it expires, and,
    while it is unreachable, when it first failed and was last tried."""

    identity: bytes
    added: float
    expires: float
    unreachable_since: float | None = None
    last_tried: float | None = None

    def retry_due(self, now: float) -> bool:
        """Reachable, or unreachable long enough to be tried again."""
        if self.unreachable_since is None or self.last_tried is None:
            return True
        wait = retry_interval(self.last_tried - self.unreachable_since)
        return now >= self.last_tried + wait


@dataclass(frozen=True, slots=True)
class GuardSet:
    """The client's guards, oldest first."""

    guards: tuple[Guard, ...] = ()

    def preferred(self, now: float) -> tuple[bytes, ...]:
        """Identities of the guards to try, in order: not expired, and
        reachable or due for a retry."""
        return tuple(
            g.identity for g in self.guards if g.expires > now and g.retry_due(now)
        )

    def waiting(self, now: float) -> frozenset[bytes]:
        """Identities of the guards that are down and not yet due for a retry."""
        return frozenset(
            g.identity for g in self.guards if g.expires > now and not g.retry_due(now)
        )

    def after_use(self, identity: bytes, now: float, rng: random.Random) -> "GuardSet":
        """The set after a circuit was built through ``identity``."""
        kept = tuple(
            replace(g, unreachable_since=None, last_tried=None)
            if g.identity == identity
            else g
            for g in self.guards
            if g.expires > now
        )
        if not any(g.identity == identity for g in kept):
            kept += (Guard(identity, now, now + rng.uniform(*LIFETIME)),)
        return GuardSet(_trim(kept, identity))

    def failed(self, identity: bytes, now: float) -> "GuardSet":
        """The set after the client could not reach ``identity`` (a guard
        not in the set is ignored: it was a first hop, never chosen)."""
        if not any(g.identity == identity for g in self.guards):
            return self
        return GuardSet(
            _trim(
                tuple(
                    replace(
                        g,
                        unreachable_since=g.unreachable_since
                        if g.unreachable_since is not None
                        else now,
                        last_tried=now,
                    )
                    if g.identity == identity
                    else g
                    for g in self.guards
                    if g.expires > now
                )
            )
        )

    def to_json(self) -> str:
        """The set as JSON (for ``guards.json``)."""
        return json.dumps(
            [
                {
                    "identity": g.identity.hex(),
                    "added": g.added,
                    "expires": g.expires,
                    "unreachable_since": g.unreachable_since,
                    "last_tried": g.last_tried,
                }
                for g in self.guards
            ]
        )

    @classmethod
    def from_json(cls, text: str) -> "GuardSet":
        """Parse ``to_json`` output (also the older form without the
        reachability fields).

        Raises:
            ConfigError: the file is not a valid guard list.
        """
        try:
            items = json.loads(text)
            guards = tuple(
                Guard(
                    bytes.fromhex(item["identity"]),
                    float(item["added"]),
                    float(item["expires"]),
                    _optional_time(item.get("unreachable_since")),
                    _optional_time(item.get("last_tried")),
                )
                for item in items
            )
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ConfigError(f"guard state is malformed: {exc}") from exc
        if any(len(g.identity) != 32 for g in guards):
            raise ConfigError("guard state holds a malformed identity")
        if any((g.unreachable_since is None) != (g.last_tried is None) for g in guards):
            raise ConfigError("guard state holds a half-marked unreachable guard")
        return cls(_trim(guards))


def _optional_time(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{value!r} is not a time")
    return float(value)


def _trim(guards: tuple[Guard, ...], used: bytes | None = None) -> tuple[Guard, ...]:
    """Keep the newest ``MAX_GUARDS`` reachable guards (always the one just
    ``used``) and the ``MAX_UNREACHABLE`` unreachable ones that went down
    last, in order."""
    reachable = [g for g in guards if g.unreachable_since is None]
    reachable.sort(key=lambda g: g.identity == used)  # stable: used goes last
    down = sorted(
        (g for g in guards if g.unreachable_since is not None),
        key=lambda g: g.unreachable_since or 0.0,
    )
    keep = {id(g) for g in reachable[-MAX_GUARDS:]}
    keep |= {id(g) for g in down[-MAX_UNREACHABLE:]}
    return tuple(g for g in guards if id(g) in keep)
