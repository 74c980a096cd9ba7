"""``hopchain relay`` as a daemon: configure, run, stop gracefully, reload.

Everything is read and checked (options, config file, key files and their
modes) when ``RelayDaemon`` is built, before any socket is opened, so a
broken configuration never leaves a half-started relay.  ``hopchain.cli``
calls ``stop()`` on the first SIGTERM/SIGINT, cancels on the second, and
calls ``reload()`` on SIGHUP.
"""

import argparse
import logging
from collections.abc import Callable
from pathlib import Path

import trio
from hopchain.relay.dirclient import AuthorityAddress
from hopchain.relay.keystore import (
    OnionKeyFiles,
    ensure_private_dir,
    load_or_create_secret,
)
from hopchain.relay.net import Network, TcpNetwork, wall_clock
from hopchain.relay.node import KeyRotation, RelayConfig, RelayNode

from hopchain.crypto.keys import IdentityKey, OnionKey, fingerprint
from hopchain.errors import ConfigError
from hopchain.onionrotation import RotationPolicy
from hopchain.relayconfig import CONFIG_FILE, check_required

logger = logging.getLogger(__name__)

IDENTITY_KEY = "identity.key"


def relay_config(args: argparse.Namespace) -> RelayConfig:
    """The node's configuration from checked arguments.

    Raises:
        ConfigError: a value that is wrong only in combination.
    """
    check_required(args)
    if args.ipv6_address and ":" in args.address:
        raise ConfigError(
            "ipv6_address goes with an IPv4 address; the address is IPv6 already"
        )
    return RelayConfig(
        nickname=args.nickname,
        address=args.address,
        port=args.port,
        ipv6_address=args.ipv6_address,
        contact=args.contact,
        family=tuple(dict.fromkeys(args.family or ())),
        authorities=[AuthorityAddress.parse(a) for a in args.authority],
        exit=args.exit,
        exit_ports=args.exit_ports,
        test_network=args.test_network,
        bandwidth=args.bandwidth,
        country=args.country,
        publish_interval=args.publish_interval,
    )


def load_keys(
    data_dir: Path, policy: RotationPolicy, now: float
) -> tuple[IdentityKey, OnionKey, KeyRotation]:
    """The relay's identity key and onion keys, created where missing.

    Raises:
        ConfigError: the directory or a key file is group- or
            world-accessible, or a key file is malformed.
    """
    ensure_private_dir(data_dir)
    identity = IdentityKey(load_or_create_secret(data_dir / IDENTITY_KEY))
    files = OnionKeyFiles(data_dir)
    current, previous, created = files.load(now)
    rotation = KeyRotation(
        files, policy, created, None if previous is None else OnionKey(previous)
    )
    return identity, OnionKey(current), rotation


class RelayDaemon:
    """A configured relay, ready to run (see the module docstring).

    ``load`` parses the command line and the config file again; it is
    called once here and again on every ``reload()``.
    """

    def __init__(
        self,
        load: Callable[[], argparse.Namespace],
        *,
        network: Network | None = None,
        ready: Callable[[str], None] = print,
    ) -> None:
        self._load = load
        self._ready = ready
        args = load()
        _set_log_level(args)
        config = relay_config(args)
        policy = RotationPolicy(args.onion_key_lifetime, args.onion_key_grace)
        identity, onion, rotation = load_keys(args.data_dir, policy, wall_clock())
        self.grace: float = args.shutdown_grace
        self.config_path: Path | None = args.config
        self._fixed = _fixed_options(args)
        self.node = RelayNode(
            config, identity, onion, network or TcpNetwork(), rotation=rotation
        )

    async def __call__(self) -> None:
        """Run until ``stop()`` has drained the relay (or until cancelled)."""
        async with trio.open_nursery() as nursery:
            port = await nursery.start(self._serve, nursery)
            nursery.start_soon(self._announce, port)

    async def _serve(
        self, nursery: trio.Nursery, *, task_status: trio.TaskStatus[int]
    ) -> None:
        await self.node.serve(task_status=task_status)
        nursery.cancel_scope.cancel()  # the shutdown is complete, published or not

    async def _announce(self, port: int) -> None:
        await self.node.published.wait()
        address = self.node.config.address
        host = f"[{address}]" if ":" in address else address
        self._ready(f"ready {host}:{port}")

    def stop(self) -> None:
        """Begin the graceful shutdown (first SIGTERM or SIGINT)."""
        self.node.shutdown(self.grace)

    def reload(self) -> None:
        """Re-read the config file and apply what can change (SIGHUP).

        A broken file is logged and changes nothing: the relay keeps running
        with what it had.
        """
        if self.config_path is None:
            logger.warning("SIGHUP: no --config file to reload")
            return
        try:
            args = self._load()
            config = relay_config(args)
        except ConfigError as exc:
            logger.error("reload refused, nothing changed: %s", exc)
            return
        changed = [k for k, v in _fixed_options(args).items() if self._fixed[k] != v]
        if changed:
            logger.warning(
                "reload: %s changed; that takes a restart", ", ".join(changed)
            )
        self.grace = args.shutdown_grace
        _set_log_level(args)
        self.node.reload(config)


def _fixed_options(args: argparse.Namespace) -> dict[str, object]:
    """The options outside ``RelayConfig`` that a reload cannot change."""
    return {
        "data_dir": args.data_dir,
        "onion_key_lifetime": args.onion_key_lifetime,
        "onion_key_grace": args.onion_key_grace,
    }


def _set_log_level(args: argparse.Namespace) -> None:
    # The command line set the level before the config file was read.
    logging.getLogger().setLevel(args.log_level.upper())


def init_relay(data_dir: Path, text: Callable[[Path], str]) -> str:
    """``hopchain relay init``: create the keys and write ``relay.toml``.

    ``text`` renders the config file for the absolute data directory.
    Returns what to tell the operator.

    Raises:
        ConfigError: the config file exists already, or the directory or a
            key file is not private.
    """
    data_dir = data_dir.expanduser().absolute()
    path = data_dir / CONFIG_FILE
    if path.exists():
        raise ConfigError(f"{path} exists already; edit it, or move it away first")
    identity, _, _ = load_keys(data_dir, RotationPolicy(), wall_clock())
    path.write_text(text(data_dir), encoding="utf-8")
    path.chmod(0o600)
    return (
        f"created {path} and the keys in {data_dir}\n"
        f"identity {fingerprint(identity.public)} ({identity.public.hex()})\n"
        f"set the required keys left commented out, then run:\n"
        f"  hopchain relay --config {path}"
    )
