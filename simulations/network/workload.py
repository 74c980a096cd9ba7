"""Traffic: origin servers and the client models (after tgen in Shadow).

The origin speaks a small part of HTTP/1.0: ``GET /bytes/N`` gets a
``Content-Length: N`` response of N zero bytes, then the connection closes.

Client models, each a loop until the simulation ends:

* **web**: a 50 KiB fetch, then an exponentially distributed think time
  (mean ``think_time``), as a person reading pages;
* **bulk**: 1 MiB and 5 MiB downloads in turn, with ``bulk_pause`` seconds
  between them, as onionperf's measurement clients.

Streams to different origins never share a circuit (``isolation=host``),
as Tor Browser's first-party isolation keeps sites apart.  Each download is
timed from the request (opening the stream, which may build
a circuit) to the first byte of the response (time to first byte) and to the
last byte; it fails if the stream cannot be opened, breaks, ends short, or
takes longer than its timeout (``TIMEOUTS``).
"""

import enum
import logging
import random
from collections.abc import Callable
from typing import Final

import trio
from hopchain.client.api import HopchainClient
from hopchain.relay.net import BufferedReader
from hopchain.simulations.network.params import MIB, SIZES, Transfer

from hopchain.errors import HopchainError

__all__ = ["ORIGIN_PORT", "TIMEOUTS", "client_loop", "serve_origin"]

logger = logging.getLogger(__name__)

ORIGIN_PORT: Final = 80
TIMEOUTS: Final = {SIZES[0]: 60.0, SIZES[1]: 120.0, SIZES[2]: 300.0}
"""Seconds a download of each size may take before it counts as failed."""
MAX_HEAD: Final = 4096
SEND_CHUNK: Final = 64 * 1024
_ZEROS: Final = memoryview(bytes(SEND_CHUNK))
_FAILURES: Final = (
    HopchainError,
    OSError,
    EOFError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.TooSlowError,
)


async def serve_origin(stream: trio.abc.HalfCloseableStream) -> None:
    """Answer one ``GET /bytes/N`` request with N bytes, then close."""
    async with stream:
        head = b""
        try:
            while b"\r\n\r\n" not in head:
                data = await stream.receive_some(MAX_HEAD)
                if not data or len(head) + len(data) > MAX_HEAD:
                    return
                head += data
            words = head.split(b"\r\n", 1)[0].split()
            if (
                len(words) != 3
                or words[0] != b"GET"
                or not words[1].startswith(b"/bytes/")
            ):
                await stream.send_all(b"HTTP/1.0 400 Bad Request\r\n\r\n")
                return
            size = min(int(words[1][len(b"/bytes/") :]), 64 * MIB)
            await stream.send_all(
                b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % size
            )
            while size > 0:
                piece = min(size, SEND_CHUNK)
                await stream.send_all(_ZEROS[:piece])
                size -= piece
        except (ValueError, trio.BrokenResourceError, trio.ClosedResourceError):
            return


async def download(
    client: HopchainClient, host: str, size: int, started: float
) -> tuple[float, float]:
    """Fetch ``size`` bytes from ``host``; (time to first byte, total), in s.

    Raises:
        EOFError: the response ended short or was not a 200.
        HopchainError, OSError, trio errors: the stream failed.
    """
    stream = await client.open_stream(host, ORIGIN_PORT, isolation=host)
    async with stream:
        await stream.send_all(
            b"GET /bytes/%d HTTP/1.0\r\nHost: %s\r\n\r\n"
            % (
                size,
                host.encode(),
            )
        )
        reader = BufferedReader(stream)
        status = await reader.read_exactly(12)
        ttfb = trio.current_time() - started
        if status != b"HTTP/1.0 200":
            raise EOFError(f"origin answered {status!r}")
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += await reader.read_exactly(1)
            if len(head) > MAX_HEAD:
                raise EOFError("response head too long")
        left = size - len(reader.take_buffered())
        while left > 0:
            data = await stream.receive_some(256 * 1024)
            if not data:
                raise EOFError(f"response ended {left} bytes short")
            left -= len(data)
    return ttfb, trio.current_time() - started


def _sizes(model: str) -> list[int]:
    return [SIZES[0]] if model == "web" else [SIZES[1], SIZES[2]]


async def client_loop(
    number: int,
    model: str,
    client: HopchainClient,
    origins: list[str],
    rng: random.Random,
    *,
    think_time: float,
    bulk_pause: float,
    t0: float,
    record: Callable[[Transfer], None],
) -> None:
    """Download per ``model`` until cancelled, recording every finished try.

    A download still running when the simulation ends is not recorded.
    """
    sizes = _sizes(model)
    turn = 0
    if model == "web":
        await trio.sleep(rng.uniform(0, think_time))
    while True:
        size = sizes[turn % len(sizes)]
        turn += 1
        host = rng.choice(origins)
        started = trio.current_time()
        try:
            with trio.fail_after(TIMEOUTS[size]):
                ttfb, total = await download(client, host, size, started)
        except _FAILURES as exc:
            logger.debug("client %d: download failed: %r", number, exc)
            end = trio.current_time() - t0
            error = _label(exc)
            record(Transfer(number, model, size, started - t0, end, None, None, error))
            await trio.sleep(1.0)  # as a person retrying, not a tight loop
        else:
            start = started - t0
            record(Transfer(number, model, size, start, start + total, ttfb, total, ""))
        pause = rng.expovariate(1 / think_time) if model == "web" else bulk_pause
        await trio.sleep(pause)


def _label(exc: BaseException) -> str:
    """A short, stable error label for the CSV (the type and any reason)."""
    if isinstance(exc, trio.TooSlowError):
        return "timeout"
    reason = getattr(exc, "reason", None)
    name = type(exc).__name__
    return f"{name}:{reason.name}" if isinstance(reason, enum.Enum) else name
