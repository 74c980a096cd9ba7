"""When an open circuit may take a new stream: the time and port rules.

A circuit carries new streams only until a dirtiness period (Tor's
MaxCircuitDirtiness, 10 minutes) after its first stream, and only to ports
its exit accepts; streams already on it stay until they end.  The client's
circuit manager (``client/circuits.py``) adds the rules that need its state
(open, isolation key, NEWNYM epoch, exit countries, egress refusals, the
lifetime of circuits built ahead and never used); ``hopchain sim paths``
calls these same functions for its simulated users, whose circuits are
built for a stream and so are first used when built.  Time is passed in.
"""

from typing import Final

from hopchain.directory import Descriptor

DIRTINESS: Final = 600.0


def is_dirty(first_used: float, now: float, dirtiness: float) -> bool:
    """Whether a circuit first used at ``first_used`` is too old for new
    streams."""
    return now - first_used >= dirtiness


def exit_accepts(exit_relay: Descriptor, port: int | None) -> bool:
    """Whether the circuit's exit takes a stream to ``port`` (None: a
    RESOLVE, which any exit answers)."""
    return port is None or exit_relay.allows_exit_to(port)


def may_carry(
    exit_relay: Descriptor,
    first_used: float,
    port: int | None,
    now: float,
    dirtiness: float,
) -> bool:
    """Whether a circuit in use since ``first_used`` may take a new stream to
    ``port`` at ``now``."""
    return not is_dirty(first_used, now, dirtiness) and exit_accepts(exit_relay, port)
