"""When an open circuit may take a new stream: the time and port rules.

A circuit carries new streams only while it is younger than the dirtiness
period (Tor's MaxCircuitDirtiness, 10 minutes), and only to ports its exit
accepts; streams already on it stay until they end.  The client's circuit
manager adds the rules that need its state (open, isolation key, NEWNYM
epoch, exit countries); ``hopchain sim paths`` calls these same functions
for its simulated users.  Time is passed in.
"""

from typing import Final

from hopchain.directory import Descriptor

DIRTINESS: Final = 600.0


def is_dirty(built_at: float, now: float, dirtiness: float) -> bool:
    """Whether a circuit built at ``built_at`` is too old for new streams."""
    return now - built_at >= dirtiness


def may_carry(
    exit_relay: Descriptor,
    built_at: float,
    port: int | None,
    now: float,
    dirtiness: float,
) -> bool:
    """Whether a circuit may take a new stream to ``port`` (None: a RESOLVE,
    which any exit answers) at ``now``."""
    if is_dirty(built_at, now, dirtiness):
        return False
    return port is None or exit_relay.allows_exit_to(port)
