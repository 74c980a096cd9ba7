"""Build and run a whole hopchain network in one process, in virtual time.

The nodes are the real ``AuthorityNode``, ``RelayNode`` and ``ClientNode``
(used through the Python API's ``HopchainClient``), each on its own host of a
``MemoryNetwork``; origins are in-process servers on hosts of their own.
``run`` drives it all under ``trio.run(..., clock=MockClock(autojump_threshold=0))``:
whenever every task waits, the clock jumps to the next deadline, so ten
simulated minutes cost only the CPU time of the work done in them (the
crypto is real).  ``relay.net.wall_clock`` follows the virtual clock
(``use_wall_clock``), so signed timestamps agree with it.

Determinism: keys, countries, bandwidths, path selection and think times
come from ``random.Random`` objects seeded from ``--seed``; trio's scheduler
shuffles ready tasks with its own generator, which is seeded too.  Two runs
with one seed in one Python process give the same results; across processes
Python's string hashing (PYTHONHASHSEED) may reorder sets and so change
details.
"""

import logging
import math
import random
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Final, Protocol

import trio
import trio.testing
from hopchain.client.api import HopchainClient
from hopchain.client.node import ClientConfig, ClientNode
from hopchain.relay.authority import AuthorityNode
from hopchain.relay.dirclient import AuthorityAddress
from hopchain.relay.memnet import MemoryHost, MemoryNetwork
from hopchain.relay.net import use_wall_clock
from hopchain.relay.node import RelayConfig, RelayNode
from hopchain.simulations.network.latency import COUNTRY_WEIGHTS, country_latency
from hopchain.simulations.network.params import (
    Build,
    Fault,
    NetworkParams,
    RelayLoad,
    SimResult,
    Transfer,
)
from hopchain.simulations.network.workload import (
    ORIGIN_PORT,
    client_loop,
    serve_origin,
)

from hopchain.buildtime import BuildTimes
from hopchain.crypto.keys import IdentityKey, OnionKey
from hopchain.errors import ConfigError

__all__ = ["EPOCH", "run"]

EPOCH: Final = 1_767_225_600.0
"""Virtual time 0 as a wall-clock time (2026-01-01 00:00 UTC)."""
AUTHORITY_PORT: Final = 7000
RELAY_MEDIAN_RATE: Final = 3e6
RELAY_RATE_SIGMA: Final = 0.8
RELAY_RATE_BOUNDS: Final = (0.5e6, 30e6)
CLIENT_UP_RATE: Final = 1.25e6
SERVER_UP_RATE: Final = 12.5e6
ORIGIN_COUNTRIES: Final = ("US", "DE", "NL", "FR", "GB", "JP", "SG", "BR")


class _RecordingBuildTimes(BuildTimes):
    """The manager's build-time record, also reporting each build."""

    def __init__(self, on_build: Callable[[float], None]) -> None:
        super().__init__()
        self._on_build = on_build

    def record(self, seconds: float) -> None:
        super().record(seconds)
        self._on_build(seconds)


@dataclass(eq=False)
class _Relay:
    node: RelayNode
    host: MemoryHost
    scope: trio.CancelScope


class _World:
    """The nodes of one run and what they record."""

    def __init__(self, params: NetworkParams) -> None:
        self.params = params
        self.rng = random.Random(f"hopchain-sim-network:{params.seed}")
        self.countries: dict[str, str] = {}
        scale = params.latency_scale
        self.net = MemoryNetwork(
            lambda src, dst: (
                scale * country_latency(self.countries[src], self.countries[dst])
            )
        )
        self.result = SimResult(params)
        self.relays: dict[str, _Relay] = {}
        self.t0 = 0.0

    def _country(self) -> str:
        names = list(COUNTRY_WEIGHTS)
        return self.rng.choices(names, weights=[COUNTRY_WEIGHTS[n] for n in names])[0]

    def _host(self, address: str, country: str, up_rate: float) -> MemoryHost:
        self.countries[address] = country
        return self.net.host(address, up_rate=up_rate)

    def _key(self) -> bytes:
        return self.rng.randbytes(32)

    async def start_authorities(self, nursery: trio.Nursery) -> list[AuthorityAddress]:
        pinned = []
        for i in range(self.params.authorities):
            address = f"10.0.0.{1 + i}"
            host = self._host(address, "DE", SERVER_UP_RATE)
            node = AuthorityNode(
                IdentityKey(self._key()),
                address,
                AUTHORITY_PORT,
                host,
                test_network=True,
            )
            await nursery.start(node.serve)
            pinned.append(AuthorityAddress(address, node.port, node.identity.public))
        return pinned

    async def start_relays(
        self, nursery: trio.Nursery, authorities: list[AuthorityAddress]
    ) -> None:
        params = self.params
        exits = set(self.rng.sample(range(params.relays), params.exit_count))
        low, high = RELAY_RATE_BOUNDS
        for i in range(params.relays):
            rate = self.rng.lognormvariate(
                math.log(RELAY_MEDIAN_RATE), RELAY_RATE_SIGMA
            )
            rate = min(high, max(low, rate))
            country = self._country()
            address = f"10.{16 + i // 250}.{i % 250}.1"
            host = self._host(address, country, rate)
            config = RelayConfig(
                nickname=f"r{i}",
                address=address,
                port=9001,
                authorities=authorities,
                exit=i in exits,
                test_network=True,
                bandwidth=int(rate),
                country=country,
            )
            node = RelayNode(
                config, IdentityKey(self._key()), OnionKey(self._key()), host
            )
            scope = trio.CancelScope()
            self.relays[config.nickname] = _Relay(node, host, scope)
            await nursery.start(partial(_in_scope, scope, node.serve))
        for relay in self.relays.values():
            await relay.node.published.wait()

    async def start_origins(self, nursery: trio.Nursery) -> list[str]:
        names = []
        for i in range(self.params.origins):
            address = f"10.250.0.{1 + i}"
            host = self._host(
                address, ORIGIN_COUNTRIES[i % len(ORIGIN_COUNTRIES)], SERVER_UP_RATE
            )
            listeners = await host.listen(address, ORIGIN_PORT)
            nursery.start_soon(trio.serve_listeners, serve_origin, listeners)
            name = f"origin{i}.sim"
            self.net.add_name(name, [address])
            names.append(name)
        return names

    async def run_client(
        self,
        number: int,
        model: str,
        authority: AuthorityAddress,
        origins: list[str],
        delay: float,
    ) -> None:
        rng = random.Random(f"hopchain-sim-network:{self.params.seed}:client{number}")
        address = f"10.{100 + number // 250}.{number % 250}.1"
        host = self._host(address, self._country(), CLIENT_UP_RATE)
        await trio.sleep(delay)
        node = ClientNode(
            ClientConfig(
                authorities=[authority],
                socks_port=None,
                hops=self.params.hops,
                test_network=True,
            ),
            host,
            rng,
        )
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            await nursery.start(node.serve)
            self.result.bootstraps.append(trio.current_time() - started)
            assert node.manager is not None
            node.manager.build_times = _RecordingBuildTimes(
                lambda s: self.result.builds.append(
                    Build(number, trio.current_time() - self.t0, s)
                )
            )
            await client_loop(
                number,
                model,
                HopchainClient(node),
                origins,
                rng,
                think_time=self.params.think_time,
                bulk_pause=self.params.bulk_pause,
                t0=self.t0,
                record=self.record,
            )

    def record(self, transfer: Transfer) -> None:
        self.result.transfers.append(transfer)

    async def apply_faults(self, faults: tuple[Fault, ...]) -> None:
        """Apply each fault at its minute; faults of one minute in the order
        given."""
        for fault in sorted(faults, key=lambda f: f.minute):
            await trio.sleep_until(self.t0 + 60 * fault.minute)
            relay = self.relays[fault.relay]
            if fault.kind == "kill":
                relay.scope.cancel()
                self.net.kill(relay.host.address)
            elif fault.kind == "vanish":
                self.net.vanish(relay.host.address)
                relay.scope.cancel()
            else:
                self.net.set_up_rate(
                    relay.host.address, relay.node.config.bandwidth / fault.factor
                )
            self.result.events.append((trio.current_time() - self.t0, fault.describe()))
            print(
                f"sim network: minute {fault.minute:g}: {fault.describe()}",
                file=sys.stderr,
            )


class _Serve(Protocol):
    def __call__(self, *, task_status: trio.TaskStatus[int]) -> Awaitable[None]: ...


async def _in_scope(
    scope: trio.CancelScope,
    serve: _Serve,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``serve`` inside ``scope``, so that cancelling it kills the node."""
    with scope:
        await serve(task_status=task_status)


def _models(params: NetworkParams, rng: random.Random) -> list[str]:
    if params.workload != "mixed":
        return [params.workload] * params.clients
    bulk = round(params.clients * params.bulk_fraction)
    models = ["bulk"] * bulk + ["web"] * (params.clients - bulk)
    rng.shuffle(models)
    return models


async def _progress(world: _World, started_wall: float) -> None:
    minutes = world.params.minutes
    minute = 0
    while minute < minutes:
        minute += 1
        await trio.sleep_until(world.t0 + 60 * min(minute, minutes))
        transfers = world.result.transfers
        failed = sum(not t.ok for t in transfers)
        print(
            f"sim network: minute {min(minute, minutes):g}/{minutes:g}, "
            f"{len(transfers)} downloads, {failed} failed, "
            f"wall {time.monotonic() - started_wall:.1f} s",
            file=sys.stderr,
        )


@contextmanager
def _quiet_nodes() -> Iterator[None]:
    """Hide the nodes' warnings (below errors) while the world is torn down."""
    loggers = [
        logging.getLogger(name) for name in ("hopchain.relay", "hopchain.client")
    ]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


async def _main(params: NetworkParams) -> SimResult:
    world = _World(params)
    started_wall = time.monotonic()
    with use_wall_clock(lambda: EPOCH + trio.current_time()):
        async with trio.open_nursery() as nursery:
            authorities = await world.start_authorities(nursery)
            await world.start_relays(nursery, authorities)
            origins = await world.start_origins(nursery)
            world.t0 = trio.current_time()
            print(
                f"sim network: {params.relays} relays up at {world.t0:.1f} s "
                f"(virtual), wall {time.monotonic() - started_wall:.1f} s",
                file=sys.stderr,
            )
            models = _models(params, world.rng)
            for number, model in enumerate(models):
                nursery.start_soon(
                    world.run_client,
                    number,
                    model,
                    authorities[number % len(authorities)],
                    origins,
                    world.rng.uniform(0, params.ramp),
                )
            nursery.start_soon(world.apply_faults, params.faults)
            nursery.start_soon(_progress, world, started_wall)
            await trio.sleep_until(world.t0 + 60 * params.minutes)
            with _quiet_nodes():  # the teardown's closed links are no finding
                nursery.cancel_scope.cancel()
                await trio.lowlevel.checkpoint()
    world.result.relays = [
        RelayLoad(
            name,
            relay.node.config.country,
            relay.node.config.exit,
            relay.node.config.bandwidth,
            world.net.bytes_sent(relay.host.address),
        )
        for name, relay in world.relays.items()
    ]
    world.result.wall_seconds = time.monotonic() - started_wall
    return world.result


def run(params: NetworkParams) -> SimResult:
    """Run one simulation to its end and return what it measured.

    Raises:
        ConfigError: a fault names a relay that does not exist.
    """
    names = {f"r{i}" for i in range(params.relays)}
    for fault in params.faults:
        if fault.relay not in names:
            raise ConfigError(
                f"no relay named {fault.relay}: relays are r0..r{params.relays - 1}"
            )
    with _seeded_scheduler(params.seed):
        clock = trio.testing.MockClock(autojump_threshold=0)
        return trio.run(_main, params, clock=clock)


@contextmanager
def _seeded_scheduler(seed: int) -> Iterator[None]:
    """Seed the generator trio's scheduler shuffles ready tasks with, for
    this run only.

    trio keeps it in a private module attribute; without it two runs of one
    seed would order simultaneous events differently."""
    from trio._core import _run

    state = _run._r.getstate()
    _run._r.seed(f"hopchain-sim-network-scheduler:{seed}")
    try:
        yield
    finally:
        _run._r.setstate(state)
