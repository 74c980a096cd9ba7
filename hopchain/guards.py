"""Entry guards: a small, persistent set of first hops.

Choosing the first hop afresh for every circuit would, over time, hand a
guard-owning adversary a view of the client's traffic; a client instead
keeps a few guards for weeks (Tor's guard-spec, much simplified).

* The set holds at most ``MAX_GUARDS`` guards, each with an expiry drawn
  uniformly from ``LIFETIME`` when it was added (rotation).
* Path selection prefers the guards in order: the first one that is running,
  Guard-flagged and compatible with the rest of the path is used.
* When none of them is usable, path selection picks a new one (bandwidth
  weighted); ``after_use`` then adds it, dropping the oldest beyond the cap.

Differences from Tor's guard-spec, on purpose: no separate sampled and
primary sets, no confirmed/unconfirmed states and no retry schedule; a guard
that is down is skipped (not retried on a timer) and leaves the set only by
expiry or the cap.  Time is passed in (wall clock seconds); randomness is
injected.  The set serialises to JSON for the client's data directory.
"""

import json
import random
from dataclasses import dataclass
from typing import Final

from hopchain.errors import ConfigError

MAX_GUARDS: Final = 3
LIFETIME: Final = (30 * 86400.0, 60 * 86400.0)


@dataclass(frozen=True, slots=True)
class Guard:
    """One guard: its identity key, when it was added, when it expires."""

    identity: bytes
    added: float
    expires: float


@dataclass(frozen=True, slots=True)
class GuardSet:
    """The client's guards, oldest first."""

    guards: tuple[Guard, ...] = ()

    def preferred(self, now: float) -> tuple[bytes, ...]:
        """Identities of the guards that have not expired, in order."""
        return tuple(g.identity for g in self.guards if g.expires > now)

    def after_use(self, identity: bytes, now: float, rng: random.Random) -> "GuardSet":
        """The set after a circuit was built through ``identity``."""
        kept = tuple(g for g in self.guards if g.expires > now)
        if not any(g.identity == identity for g in kept):
            kept += (Guard(identity, now, now + rng.uniform(*LIFETIME)),)
        return GuardSet(kept[-MAX_GUARDS:])

    def to_json(self) -> str:
        """The set as JSON (for ``guards.json``)."""
        return json.dumps(
            [
                {"identity": g.identity.hex(), "added": g.added, "expires": g.expires}
                for g in self.guards
            ]
        )

    @classmethod
    def from_json(cls, text: str) -> "GuardSet":
        """Parse ``to_json`` output.

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
                )
                for item in items
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"guard state is malformed: {exc}") from exc
        if any(len(g.identity) != 32 for g in guards):
            raise ConfigError("guard state holds a malformed identity")
        return cls(guards[-MAX_GUARDS:])
