"""The local client: fetches the consensus, builds circuits, serves SOCKS5 and HTTP.

It keeps its state in a private data directory (mode 0700): the control
socket (``control.sock``) that ``hopchain doctor`` and ``hopchain newnym``
talk to, the last verified consensus (``cached-consensus``, 0600), which it
starts from when no authority answers, as long as it is still valid, and its
entry guards (``guards.json``, 0600; see ``hopchain.guards``).
"""

import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import trio
from hopchain.client.circuits import CircuitManager
from hopchain.client.control import (
    ControlServer,
    cookie_path,
    open_control_listener,
    write_cookie,
)
from hopchain.client.http import HttpListener, HttpOptions
from hopchain.client.socks import SocksListener, SocksOptions
from hopchain.client.stats import ClientStats
from hopchain.relay import dirclient
from hopchain.relay.dirclient import AuthorityAddress
from hopchain.relay.keystore import ensure_private_dir
from hopchain.relay.net import Network, bound_port, wall_clock

from hopchain.directory import CLOCK_SKEW, Consensus, utc_text, verify_consensus
from hopchain.errors import CircuitError, DirectoryError, PathSelectionError
from hopchain.geoip import GeoIPDatabase
from hopchain.guards import GuardSet
from hopchain.path import CountryRules, PathConstraints, exit_choice, select_path
from hopchain.predicted import MAX_CLEAN
from hopchain.reuse import DIRTINESS

logger = logging.getLogger(__name__)

BOOTSTRAP_RETRY: Final = 1.0
REFRESH_INTERVAL: Final = 60.0
MIN_REFRESH: Final = 5.0
CONTROL_SOCKET: Final = "control.sock"
CONSENSUS_CACHE: Final = "cached-consensus"
GUARDS_FILE: Final = "guards.json"


def _save_cache(path: Path, raw: bytes) -> None:
    """Write the consensus atomically, readable by its owner only."""
    ensure_private_dir(path.parent)
    partial = path.with_suffix(".new")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(raw)
    os.replace(partial, path)


def _load_cache(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


@dataclass
class ClientConfig:
    """Everything a client needs to run."""

    authorities: list[AuthorityAddress]
    socks_host: str = "127.0.0.1"
    socks_port: int | None = 9050
    hops: int = 3
    test_network: bool = False
    dirtiness: float = DIRTINESS
    bootstrap_timeout: float = 120.0
    warm_port: int = 80
    socks: SocksOptions = field(default_factory=SocksOptions)
    http_host: str = "127.0.0.1"
    http_port: int | None = None
    http: HttpOptions = field(default_factory=HttpOptions)
    data_dir: Path | None = None
    countries: CountryRules = field(default_factory=CountryRules)
    geoip: GeoIPDatabase | None = None
    predicted_circuits: int = MAX_CLEAN

    @property
    def control_path(self) -> Path | None:
        """Where the control socket listens (None: no control socket)."""
        return None if self.data_dir is None else self.data_dir / CONTROL_SOCKET


class ClientNode:
    """The hopchain client (see the module docstring)."""

    def __init__(
        self, config: ClientConfig, network: Network, rng: random.Random
    ) -> None:
        self.config = config
        self.network = network
        self.rng = rng
        self._consensus: Consensus | None = None
        self.manager: CircuitManager | None = None
        self.stats = ClientStats()
        self.socks_port = config.socks_port or 0
        self.http_port = config.http_port or 0

    @property
    def consensus(self) -> Consensus:
        """The current verified consensus, while it is still valid.

        Raises:
            DirectoryError: none fetched yet, or it expired (refreshes failed).
        """
        if self._consensus is None:
            raise DirectoryError("no consensus yet")
        now = wall_clock()
        if now > self._consensus.valid_until + CLOCK_SKEW:
            raise DirectoryError(
                "consensus expired (valid until "
                f"{utc_text(self._consensus.valid_until)}, now {utc_text(now)}) "
                "and no authority gave a new one"
            )
        return self._consensus

    async def fetch_consensus(self) -> Consensus:
        """Fetch from the authorities in turn; the first that verifies wins.

        It becomes the current consensus unless that one is newer (an
        authority may lag a period behind the others).

        Raises:
            DirectoryError: none answered with a valid consensus (the message
                lists why each failed).
        """
        pinned = [a.key for a in self.config.authorities]
        problems = []
        for authority in self.rng.sample(
            self.config.authorities, len(self.config.authorities)
        ):
            try:
                raw = await dirclient.fetch_consensus(self.network, authority)
                consensus = verify_consensus(raw, pinned, wall_clock())
            except DirectoryError as exc:
                problems.append(f"{authority.host}:{authority.port}: {exc}")
                continue
            if consensus.ignored_signers:
                logger.debug(
                    "ignored consensus signatures by keys that are not pinned: %s",
                    ", ".join(sorted(k.hex() for k in consensus.ignored_signers)),
                )
            current = self._consensus
            if current is not None and current.valid_after > consensus.valid_after:
                return current
            self._consensus = consensus
            if self.config.data_dir is not None:
                await trio.to_thread.run_sync(
                    _save_cache, self.config.data_dir / CONSENSUS_CACHE, raw
                )
            return consensus
        cached = await self._from_cache(pinned, problems)
        if cached is not None:
            return cached
        raise DirectoryError("; ".join(sorted(problems)))

    async def _from_cache(
        self, pinned: list[bytes], problems: list[str]
    ) -> Consensus | None:
        """The cached consensus while it is still valid (authorities down)."""
        if self.config.data_dir is None:
            return None
        path = self.config.data_dir / CONSENSUS_CACHE
        raw = await trio.to_thread.run_sync(_load_cache, path)
        if raw is None:
            return None
        try:
            consensus = verify_consensus(raw, pinned, wall_clock())
        except DirectoryError as exc:
            problems.append(f"cached consensus: {exc}")
            return None
        current = self._consensus
        if current is None or current.valid_after < consensus.valid_after:
            logger.warning(
                "no authority answered; using the cached consensus (%d relays)",
                len(consensus.relays),
            )
            self._consensus = consensus
            return consensus
        return current

    async def bootstrap(self) -> None:
        """Wait until a consensus with a usable path is available.

        Raises:
            DirectoryError: still none after ``bootstrap_timeout`` seconds.
        """
        reason = "no answer yet"
        with trio.move_on_after(self.config.bootstrap_timeout):
            while True:
                try:
                    consensus = await self.fetch_consensus()
                    select_path(
                        consensus,
                        PathConstraints(
                            hops=self.config.hops,
                            port=self.config.warm_port,
                            same_subnet_ok=self.config.test_network,
                        ),
                        self.rng,
                    )
                except (DirectoryError, PathSelectionError) as exc:
                    if str(exc) != reason:
                        logger.info("bootstrapping: %s", exc)
                    reason = str(exc)
                    await trio.sleep(BOOTSTRAP_RETRY)
                    continue
                logger.info(
                    "consensus with %d relays (%d exits)",
                    len(consensus.relays),
                    sum("Exit" in r.flags for r in consensus.relays),
                )
                self._describe_exit_choice(consensus)
                return
        raise DirectoryError(f"bootstrap timed out: {reason}")

    def _load_guards(self) -> GuardSet:
        """The persisted guard set (empty without a data directory).

        Raises:
            ConfigError: the guard file is malformed.
        """
        if self.config.data_dir is None:
            return GuardSet()
        raw = _load_cache(self.config.data_dir / GUARDS_FILE)
        return GuardSet() if raw is None else GuardSet.from_json(raw.decode())

    def _save_guards(self, guards: GuardSet) -> None:
        if self.config.data_dir is not None:
            _save_cache(self.config.data_dir / GUARDS_FILE, guards.to_json().encode())

    def _describe_exit_choice(self, consensus: Consensus) -> None:
        """Say what the country rules cost: how many exits, what bandwidth."""
        rules = self.config.countries
        if not rules.limits_exits:
            return
        choice = exit_choice(
            consensus,
            PathConstraints(
                port=None,
                exit_countries=rules.exit_countries,
                exclude_exit_countries=rules.exclude_exit,
                exclude_countries_anywhere=rules.exclude_anywhere,
            ),
        )
        log = logger.warning if choice.is_small else logger.info
        log(
            "country rules leave %d of %d running exits, %.0f%% of weighted exit "
            "bandwidth%s",
            len(choice.matching),
            choice.running_exits,
            100 * choice.bandwidth_share,
            ": few enough to single you out" if choice.is_small else "",
        )

    async def serve(
        self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Bootstrap, build a first circuit, and serve the app ports until cancelled.

        Reports the bound SOCKS port through ``task_status`` (0 when the
        client runs without a SOCKS port, as the Python API does); the bound
        HTTP proxy port, if any, is ``http_port``.
        """
        await self.bootstrap()
        listeners = []
        if self.config.socks_port is not None:
            listeners = await self.network.listen(
                self.config.socks_host, self.config.socks_port
            )
            self.socks_port = bound_port(listeners)
        # The HTTP proxy port (client/http.py), beside the SOCKS port.
        http_listeners = []
        if self.config.http_port is not None:
            http_listeners = await self.network.listen(
                self.config.http_host, self.config.http_port
            )
            self.http_port = bound_port(http_listeners)
        control = None
        cookie = b""
        if self.config.control_path is not None:
            assert self.config.data_dir is not None
            ensure_private_dir(self.config.data_dir)
            cookie = write_cookie(cookie_path(self.config.control_path))
            control = await open_control_listener(self.config.control_path)
        guards = GuardSet()
        if self.config.data_dir is not None:  # no thread without files: under a
            # virtual clock a thread lets time jump while it runs
            guards = await trio.to_thread.run_sync(self._load_guards)
        async with trio.open_nursery() as nursery:
            manager = CircuitManager(
                self.network,
                lambda: self.consensus,
                hops=self.config.hops,
                same_subnet_ok=self.config.test_network,
                dirtiness=self.config.dirtiness,
                rng=self.rng,
                nursery=nursery,
                countries=self.config.countries,
                guards=guards,
                on_guards_changed=None
                if self.config.data_dir is None
                else self._save_guards,
                geoip=self.config.geoip,
                max_clean=self.config.predicted_circuits,
            )
            self.manager = manager
            try:
                await manager.circuit_for(self.config.warm_port)
            except (CircuitError, DirectoryError, PathSelectionError) as exc:
                logger.warning("first circuit failed: %s", exc)
            # As Tor, predict the warm-up port at start.
            manager.predicted.seen(self.config.warm_port, trio.current_time())
            nursery.start_soon(manager.keep_circuits_ready)
            nursery.start_soon(self._refresh_loop)
            if listeners:
                socks = SocksListener(manager, self.config.socks, self.stats)
                nursery.start_soon(trio.serve_listeners, socks.handle, listeners)
                logger.info(
                    "SOCKS5 proxy listening on %s:%d",
                    self.config.socks_host,
                    self.socks_port,
                )
            if http_listeners:
                http = HttpListener(manager, self.config.http, self.stats)
                nursery.start_soon(trio.serve_listeners, http.handle, http_listeners)
                logger.info(
                    "HTTP proxy listening on %s:%d",
                    self.config.http_host,
                    self.http_port,
                )
            if control is not None:
                server = ControlServer(self.status, manager.newnym, cookie)
                nursery.start_soon(trio.serve_listeners, server.handle, [control])
            task_status.started(self.socks_port or 0)

    def status(self) -> dict[str, object]:
        """What ``hopchain doctor`` shows: counts, circuits' exits, consensus."""
        consensus = self._consensus
        return {
            "stats": self.stats.as_dict(),
            "circuits": [] if self.manager is None else self.manager.describe(),
            "consensus": None
            if consensus is None
            else {
                "relays": len(consensus.relays),
                "exits": sum("Exit" in r.flags for r in consensus.relays),
                "valid_until": consensus.valid_until,
            },
            "hops": self.config.hops,
            "build_timeout_s": None
            if self.manager is None
            else round(self.manager.build_times.timeout, 2),
        }

    async def _refresh_loop(self) -> None:
        """Fetch once per voting interval (the consensus's fresh period),
        between ``MIN_REFRESH`` and ``REFRESH_INTERVAL`` seconds apart."""
        while True:
            current = self._consensus
            period = (
                REFRESH_INTERVAL
                if current is None
                else current.fresh_until - current.valid_after
            )
            await trio.sleep(min(max(period, MIN_REFRESH), REFRESH_INTERVAL))
            try:
                await self.fetch_consensus()
            except DirectoryError as exc:
                logger.warning("consensus refresh failed: %s", exc)
