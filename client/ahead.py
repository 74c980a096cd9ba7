"""Circuits built ahead for predicted ports (``hopchain.predicted``).

``keep_circuits_ready`` keeps clean circuits (unused, no isolation key yet)
for the ports streams used in the last hour, so that the next stream to
such a port finds one ready.  A pass runs after each new stream (``wake``)
and every ``PREDICT_INTERVAL`` seconds; it builds one circuit at a time,
for the first predicted port no clean circuit serves, within ``max_clean``
clean circuits.  A failed build ends the pass (the next one retries).
"""

import logging
from collections.abc import Awaitable, Callable
from typing import Final

import trio
from hopchain.client.links import CircuitTable
from hopchain.client.reuse import ReusePolicy

from hopchain.errors import CircuitError, DirectoryError, PathSelectionError
from hopchain.predicted import MAX_CLEAN, PredictedPorts, ports_to_prepare

logger = logging.getLogger(__name__)

PREDICT_INTERVAL: Final = 30.0


class PredictedCircuits:
    """Builds clean circuits ahead of need (see the module docstring)."""

    def __init__(
        self,
        table: CircuitTable,
        reuse: ReusePolicy,
        build: Callable[[int], Awaitable[object]],
        *,
        max_clean: int = MAX_CLEAN,
    ) -> None:
        self._table = table
        self._reuse = reuse
        self._build = build
        self.max_clean = max_clean
        self.ports = PredictedPorts()
        self._wake = trio.Event()
        self._pass_done = trio.Event()

    def seen(self, port: int) -> None:
        """A stream used ``port``: predict it and start a pass."""
        self.ports.seen(port, trio.current_time())
        self._wake.set()

    async def run(self) -> None:
        """Run passes until cancelled."""
        last_error = ""
        while True:
            self._wake = trio.Event()
            done = self._pass_done
            last_error = await self._prepare(last_error)
            done.set()
            self._pass_done = trio.Event()
            with trio.move_on_after(PREDICT_INTERVAL):
                await self._wake.wait()

    async def prepared(self) -> None:
        """Wait until the current (or next) pass has ended."""
        await self._pass_done.wait()

    async def _prepare(self, last_error: str) -> str:
        """One pass; returns its error ("" if none), logged when new."""
        for _ in range(self.max_clean):
            now = trio.current_time()
            self._reuse.retire_idle(now)  # also the idle ones through refused exits
            clean = [
                h.exit
                for h in self._table
                if h.is_clean_at(now)
                and h.epoch == self._reuse.epoch
                and h.isolation is None
            ]
            todo = ports_to_prepare(self.ports.ports(now), clean, self.max_clean)
            if not todo:
                return ""
            try:
                await self._build(todo[0])
            except (CircuitError, DirectoryError, PathSelectionError) as exc:
                if str(exc) != last_error:
                    logger.info(
                        "could not build a circuit ahead for port %d: %s", todo[0], exc
                    )
                return str(exc)
        return ""
