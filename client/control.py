"""The client's control socket: status for ``hopchain doctor``, and NEWNYM.

A Unix socket in the client's private data directory (mode 0700), so only
the user who runs the client can use it; no password is needed.  The
protocol is one JSON object per line each way:

    {"command": "status"}  ->  {"ok": true, "status": {...}}
    {"command": "newnym"}  ->  {"ok": true}
    anything else          ->  {"ok": false, "error": "..."}

Status holds counts only (see ``ClientStats``) plus the open circuits' exits;
it never holds destinations or client addresses.
"""

import json
import logging
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Final

import trio

from hopchain.errors import ConfigError

logger = logging.getLogger(__name__)

MAX_REQUEST: Final = 4096
REQUEST_TIMEOUT: Final = 10.0


def _remove_stale_socket(path: Path) -> None:
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise ConfigError(f"{path} exists and is not a socket")
        path.unlink()


async def open_control_listener(path: Path) -> trio.SocketListener:
    """Listen on a Unix socket at ``path`` (replacing a stale socket there).

    Raises:
        ConfigError: something other than a socket is in the way.
    """
    _remove_stale_socket(path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(os.fspath(path))
    os.chmod(path, 0o600)
    sock.listen(16)
    return trio.SocketListener(sock)


class ControlServer:
    """Answers control requests with the given callbacks."""

    def __init__(
        self, status: Callable[[], dict[str, object]], newnym: Callable[[], None]
    ) -> None:
        self._status = status
        self._newnym = newnym

    async def handle(self, stream: trio.abc.Stream) -> None:
        """Serve one control connection (one or more requests)."""
        async with stream:
            buffer = b""
            try:
                while True:
                    with trio.fail_after(REQUEST_TIMEOUT):
                        while b"\n" not in buffer:
                            data = await stream.receive_some(MAX_REQUEST)
                            if not data:
                                return
                            buffer += data
                            if len(buffer) > MAX_REQUEST:
                                return
                    line, _, buffer = buffer.partition(b"\n")
                    reply = self.answer(line)
                    await stream.send_all(json.dumps(reply).encode() + b"\n")
            except (
                trio.TooSlowError,
                trio.BrokenResourceError,
                trio.ClosedResourceError,
            ):
                return

    def answer(self, line: bytes) -> dict[str, object]:
        """The reply to one request line."""
        try:
            request = json.loads(line)
        except ValueError:
            return {"ok": False, "error": "request is not JSON"}
        command = request.get("command") if isinstance(request, dict) else None
        if command == "status":
            return {"ok": True, "status": self._status()}
        if command == "newnym":
            self._newnym()
            logger.info("NEWNYM: new streams will use new circuits")
            return {"ok": True}
        return {"ok": False, "error": f"unknown command {command!r}"}


async def request(path: Path, command: str) -> dict[str, object]:
    """Send one command to a running client's control socket.

    Raises:
        ConfigError: no client listens there, or it answered garbage.
    """
    try:
        with trio.fail_after(REQUEST_TIMEOUT):
            stream = await trio.open_unix_socket(os.fspath(path))
            async with stream:
                await stream.send_all(json.dumps({"command": command}).encode() + b"\n")
                buffer = b""
                while not buffer.endswith(b"\n"):
                    data = await stream.receive_some(65536)
                    if not data:
                        break
                    buffer += data
    except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
        raise ConfigError(
            f"no hopchain client answers on {path} ({exc}); is it running? "
            "pass --data-dir if it uses another one"
        ) from exc
    try:
        reply = json.loads(buffer)
    except ValueError as exc:
        raise ConfigError(f"the client on {path} answered garbage") from exc
    if not isinstance(reply, dict):
        raise ConfigError(f"the client on {path} answered garbage")
    return reply
