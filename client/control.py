"""The client's control socket: status for ``hopchain doctor`` and
``hopchain circuits``, and NEWNYM.

A Unix socket in the client's private data directory (mode 0700, the socket
0600), so only the user who runs the client can reach it.  Every request
also carries the control cookie, as Tor's CookieAuthentication does: 32
random bytes the client writes to ``control.authcookie`` (0600) beside the
socket at each start, which a controller reads and sends in hex.  That
keeps a process which can reach the socket but not read the data directory
(a socket path handed out by mistake, a container bind mount) out.  The
protocol is one JSON object per line each way:

    {"command": "status", "cookie": HEX}  ->  {"ok": true, "status": {...}}
    {"command": "newnym", "cookie": HEX}  ->  {"ok": true}
    a missing or wrong cookie             ->  {"ok": false, "error": "..."}
    anything else                         ->  {"ok": false, "error": "..."}

Status holds counts only (see ``ClientStats``) plus the circuits (each hop's
nickname, fingerprint prefix, country and flags; state, age, streams); it
never holds destinations or addresses.
"""

import hmac
import json
import logging
import os
import secrets
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
COOKIE_FILE: Final = "control.authcookie"
COOKIE_BYTES: Final = 32


def cookie_path(socket_path: Path) -> Path:
    """Where the cookie of the control socket at ``socket_path`` lives."""
    return socket_path.with_name(COOKIE_FILE)


def write_cookie(path: Path) -> bytes:
    """A fresh cookie, written to ``path`` (0600, replacing the last one)."""
    cookie = secrets.token_bytes(COOKIE_BYTES)
    partial = path.with_suffix(".new")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(cookie)
    os.replace(partial, path)
    return cookie


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
        self,
        status: Callable[[], dict[str, object]],
        newnym: Callable[[], None],
        cookie: bytes,
    ) -> None:
        self._status = status
        self._newnym = newnym
        self._cookie = cookie

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
        if not isinstance(request, dict):
            return {"ok": False, "error": "request is not a JSON object"}
        offered = request.get("cookie")
        if not isinstance(offered, str) or not hmac.compare_digest(
            offered.encode(), self._cookie.hex().encode()
        ):
            logger.warning("control request refused: missing or wrong cookie")
            return {
                "ok": False,
                "error": f"missing or wrong cookie (see {COOKIE_FILE})",
            }
        command = request.get("command")
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
    message = {"command": command}
    try:
        message["cookie"] = cookie_path(path).read_bytes().hex()
        with trio.fail_after(REQUEST_TIMEOUT):
            stream = await trio.open_unix_socket(os.fspath(path))
            async with stream:
                await stream.send_all(json.dumps(message).encode() + b"\n")
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
