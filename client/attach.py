"""Attaching streams and lookups to circuits, and the stream timeout rule.

``open_stream`` sends BEGIN on a circuit from ``circuit_for`` and waits up to
``stream_timeout`` for the answer:

- CONNECTED: the egress check (``hopchain.client.egresscheck``); a refused
  exit makes the stream retry once on another exit;
- END(reason): ``StreamError(reason)``;
- the circuit closed (DESTROY, TRUNCATED, the link ended): retried once on
  another circuit;
- no answer in time: END(TIMEOUT) goes to the exit, so it frees the stream
  too; the circuit is **marked unusable** for new streams (its open streams
  go on, and it is destroyed once they end: ``ReusePolicy.stale``); if not
  a single byte arrived on the guard's link during the attempt, the link is
  **suspect** (``GuardLinks.suspect``): its circuits are not reused while it
  stays silent, so the retry builds a circuit, and that build's CREATE on
  the same link tests the guard (``hopchain.client.building``: no answer
  counts against the guard and abandons the link).  The stream is then
  retried once on another circuit.

``resolve`` does the same with RESOLVE (any exit: a RESOLVE has no port).

This is Tor's rule (``connection_ap_expire_beginning``): a stream that
waited too long for CONNECTED or RESOLVED gets END(TIMEOUT), its circuit is
marked unusable for new streams (``mark_circuit_unusable_for_new_conns``)
and the stream is attached to another circuit.  Tor waits 10 s on each of
the first two circuits and 15 s on later ones (``CircuitStreamTimeout``
overrides that), and gives up after ``SocksTimeout`` (2 minutes).  hopchain
waits ``STREAM_TIMEOUT`` (10 s) on each of at most ``STREAM_ATTEMPTS`` (2)
circuits, so an app waits at most 20 s plus the circuit builds before a
TIMEOUT error.  As in Tor, a destination the exit is slow to reach (its
own connect deadline is 20 s) also retires the circuit it was tried on.
"""

import logging
from collections.abc import Awaitable, Callable
from typing import Final

import trio
from hopchain.client.ahead import PredictedCircuits
from hopchain.client.egresscheck import EgressChecks
from hopchain.client.handle import ClientCircuitHandle, Reply
from hopchain.client.links import GuardLinks
from hopchain.client.reuse import ReusePolicy
from hopchain.relay.stream import CircuitStream

from hopchain.errors import PathSelectionError, StreamError
from hopchain.isolation import IsolationKey
from hopchain.messages import Connected, End, EndReason, Resolved

logger = logging.getLogger(__name__)

STREAM_TIMEOUT: Final = 10.0
"""Seconds to wait for CONNECTED or RESOLVED on one circuit."""
STREAM_ATTEMPTS: Final = 2
"""Circuits a stream or lookup is tried on."""

CircuitFor = Callable[[int | None, IsolationKey | None], Awaitable[ClientCircuitHandle]]


class StreamAttacher:
    """Opens streams and lookups on circuits (see the module docstring)."""

    def __init__(
        self,
        circuit_for: CircuitFor,
        links: GuardLinks,
        reuse: ReusePolicy,
        egress: EgressChecks,
        predicted: PredictedCircuits,
        *,
        stream_timeout: float = STREAM_TIMEOUT,
    ) -> None:
        self._circuit_for = circuit_for
        self._links = links
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
        failure = StreamError("circuit closed before connected", EndReason.DESTROYED)
        for attempt in range(STREAM_ATTEMPTS):
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
            retrying = attempt + 1 < STREAM_ATTEMPTS
            if isinstance(result, Connected):
                refusal = self._egress.refusal(handle, result, port, isolation)
                if not refusal:
                    return handle, stream
                await stream.aclose()
                self.release(handle, stream)
                if retrying:
                    logger.info("retrying the stream on another exit")
            elif isinstance(result, End):
                raise StreamError(
                    f"exit ended the stream: {result.reason.name}", result.reason
                )
            elif result is None:
                failure = StreamError("exit did not answer in time", EndReason.TIMEOUT)
                if retrying:
                    logger.info(
                        "no CONNECTED within %g s; circuit retired for new streams, "
                        "retrying on another",
                        self.stream_timeout,
                    )
            else:
                failure = StreamError(
                    "circuit closed before connected", EndReason.DESTROYED
                )
                if retrying:
                    logger.info("circuit closed before connected; retrying")
        if refusal:
            raise StreamError(refusal, EndReason.EXIT_POLICY)
        raise failure

    async def resolve(
        self, query: str, *, ptr: bool, isolation: IsolationKey | None = None
    ) -> list[str]:
        """Have an exit resolve ``query`` (see ``CircuitManager.resolve``)."""
        failure = StreamError("circuit closed before resolved", EndReason.DESTROYED)
        try:
            for attempt in range(STREAM_ATTEMPTS):
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
                    failure = StreamError(
                        "exit did not answer in time", EndReason.TIMEOUT
                    )
                else:
                    failure = StreamError(
                        "circuit closed before resolved", EndReason.DESTROYED
                    )
                if attempt + 1 < STREAM_ATTEMPTS:
                    logger.info("%s; retrying the lookup on another circuit", failure)
            raise failure
        finally:
            self._reuse.retire_idle(trio.current_time())

    async def _ask(self, handle: ClientCircuitHandle, sid: int, body: bytes) -> object:
        """Send a BEGIN or RESOLVE and wait for what answers it: CONNECTED,
        END or RESOLVED, ``CLOSED`` if the circuit died, or None if nothing
        came within ``stream_timeout`` (the circuit is then marked unusable,
        and its link suspect if the guard sent nothing at all meanwhile).

        A request still unanswered when this returns or is cancelled gets
        END(TIMEOUT), so the exit frees its stream id too."""
        waiter = Reply()
        handle.waiting[sid] = waiter
        mark = self._links.heard(handle.link)
        result: object = None
        try:
            handle.send([body])
            with trio.move_on_after(self.stream_timeout):
                result = await waiter.wait()
        finally:
            if handle.waiting.pop(sid, None) is not None:
                handle.send(handle.core.end_stream(sid, EndReason.TIMEOUT))
        if result is None:
            handle.unusable = True
            if self._links.silent_since(handle.link, mark):
                logger.info(
                    "nothing from guard %s for %g s; its circuits wait for a test",
                    handle.path[0].nickname if handle.path else "?",
                    self.stream_timeout,
                )
                self._links.suspect(handle.link)
        return result

    def release(self, handle: ClientCircuitHandle, stream: CircuitStream) -> None:
        """Forget a finished stream and retire the circuit if it is stale."""
        handle.forget_if_ended(stream.stream_id)
        self._reuse.retire_idle(trio.current_time())
