"""An in-memory ``Network``: shaped byte streams between simulated hosts.

``MemoryNetwork`` is a world of hosts, each with one address and an upstream
rate; ``MemoryNetwork.host(address)`` gives the ``Network`` a node runs on.
A stream between two hosts is a pair of one-way pipes.  Everything waits with
``trio.sleep_until``, so under ``trio.testing.MockClock(autojump_threshold=0)``
virtual time passes exactly as the model says and no wall time is spent:

* **latency**: ``latency(src, dst)`` seconds one way, given by the caller
  (simulations use a country-to-country table).  Bytes sent at ``t`` arrive
  at ``t + transmit + latency``; a pipe keeps its order.  ``connect`` takes
  one round trip (SYN, SYN-ACK), and a refused connect also takes one.
* **bandwidth**: each host's upstream is a FIFO link of ``up_rate`` bytes/s
  shared by all its streams.  ``send_all`` reserves the next free
  transmission slot and returns when the bytes have left the host, which is
  the back-pressure a full socket buffer gives.  Downstream capacity is not
  modelled separately (a relay forwards what it receives, so its upstream
  bounds it).
* **failures**: ``kill(address)`` is a crashed process on a live machine:
  its streams are reset at once (``BrokenResourceError`` at both ends) and
  connects to it are refused (``ECONNREFUSED``).  ``vanish(address)`` is a
  machine gone silent (power cut, partition): what is sent to it is lost,
  its peers hear nothing, and connects to it hang until the caller's
  timeout.  ``revive`` brings the address back.  Not modelled: TCP
  congestion control, loss, kernel buffers, CPU time.

Names resolve from a table given to ``add_name``; IP literals resolve to
themselves.  Ports 0 get the next free port from 10000 up, deterministically.
"""

import errno
import ipaddress
import math
import socket
from collections import deque
from collections.abc import Callable
from typing import Final

import trio

__all__ = ["MemoryHost", "MemoryListener", "MemoryNetwork", "MemoryStream"]

FIRST_EPHEMERAL_PORT: Final = 10000

LatencyModel = Callable[[str, str], float]


class _Pipe:
    """One direction of a stream: chunks with their arrival times."""

    def __init__(self, src: "_HostState", dst: "_HostState", latency: float) -> None:
        self.src = src
        self.dst = dst
        self.latency = latency
        self.chunks: deque[tuple[float, bytes]] = deque()
        self.last_arrival = 0.0
        self.eof_sent = False
        self.reader_closed = False
        self.reset = False
        self._wakeup = trio.Event()

    def wake(self) -> None:
        self._wakeup.set()

    async def send(self, data: bytes) -> None:
        if self.reset or self.reader_closed:
            raise trio.BrokenResourceError("connection reset by peer")
        now = trio.current_time()
        host = self.src
        done = max(now, host.up_free) + len(data) / host.up_rate
        host.up_free = done
        host.bytes_sent += len(data)
        if not self.dst.vanished:
            arrival = max(done + self.latency, self.last_arrival)
            self.last_arrival = arrival
            self.chunks.append((arrival, data))
            self.wake()
        if done > now:
            await trio.sleep_until(done)
        else:
            await trio.lowlevel.checkpoint()

    def send_eof(self) -> None:
        if not self.eof_sent:
            self.eof_sent = True
            arrival = max(trio.current_time() + self.latency, self.last_arrival)
            self.last_arrival = arrival
            self.chunks.append((arrival, b""))
            self.wake()

    async def receive(self, max_bytes: int) -> bytes:
        while True:
            if self.reset:
                raise trio.BrokenResourceError("connection reset by peer")
            if self.reader_closed:
                raise trio.ClosedResourceError("stream closed")
            chunks = self.chunks
            now = trio.current_time()
            if chunks and chunks[0][0] <= now:
                return self._take(now, max_bytes)
            if chunks:
                # Later sends arrive later (FIFO), so only a reset could come
                # first; it is seen on waking, at most one latency late, as a
                # real RST would be.
                await trio.sleep_until(chunks[0][0])
            else:
                if self._wakeup.is_set():
                    self._wakeup = trio.Event()
                await self._wakeup.wait()

    def _take(self, now: float, max_bytes: int) -> bytes:
        """Up to max_bytes of what has arrived; b"" only at end of stream."""
        out: list[bytes] = []
        size = 0
        chunks = self.chunks
        while chunks and chunks[0][0] <= now and size < max_bytes:
            arrival, data = chunks[0]
            if not data:
                if size == 0:
                    return b""  # end of stream: stays queued, so EOF repeats
                break
            room = max_bytes - size
            if len(data) > room:
                out.append(data[:room])
                chunks[0] = (arrival, data[room:])
                size += room
                break
            chunks.popleft()
            out.append(data)
            size += len(data)
        return out[0] if len(out) == 1 else b"".join(out)


class MemoryStream(trio.abc.HalfCloseableStream):
    """One end of an in-memory TCP-like connection."""

    def __init__(
        self, outgoing: _Pipe, incoming: _Pipe, owner: "_HostState", peer: str
    ) -> None:
        self._out = outgoing
        self._in = incoming
        self._owner = owner
        self._closed = False
        self.peer_address = peer
        """The address of the other end (``relay.net.peer_address`` reads it)."""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send data, returning when it has left this host's upstream."""
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        if self._out.eof_sent:
            raise trio.ClosedResourceError("send side already closed")
        if data:
            await self._out.send(bytes(data))
        else:
            await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        """Return at once: sends only wait for the host's upstream."""
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Bytes that have arrived; b"" after the peer's end of stream."""
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        return await self._in.receive(max_bytes or 65536)

    async def send_eof(self) -> None:
        """Half-close: the peer reads EOF once the bytes before it arrive."""
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        self._out.send_eof()
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        """Close both directions; the peer's later sends are reset.

        On a vanished host nothing reaches the peer (no FIN, no reset)."""
        if not self._closed:
            self._closed = True
            self._owner.streams.pop(self, None)
            if self._owner.vanished:
                await trio.lowlevel.checkpoint()
                return
            self._out.send_eof()
            self._in.reader_closed = True
            self._in.wake()
        await trio.lowlevel.checkpoint()

    def reset(self) -> None:
        """Abort both directions at once (the owning host crashed)."""
        for pipe in (self._out, self._in):
            pipe.reset = True
            pipe.wake()


class MemoryListener(trio.abc.Listener[MemoryStream]):
    """Accepts connections made to one host and port."""

    def __init__(self, host: "_HostState", port: int) -> None:
        self.host = host
        self.port = port
        self._pending: deque[MemoryStream] = deque()
        self._wakeup = trio.Event()
        self._closed = False

    def deliver(self, stream: MemoryStream) -> None:
        self._pending.append(stream)
        self._wakeup.set()

    async def accept(self) -> MemoryStream:
        """The next incoming connection."""
        while not self._pending:
            if self._closed:
                raise trio.ClosedResourceError("listener closed")
            self._wakeup = trio.Event()
            await self._wakeup.wait()
        await trio.lowlevel.checkpoint()
        return self._pending.popleft()

    async def aclose(self) -> None:
        """Stop accepting; the port is free again."""
        self._closed = True
        self._wakeup.set()
        if self.host.listeners.get(self.port) is self:
            del self.host.listeners[self.port]
        await trio.lowlevel.checkpoint()


class _HostState:
    """A simulated machine: its address, upstream link, sockets and counters."""

    def __init__(self, address: str, up_rate: float) -> None:
        self.address = address
        self.up_rate = up_rate
        self.up_free = 0.0
        self.alive = True
        self.vanished = False
        self.listeners: dict[int, MemoryListener] = {}
        self.streams: dict[MemoryStream, None] = {}  # insertion order: deterministic
        self.next_port = FIRST_EPHEMERAL_PORT
        self.bytes_sent = 0


class MemoryNetwork:
    """The simulated world (see the module docstring)."""

    def __init__(self, latency: LatencyModel | None = None) -> None:
        self._latency = latency or (lambda src, dst: 0.0)
        self._hosts: dict[str, _HostState] = {}
        self._names: dict[str, list[str]] = {}

    def host(self, address: str, *, up_rate: float = math.inf) -> "MemoryHost":
        """Add a host (``up_rate`` bytes/s upstream) and return its ``Network``.

        Raises:
            ValueError: a malformed or already used address, or a rate <= 0.
        """
        canonical = str(ipaddress.ip_address(address))
        if canonical in self._hosts:
            raise ValueError(f"host {canonical} already exists")
        if not up_rate > 0:
            raise ValueError("up_rate must be positive")
        self._hosts[canonical] = _HostState(canonical, up_rate)
        return MemoryHost(self, self._hosts[canonical])

    def add_name(self, name: str, addresses: list[str]) -> None:
        """Make ``name`` resolve to ``addresses`` (and each address back to it)."""
        self._names[name.lower()] = list(addresses)

    def set_up_rate(self, address: str, up_rate: float) -> None:
        """Change a host's upstream rate from now on (a slowed relay)."""
        self._state(address).up_rate = up_rate

    def kill(self, address: str) -> None:
        """Crash the process at ``address``: reset its streams, refuse connects."""
        state = self._state(address)
        state.alive = False
        state.listeners.clear()
        for stream in list(state.streams):
            stream.reset()
        state.streams.clear()

    def vanish(self, address: str) -> None:
        """Take the machine at ``address`` off the network without a trace:
        what is sent to it is lost, its peers get no reset and no end of
        stream, and connects to it are never answered (the caller's timeout
        ends them), as after a power cut or a partition."""
        state = self._state(address)
        state.alive = False
        state.vanished = True
        state.listeners.clear()
        state.streams.clear()

    def revive(self, address: str) -> None:
        """Let a killed or vanished host open sockets and listen again."""
        state = self._state(address)
        state.alive = True
        state.vanished = False

    def bytes_sent(self, address: str) -> int:
        """Bytes the host has put on its upstream link so far."""
        return self._state(address).bytes_sent

    def latency(self, src: str, dst: str) -> float:
        """One-way latency between two addresses, in seconds."""
        return self._latency(src, dst)

    def _state(self, address: str) -> _HostState:
        try:
            return self._hosts[str(ipaddress.ip_address(address))]
        except (ValueError, KeyError):
            raise KeyError(f"no host {address}") from None

    def lookup(self, address: str) -> _HostState | None:
        """The host at an address, if any."""
        try:
            return self._hosts.get(str(ipaddress.ip_address(address)))
        except ValueError:
            return None

    def resolve_name(self, name: str) -> list[str]:
        """Addresses for a name or an IP literal.

        Raises:
            socket.gaierror: unknown name.
        """
        try:
            return [str(ipaddress.ip_address(name))]
        except ValueError:
            pass
        found = self._names.get(name.lower())
        if not found:
            raise socket.gaierror(socket.EAI_NONAME, f"unknown name {name}")
        return list(found)

    def name_of(self, address: str) -> str:
        """The name an address maps to.

        Raises:
            socket.gaierror: the address has no name.
        """
        for name, addresses in self._names.items():
            if address in addresses:
                return name
        raise socket.gaierror(socket.EAI_NONAME, f"no name for {address}")


class MemoryHost:
    """One host's view of a ``MemoryNetwork``: a ``hopchain.relay.net.Network``."""

    def __init__(self, world: MemoryNetwork, state: _HostState) -> None:
        self.world = world
        self._state = state

    @property
    def address(self) -> str:
        """This host's address."""
        return self._state.address

    async def connect(
        self, host: str, port: int, *, local_address: str | None = None
    ) -> trio.abc.HalfCloseableStream:
        """Connect to host:port after one round trip.

        Raises:
            OSError: not an address of this host (EADDRNOTAVAIL), this host
                is down (ENETDOWN), no such host (EHOSTUNREACH), nothing
                listening there (ECONNREFUSED).
        """
        own = self._state
        if local_address is not None and (
            str(ipaddress.ip_address(local_address)) != own.address
        ):
            raise OSError(errno.EADDRNOTAVAIL, f"{local_address} is not this host")
        if not own.alive:
            raise OSError(errno.ENETDOWN, "host is down")
        target = self.world.lookup(host)
        if target is None:
            await trio.lowlevel.checkpoint()
            raise OSError(errno.EHOSTUNREACH, f"no route to {host}")
        there = self.world.latency(own.address, target.address)
        back = self.world.latency(target.address, own.address)
        await trio.sleep(there)
        if target.vanished:
            await trio.sleep_forever()  # the SYN is lost; the caller times out
        listener = target.listeners.get(port) if target.alive else None
        if listener is None or not own.alive:
            await trio.sleep(back)
            raise ConnectionRefusedError(errno.ECONNREFUSED, "connection refused")
        forward = _Pipe(own, target, there)
        backward = _Pipe(target, own, back)
        client = MemoryStream(forward, backward, own, target.address)
        server = MemoryStream(backward, forward, target, own.address)
        own.streams[client] = None
        target.streams[server] = None
        listener.deliver(server)
        await trio.sleep(back)
        if forward.reset:
            raise ConnectionResetError(errno.ECONNRESET, "connection reset")
        return client

    async def listen(
        self, host: str, port: int
    ) -> list[trio.abc.Listener[trio.abc.HalfCloseableStream]]:
        """A listener on this host's address (port 0: the next free port).

        Raises:
            OSError: another address (EADDRNOTAVAIL), or the port is taken
                (EADDRINUSE).
        """
        own = self._state
        await trio.lowlevel.checkpoint()
        if host not in ("0.0.0.0", "::") and (
            str(ipaddress.ip_address(host)) != own.address
        ):
            raise OSError(errno.EADDRNOTAVAIL, f"{host} is not this host")
        if port == 0:
            while own.next_port in own.listeners:
                own.next_port += 1
            port = own.next_port
            own.next_port += 1
        if port in own.listeners:
            raise OSError(errno.EADDRINUSE, f"port {port} is in use")
        listener = MemoryListener(own, port)
        own.listeners[port] = listener
        return [listener]

    async def resolve(self, host: str, port: int) -> list[str]:
        """Addresses from the world's name table (an IP literal: itself)."""
        await trio.lowlevel.checkpoint()
        return self.world.resolve_name(host)

    async def resolve_ptr(self, address: str) -> str:
        """The name an address was given with ``add_name``."""
        await trio.lowlevel.checkpoint()
        return self.world.name_of(address)
