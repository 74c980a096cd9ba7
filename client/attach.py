"""Attaching streams and lookups to circuits.

``open_stream`` sends BEGIN on a circuit from ``circuit_for`` and waits up to
``stream_timeout`` for the answer:

- CONNECTED: the egress check (``hopchain.client.egresscheck``); a refused
  exit makes the stream retry once on another exit;
- END(reason): ``StreamError(reason)``;
- the circuit closed (DESTROY, TRUNCATED, the link ended): retried once on
  another circuit;
- no answer in time: END(TIMEOUT) goes to the exit, so it frees the stream
  too, and ``StreamError(TIMEOUT)``.

``resolve`` does the same with RESOLVE (any exit: a RESOLVE has no port).
"""

import logging
from collections.abc import Awaitable, Callable
from typing import Final

import trio
from hopchain.client.ahead import PredictedCircuits
from hopchain.client.egresscheck import EgressChecks
from hopchain.client.handle import ClientCircuitHandle, Reply
from hopchain.client.reuse import ReusePolicy
from hopchain.relay.stream import CircuitStream

from hopchain.errors import PathSelectionError, StreamError
from hopchain.isolation import IsolationKey
from hopchain.messages import Connected, End, EndReason, Resolved

logger = logging.getLogger(__name__)

STREAM_TIMEOUT: Final = 30.0
"""Seconds to wait for CONNECTED or RESOLVED."""

CircuitFor = Callable[[int | None, IsolationKey | None], Awaitable[ClientCircuitHandle]]


class StreamAttacher:
    """Opens streams and lookups on circuits (see the module docstring)."""

    def __init__(
        self,
        circuit_for: CircuitFor,
        reuse: ReusePolicy,
        egress: EgressChecks,
        predicted: PredictedCircuits,
        *,
        stream_timeout: float = STREAM_TIMEOUT,
    ) -> None:
        self._circuit_for = circuit_for
        self._reuse = reuse
        self._egress = egress
        self._predicted = predicted
        self.stream_timeout = stream_timeout

    async def open_stream(
        self, host: str, port: int, isolation: IsolationKey | None = None
    ) -> tuple[ClientCircuitHandle, CircuitStream]:
        """Open a stream to host:port; returns once CONNECTED (see
        ``CircuitManager.open_stream``)."""
        self._predicted.seen(port)
        refusal = ""
        for attempt in range(2):
            try:
                handle = await self._circuit_for(port, isolation)
            except PathSelectionError as exc:
                if not refusal:
                    raise
                raise StreamError(f"{refusal}; {exc}", EndReason.EXIT_POLICY) from exc
            handle.attach(trio.current_time())
            sid, body = handle.core.open_stream(host, port)
            stream = CircuitStream(sid, handle.core, handle.send, handle.credit)
            handle.streams[sid] = stream
            result: object = None
            try:
                result = await self._ask(handle, sid, body)
            finally:
                if not isinstance(result, Connected):
                    handle.streams.pop(sid, None)
            if isinstance(result, Connected):
                refusal = self._egress.refusal(handle, result, port, isolation)
                if not refusal:
                    return handle, stream
                await stream.aclose()
                self.release(handle, stream)
                if attempt == 0:
                    logger.info("retrying the stream on another exit")
            elif isinstance(result, End):
                raise StreamError(
                    f"exit ended the stream: {result.reason.name}", result.reason
                )
            elif result is None:
                raise StreamError("exit did not answer in time", EndReason.TIMEOUT)
            elif attempt == 0:
                logger.info("circuit closed before connected; retrying")
        if refusal:
            raise StreamError(refusal, EndReason.EXIT_POLICY)
        raise StreamError("circuit closed before connected", EndReason.DESTROYED)

    async def resolve(
        self, query: str, *, ptr: bool, isolation: IsolationKey | None = None
    ) -> list[str]:
        """Have an exit resolve ``query`` (see ``CircuitManager.resolve``)."""
        try:
            for attempt in range(2):
                handle = await self._circuit_for(None, isolation)
                handle.attach(trio.current_time())
                sid, body = handle.core.resolve(query, ptr=ptr)
                result = await self._ask(handle, sid, body)
                if isinstance(result, Resolved):
                    if result.reason is None:
                        return list(result.answers)
                    raise StreamError(
                        f"exit could not resolve: {result.reason.name}", result.reason
                    )
                if isinstance(result, End):
                    raise StreamError(
                        f"exit ended the resolve: {result.reason.name}", result.reason
                    )
                if result is None:
                    raise StreamError("exit did not answer in time", EndReason.TIMEOUT)
                if attempt == 0:
                    logger.info("circuit closed before resolved; retrying on a new one")
            raise StreamError("circuit closed before resolved", EndReason.DESTROYED)
        finally:
            self._reuse.retire_idle(trio.current_time())

    async def _ask(self, handle: ClientCircuitHandle, sid: int, body: bytes) -> object:
        """Send a BEGIN or RESOLVE and wait for what answers it: CONNECTED,
        END or RESOLVED, ``CLOSED`` if the circuit died, or None if nothing
        came within ``stream_timeout``.

        A request still unanswered when this returns or is cancelled gets
        END(TIMEOUT), so the exit frees its stream id too."""
        waiter = Reply()
        handle.waiting[sid] = waiter
        result: object = None
        try:
            handle.send([body])
            with trio.move_on_after(self.stream_timeout):
                result = await waiter.wait()
        finally:
            if handle.waiting.pop(sid, None) is not None:
                handle.send(handle.core.end_stream(sid, EndReason.TIMEOUT))
        return result

    def release(self, handle: ClientCircuitHandle, stream: CircuitStream) -> None:
        """Forget a finished stream and retire the circuit if it is stale."""
        handle.forget_if_ended(stream.stream_id)
        self._reuse.retire_idle(trio.current_time())
