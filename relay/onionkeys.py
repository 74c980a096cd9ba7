"""A relay's onion keys: the current one, and the previous one during its
grace period, rotated on the schedule of ``hopchain.onionrotation``.

A new key is written to disk (``OnionKeyFiles``) before it is used; the
relay publishes it at once (``OnionKeyRing.check`` says when it rotated).
"""

import logging
import secrets
from dataclasses import dataclass

from hopchain.relay.keystore import OnionKeyFiles

from hopchain.crypto.keys import OnionKey
from hopchain.onionrotation import RotationPolicy, plan

__all__ = ["KeyRotation", "OnionKeyRing"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class KeyRotation:
    """Where the onion keys live and how often they change."""

    files: OnionKeyFiles
    policy: RotationPolicy
    created: float
    previous: OnionKey | None = None


class OnionKeyRing:
    """The onion keys a relay answers handshakes with: the current one
    first (published), then the previous one while its grace lasts.

    Without a ``rotation`` the one key is kept for good (tests, simulations).
    """

    def __init__(self, current: OnionKey, rotation: KeyRotation | None) -> None:
        self.keys = [current]
        self.rotation = rotation
        self._created = 0.0
        if rotation is not None:
            self._created = rotation.created
            if rotation.previous is not None:
                self.keys.append(rotation.previous)

    def check(self, now: float) -> tuple[float, bool]:
        """Rotate the key or forget the previous one when due.

        Returns the seconds until the next change is due, and whether the
        current key is new (to be published).
        """
        assert self.rotation is not None
        files, policy = self.rotation.files, self.rotation.policy
        step = plan(self._created, len(self.keys) > 1, now, policy)
        if step.rotate:
            new = OnionKey(secrets.token_bytes(32))
            files.rotate(self.keys[0].secret, new.secret, now)
            self.keys = [new, self.keys[0]]
            self._created = now
            logger.info(
                "onion key rotated; the previous one is answered for %g s more",
                policy.grace,
            )
        elif step.drop_previous:
            files.drop_previous()
            self.keys = self.keys[:1]
            logger.info("the previous onion key's grace period is over; deleted")
        return max(0.0, step.wake_at - now), step.rotate
