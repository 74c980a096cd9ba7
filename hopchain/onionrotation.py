"""When a relay replaces its onion key, and when it forgets the previous one.

The identity key is permanent; the onion key (the ``B`` of the handshake) is
replaced every ``lifetime`` (Tor: 28 days), so that a stolen onion key
decrypts only the circuits of one period.  Clients may hold a consensus
that still lists the previous key, so after a rotation the relay keeps
answering handshakes made with it for ``grace`` (Tor: 7 days), then
deletes it.  Time is passed in: this module reads no clock.
"""

from dataclasses import dataclass
from typing import Final

from hopchain.errors import ConfigError

LIFETIME: Final = 28 * 86400.0
GRACE: Final = 7 * 86400.0
# A key "created" further in the future than this is treated as due: the
# clock was wrong when it was made, and waiting for it could take weeks.
FUTURE_SLACK: Final = 86400.0


@dataclass(frozen=True, slots=True)
class RotationPolicy:
    """How long an onion key lives, and how long its predecessor is kept."""

    lifetime: float = LIFETIME
    grace: float = GRACE

    def __post_init__(self) -> None:
        if not 0 < self.grace < self.lifetime:
            raise ConfigError(
                f"onion_key_grace ({self.grace:g} s) must be more than 0 and "
                f"less than onion_key_lifetime ({self.lifetime:g} s)"
            )


@dataclass(frozen=True, slots=True)
class RotationStep:
    """What to do now: rotate, forget the previous key, and when to look again.

    ``wake_at`` is the next time something is due (seconds since the epoch),
    valid only after ``rotate`` and ``drop_previous`` are acted on.
    """

    rotate: bool
    drop_previous: bool
    wake_at: float


def plan(
    created: float, has_previous: bool, now: float, policy: RotationPolicy
) -> RotationStep:
    """The step for a current key made at ``created``.

    The previous key, if any, was replaced at ``created``, so it is kept
    until ``created + grace``.  After a rotation (``rotate``), the new
    current key is made ``now`` and the old current key becomes the previous
    one: the caller must not also drop it.
    """
    if now >= created + policy.lifetime or created > now + FUTURE_SLACK:
        return RotationStep(
            rotate=True, drop_previous=False, wake_at=now + policy.grace
        )
    drop = has_previous and now >= created + policy.grace
    wake_at = created + policy.lifetime
    if has_previous and not drop:
        wake_at = created + policy.grace
    return RotationStep(rotate=False, drop_previous=drop, wake_at=wake_at)
