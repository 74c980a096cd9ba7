"""``hopchain relay`` as a daemon: configure, run, stop gracefully, reload.

Everything is read and checked (options, config file, key files and their
modes) when ``RelayDaemon`` is built, before any socket is opened, so a
broken configuration never leaves a half-started relay.  ``hopchain.cli``
calls ``stop()`` on the first SIGTERM/SIGINT, cancels on the second, and
calls ``reload()`` on SIGHUP.
"""

import argparse
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Final

import trio
from hopchain.relay.dirclient import AuthorityAddress
from hopchain.relay.keystore import (
    OnionKeyFiles,
    ensure_private_dir,
    load_or_create_secret,
)
from hopchain.relay.metrics import check_metrics_address
from hopchain.relay.net import Network, TcpNetwork, wall_clock
from hopchain.relay.node import RELOADABLE, KeyRotation, RelayConfig, RelayNode

from hopchain.crypto.keys import IdentityKey, OnionKey, fingerprint
from hopchain.errors import ConfigError
from hopchain.exitpolicy import (
    Action,
    ExitPolicy,
    Rule,
    default_policy,
    format_ports,
    parse_policy,
)
from hopchain.flags import earns_exit_flag
from hopchain.onionrotation import RotationPolicy
from hopchain.relayconfig import CONFIG_FILE, check_required
from hopchain.relaylimits import LIMIT_OPTIONS, limits_from_args
from hopchain.safelog import log_event

logger = logging.getLogger(__name__)

IDENTITY_KEY = "identity.key"
# The options a SIGHUP applies: those behind RelayNode's RELOADABLE fields
# (the exit policy, the advertised bandwidth and every resource limit), and
# the daemon's own shutdown grace and log level.  A change to any other
# option is logged as needing a restart.
RELOADABLE_OPTIONS: Final = frozenset(
    {"exit_policy", "exit_policy_file", "exit_ports", "bandwidth"}
    | set(LIMIT_OPTIONS)
    | {"shutdown_grace", "log_level"}
)
# Namespace entries that are not relay options.
_NOT_OPTIONS: Final = frozenset({"command", "relay_command", "argv", "config"})


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
    policy = exit_policy(args)
    limits = limits_from_args(args)
    if args.metrics_port is not None:
        check_metrics_address(
            args.metrics_address, allow_public=args.metrics_allow_public
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
        exit_policy=policy,
        test_network=args.test_network,
        bandwidth=limits.advertised(args.bandwidth),
        country=args.country,
        publish_interval=args.publish_interval,
        metrics_port=args.metrics_port,
        metrics_address=args.metrics_address,
        metrics_allow_public=args.metrics_allow_public,
        limits=limits,
    )


def exit_policy(args: argparse.Namespace) -> ExitPolicy | None:
    """The relay's exit policy from its options (None: the default)."""
    policy = None
    if args.exit_policy is not None:
        policy = parse_policy(args.exit_policy, "--exit-policy")
    elif args.exit_policy_file is not None:
        try:
            text = args.exit_policy_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--exit-policy-file: cannot read it: {exc}") from exc
        policy = parse_policy(text, str(args.exit_policy_file))
    elif args.exit_ports is not None:
        accepts = (Rule(Action.ACCEPT, None, lo, hi) for lo, hi in args.exit_ports)
        policy = ExitPolicy((*accepts, Rule(Action.REJECT, None)))
    if args.exit:
        summary = (policy or default_policy(args.test_network)).summary()
        log_event(logger, logging.INFO, "exit_policy", ports=format_ports(summary))
        if not earns_exit_flag(summary):
            logger.warning(
                "the exit policy accepts fewer than two of ports 80, 443 and "
                "6667 in general: authorities give no Exit flag, and clients "
                "will not exit here"
            )
    return policy


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
        fixed = _fixed_options(args)
        changed = [k for k, v in fixed.items() if self._fixed.get(k) != v]
        if changed:
            logger.warning(
                "reload: %s changed; that takes a restart", ", ".join(changed)
            )
        self.grace = args.shutdown_grace
        _set_log_level(args)
        # Only the reloadable fields: the rest keep their running values
        # (their changes were named above, as options).
        self.node.reload(
            dataclasses.replace(
                self.node.config, **{f: getattr(config, f) for f in RELOADABLE}
            )
        )


def _fixed_options(args: argparse.Namespace) -> dict[str, object]:
    """The relay options a reload cannot change, by config key."""
    return {
        key: value
        for key, value in vars(args).items()
        if key not in RELOADABLE_OPTIONS and key not in _NOT_OPTIONS
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
