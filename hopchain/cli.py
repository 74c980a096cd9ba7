"""The ``hopchain`` command: one entry point with a subcommand per role.

This module and ``__main__`` are the only modules in ``hopchain/`` that import
the trio shells (lazily, per subcommand); the protocol core never does.
"""

import argparse
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from hopchain._version import __version__

if TYPE_CHECKING:
    from hopchain.client.http import HttpOptions
    from hopchain.client.socks import SocksOptions
    from hopchain.geoip import GeoIPDatabase
    from hopchain.path import CountryRules
from hopchain.errors import ConfigError, HopchainError
from hopchain.relayconfig import add_relay_options, identity_key
from hopchain.relayconfig import port_number as _port
from hopchain.voting import DEFAULT_INTERVAL as DEFAULT_VOTE_INTERVAL
from hopchain.voting import TEST_NETWORK_INTERVAL as TEST_NETWORK_VOTE_INTERVAL

logger = logging.getLogger("hopchain")

DEFAULT_SOCKS_PORT = 9050
DEFAULT_HTTP_PORT = 8118
DEFAULT_CLIENT_DIR = Path("~/.hopchain/client").expanduser()


def _positive_hops(text: str) -> int:
    hops = int(text)
    if not 1 <= hops <= 8:
        raise argparse.ArgumentTypeError("hops must be between 1 and 8")
    return hops


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log verbosity on stderr (default: info)",
    )
    parser.add_argument(
        "--unsafe-logging",
        action="store_true",
        help="show client addresses and destinations in the logs (by default "
        "they are logged as [scrubbed]); for debugging only, never on a "
        "relay other people use",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="hopchain",
        description=(
            "An anonymizing multi-hop onion-routing proxy chain. Start with "
            "'hopchain demo' for a whole network on loopback."
        ),
    )
    parser.add_argument(
        "--version", action="version", version=f"hopchain {__version__}"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="run a whole local network (authorities, relays, client) on loopback",
        description=(
            "Start directory authorities, N relays on 127.0.0.2, 127.0.0.3, ... "
            "(some of them exits) and a client, each as its own process, and "
            "print the SOCKS5 and HTTP proxy addresses once a circuit is built. "
            "Ctrl-C or SIGTERM stops everything."
        ),
    )
    demo.add_argument(
        "--relays", type=int, default=5, help="number of relays (default 5, min 3)"
    )
    demo.add_argument(
        "--exits", type=int, default=2, help="how many relays are exits (default 2)"
    )
    demo.add_argument(
        "--authorities",
        type=int,
        default=3,
        help="number of directory authorities, voting every "
        f"{TEST_NETWORK_VOTE_INTERVAL:.0f} s (default 3, as Tor's test networks)",
    )
    demo.add_argument(
        "--socks-port",
        type=_port,
        default=DEFAULT_SOCKS_PORT,
        help="client SOCKS port: SOCKS5, SOCKS4/4a, RESOLVE (default 9050)",
    )
    demo.add_argument(
        "--data-dir",
        type=Path,
        help="keys and logs (default: a new temporary directory, removed on exit)",
    )
    _add_client_options(demo)
    _add_common(demo)

    authority = sub.add_parser(
        "authority",
        help="run a directory authority",
        description=(
            "Run a directory authority: accept signed relay descriptors, test that "
            "each relay is reachable, vote with the --peer authorities, and serve "
            "the consensus signed by more than half of them. Prints "
            "'ready HOST:PORT=KEY' on stdout: the value relays and clients pass "
            "to --authority and other authorities to --peer."
        ),
    )
    authority.add_argument(
        "--data-dir", type=Path, required=True, help="key directory (created 0700)"
    )
    authority.add_argument(
        "--address", default="127.0.0.1", help="listen address (default 127.0.0.1)"
    )
    authority.add_argument(
        "--port", type=_port, default=7000, help="listen port (default 7000; 0: any)"
    )
    authority.add_argument(
        "--bad-exit",
        action="append",
        type=identity_key,
        default=[],
        metavar="IDENTITY",
        help="mark the relay with this identity key (hex, 64 digits) BadExit: "
        "clients never exit through it (repeatable)",
    )
    _add_geoip_options(authority, "relay countries")
    authority.add_argument(
        "--test-network",
        action="store_true",
        help="accept relays that declare a test network (loopback demos only); "
        f"votes every {TEST_NETWORK_VOTE_INTERVAL:.0f} s unless --vote-interval",
    )
    authority.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="HOST:PORT=KEY",
        help="another directory authority to vote with (repeatable; this "
        "authority's own entry may be listed too and is skipped). Every "
        "authority needs the same set, and clients pin all of them",
    )
    authority.add_argument(
        "--vote-interval",
        type=float,
        metavar="SECONDS",
        help="length of a voting period: the authorities vote at every "
        "multiple of it, and a consensus is fresh for one period and valid "
        f"for three (default {DEFAULT_VOTE_INTERVAL:.0f}; "
        f"{TEST_NETWORK_VOTE_INTERVAL:.0f} with --test-network); "
        "every authority needs the same value",
    )
    _add_common(authority)

    relay = sub.add_parser(
        "relay",
        help="run a relay (optionally an exit)",
        description=(
            "Run a relay: create or load its keys in --data-dir, register with the "
            "authorities, accept links and extend circuits; with --exit, also "
            "connect to destinations. Prints 'ready' on stdout once published. "
            "SIGTERM or SIGINT stops it gracefully (--shutdown-grace), a second "
            "one at once; SIGHUP reloads --config. Every option is also a key "
            "of the config file (hyphens as underscores). "
            "'hopchain relay status' summarises a running relay (see its --help)."
        ),
    )
    relay.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="read the options from this TOML file (see 'hopchain relay init'); "
        "flags given here override it; SIGHUP reloads it",
    )
    add_relay_options(relay)
    _add_common(relay)
    relay_sub = relay.add_subparsers(dest="relay_command", metavar="{init,status}")
    # Listed for --help only: main() hands "relay status" to its own parser
    # (hopchain.relay.status), which takes none of the relay's options.
    relay_sub.add_parser(
        "status",
        help="summarise a running relay from its metrics endpoint (see "
        "'hopchain relay status --help')",
        add_help=False,
    )
    init = relay_sub.add_parser(
        "init",
        help="create the keys and a commented relay.toml in --data-dir",
        description=(
            "Create the data directory (0700), the identity and onion keys "
            "(0600), and DIR/relay.toml with every relay option, commented "
            "with its help and default; options given here are set in it. "
            "Then run: hopchain relay --config DIR/relay.toml"
        ),
    )
    add_relay_options(init)
    _add_common(init)

    client = sub.add_parser(
        "client",
        help="run the local client (SOCKS5 and HTTP proxy)",
        description=(
            "Fetch and verify the consensus, build circuits, and serve SOCKS5, "
            "SOCKS4/4a and RESOLVE on --socks-port and an HTTP proxy (CONNECT, "
            "and http:// URLs with identifying headers removed) on --http-port. "
            "Host names are resolved by the exit."
        ),
    )
    client.add_argument(
        "--authority",
        action="append",
        required=True,
        metavar="HOST:PORT=KEY",
        help="a pinned directory authority (repeatable)",
    )
    client.add_argument(
        "--socks-host", default="127.0.0.1", help="SOCKS listen address"
    )
    client.add_argument(
        "--socks-port",
        type=_port,
        default=DEFAULT_SOCKS_PORT,
        help="SOCKS port: SOCKS5, SOCKS4/4a, RESOLVE (default 9050)",
    )
    client.add_argument(
        "--test-network",
        action="store_true",
        help="allow relays on one subnet (needed for loopback networks)",
    )
    client.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_CLIENT_DIR,
        help=f"client state and control socket (default {DEFAULT_CLIENT_DIR})",
    )
    _add_client_options(client)
    _add_common(client)

    exits = sub.add_parser(
        "exits",
        help="list the exits that the country options leave, and what they cost",
        description=(
            "Fetch and verify the consensus and list the running exits that "
            "satisfy --exit-country / --exclude-country / "
            "--exclude-country-anywhere (and accept --port), with their share "
            "of weighted exit bandwidth (as path selection draws exits); warns "
            "when the set is small enough to single "
            "you out."
        ),
    )
    exits.add_argument(
        "--authority",
        action="append",
        required=True,
        metavar="HOST:PORT=KEY",
        help="a pinned directory authority (repeatable)",
    )
    exits.add_argument("--port", type=_port, help="only exits that accept this port")
    _add_country_options(exits)
    _add_common(exits)

    for name, text in (
        ("doctor", "report what a running client sees, in plain words"),
        ("newnym", "make a running client use new circuits for new streams"),
        (
            "circuits",
            "list a running client's circuits: each hop's nickname, "
            "fingerprint, country and flags; age, state and streams",
        ),
    ):
        command = sub.add_parser(
            name, help=text, description=text[0].upper() + text[1:] + "."
        )
        command.add_argument(
            "--data-dir",
            type=Path,
            default=DEFAULT_CLIENT_DIR,
            help=f"the client's data directory (default {DEFAULT_CLIENT_DIR}; "
            "hopchain demo prints its own)",
        )
        _add_common(command)

    from hopchain.simulations.cli import add_sim_parser

    add_sim_parser(sub)
    return parser


def _countries(text: str) -> frozenset[str]:
    codes = frozenset(c.strip().upper() for c in text.split(",") if c.strip())
    if not codes or not all(len(c) == 2 and c.isalpha() and c.isascii() for c in codes):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of two-letter country codes such as de,nl"
        )
    return codes


COUNTRY_OPTIONS = (
    ("--exit-country", "exit only in these countries (e.g. de,nl)"),
    ("--exclude-country", "never exit in these countries"),
    ("--exclude-country-anywhere", "no hop at all in these countries"),
)


def _add_country_options(parser: argparse.ArgumentParser) -> None:
    """The country options shared by ``client``, ``demo`` and ``exits``."""
    for flag, text in COUNTRY_OPTIONS:
        parser.add_argument(
            flag, type=_countries, default=frozenset(), metavar="CC,CC", help=text
        )


def _add_geoip_options(parser: argparse.ArgumentParser, purpose: str) -> None:
    """--geoip, --geoip6 and --geoip-mmdb (authorities and clients)."""
    parser.add_argument(
        "--geoip",
        type=Path,
        metavar="FILE",
        help=f"Tor-format IPv4 GeoIP file for {purpose} "
        "(Debian's tor-geoipdb: /usr/share/tor/geoip)",
    )
    parser.add_argument(
        "--geoip6",
        type=Path,
        metavar="FILE",
        help="Tor-format IPv6 GeoIP file (/usr/share/tor/geoip6)",
    )
    parser.add_argument(
        "--geoip-mmdb",
        type=Path,
        metavar="FILE",
        help=f"MaxMind DB country file (.mmdb, e.g. GeoLite2-Country) for {purpose}; "
        "with --geoip/--geoip6 too, the .mmdb answers first",
    )


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    """Options of the client that ``hopchain demo`` hands to its client too."""
    _add_country_options(parser)
    _add_geoip_options(
        parser,
        "the egress check of exits' outgoing addresses (without: the "
        "country the directory lists)",
    )
    parser.add_argument(
        "--strict-countries",
        action="store_true",
        help="refuse a stream when no exit fits the country options, instead of "
        "falling back to any exit (the fallback is logged); also refuse an exit "
        "whose outgoing address lies elsewhere (the egress check, otherwise "
        "only logged) and retry the stream on another",
    )
    parser.add_argument(
        "--hops",
        type=_positive_hops,
        default=3,
        help="hops per circuit, 1..8 (default 3)",
    )
    parser.add_argument(
        "--isolate-dest-addr",
        action="store_true",
        help="streams to different destination hosts never share a circuit",
    )
    parser.add_argument(
        "--isolate-dest-port",
        action="store_true",
        help="streams to different destination ports never share a circuit",
    )
    parser.add_argument(
        "--socks-auth",
        metavar="USER:PASS",
        help="require this SOCKS5 username and password (shared machines); "
        "otherwise any credentials are accepted and only isolate streams",
    )
    parser.add_argument(
        "--max-pending",
        type=int,
        default=256,
        help="app connections per port that may wait for their handshake or "
        "request head at once (default 256)",
    )
    http = parser.add_argument_group("HTTP proxy port")
    http.add_argument(
        "--http-port",
        type=_port,
        default=DEFAULT_HTTP_PORT,
        help=f"HTTP proxy port: CONNECT and plain http:// URLs "
        f"(default {DEFAULT_HTTP_PORT}; 0: any)",
    )
    http.add_argument(
        "--http-host",
        default="127.0.0.1",
        help="HTTP proxy listen address (default 127.0.0.1; anything but "
        "loopback lets other machines use your circuits, and is logged as a "
        "warning)",
    )
    http.add_argument(
        "--no-http",
        action="store_true",
        help="do not open the HTTP proxy port",
    )
    http.add_argument(
        "--http-normalise-headers",
        action="store_true",
        help="on plain http:// requests, also replace User-Agent with one "
        "common value and drop a Referer from another origin",
    )


def _client_argv(args: argparse.Namespace) -> list[str]:
    """The client options in ``args`` as command-line words (for the demo)."""
    argv = ["--hops", str(args.hops), "--max-pending", str(args.max_pending)]
    if args.isolate_dest_addr:
        argv.append("--isolate-dest-addr")
    if args.isolate_dest_port:
        argv.append("--isolate-dest-port")
    if args.socks_auth:
        argv += ["--socks-auth", args.socks_auth]
    if args.no_http:
        argv.append("--no-http")
    else:
        argv += ["--http-port", str(args.http_port), "--http-host", args.http_host]
    if args.http_normalise_headers:
        argv.append("--http-normalise-headers")
    for flag, _ in COUNTRY_OPTIONS:
        codes = getattr(args, flag[2:].replace("-", "_"))
        if codes:
            argv += [flag, ",".join(sorted(codes))]
    if args.strict_countries:
        argv.append("--strict-countries")
    for flag in ("--geoip", "--geoip6", "--geoip-mmdb"):
        path = getattr(args, flag[2:].replace("-", "_"))
        if path is not None:
            argv += [flag, str(path.resolve())]
    return argv


def _country_rules(args: argparse.Namespace) -> "CountryRules":
    from hopchain.path import CountryRules

    return CountryRules(
        exit_countries=args.exit_country,
        exclude_exit=args.exclude_country,
        exclude_anywhere=args.exclude_country_anywhere,
        strict=args.strict_countries,
    )


def _socks_options(args: argparse.Namespace) -> "SocksOptions":
    from hopchain.client.socks import SocksOptions
    from hopchain.isolation import IsolationRules

    required = None
    if args.socks_auth:
        user, sep, password = args.socks_auth.partition(":")
        if not sep or not 0 < len(user) < 256 or not 0 < len(password) < 256:
            raise ConfigError("--socks-auth must be USER:PASS, each 1..255 bytes")
        required = (user.encode(), password.encode())
    if args.max_pending < 1:
        raise ConfigError("--max-pending must be at least 1")
    return SocksOptions(
        isolation=IsolationRules(
            dest_addr=args.isolate_dest_addr, dest_port=args.isolate_dest_port
        ),
        required_credentials=required,
        max_pending=args.max_pending,
    )


def _http_options(args: argparse.Namespace) -> "HttpOptions":
    from hopchain.client.http import HttpOptions
    from hopchain.isolation import IsolationRules
    from hopchain.scrub import ScrubOptions

    return HttpOptions(
        isolation=IsolationRules(
            dest_addr=args.isolate_dest_addr, dest_port=args.isolate_dest_port
        ),
        scrub=ScrubOptions(normalise_identity=args.http_normalise_headers),
        max_pending=args.max_pending,
    )


def _warn_if_public_http(args: argparse.Namespace) -> None:
    from hopchain.httpproxy import is_loopback_host

    if not args.no_http and not is_loopback_host(args.http_host):
        logger.warning(
            "the HTTP proxy listens on %s, not on loopback: anyone who can "
            "reach that address can use your circuits",
            args.http_host,
        )


def _configure_logging(level: str, *, unsafe: bool) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if unsafe:
        from hopchain.safelog import RevealSensitive

        for handler in logging.getLogger().handlers:
            handler.addFilter(RevealSensitive())
        logger.warning("unsafe logging: client addresses and destinations are logged")


def _ready(line: str) -> None:
    print(line, flush=True)


def _load_geoip(args: argparse.Namespace) -> "GeoIPDatabase | None":
    """The GeoIP files named by --geoip/--geoip6/--geoip-mmdb, parsed."""
    from hopchain.geoip import GeoIPDatabase

    v4, v6, mmdb = args.geoip, args.geoip6, args.geoip_mmdb
    if v4 is None and v6 is None and mmdb is None:
        return None
    texts = []
    for path in (v4, v6):
        try:
            texts.append(None if path is None else path.read_text(encoding="ascii"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read GeoIP file {path}: {exc}") from exc
    db = GeoIPDatabase.from_tor_files(texts[0], texts[1], names=(str(v4), str(v6)))
    if mmdb is not None:
        try:
            data = mmdb.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read GeoIP file {mmdb}: {exc}") from exc
        db.add_mmdb(data, name=str(mmdb))
    logger.info("GeoIP: %d address ranges or tree nodes", len(db))
    return db


def _authority(args: argparse.Namespace) -> Callable[[], Awaitable[None]]:
    from hopchain.relay.authority import AuthorityNode
    from hopchain.relay.dirclient import AuthorityAddress
    from hopchain.relay.keystore import load_authority_identity
    from hopchain.relay.net import TcpNetwork
    from hopchain.voting import Schedule

    interval = args.vote_interval
    if interval is None:
        interval = (
            TEST_NETWORK_VOTE_INTERVAL if args.test_network else DEFAULT_VOTE_INTERVAL
        )
    if not interval >= 1:
        raise ConfigError("--vote-interval must be at least 1 second")
    peers = [AuthorityAddress.parse(p) for p in args.peer]
    identity = load_authority_identity(args.data_dir)
    node = AuthorityNode(
        identity,
        args.address,
        args.port,
        TcpNetwork(),
        test_network=args.test_network,
        geoip=_load_geoip(args),
        bad_exits=frozenset(args.bad_exit),
        peers=peers,
        schedule=Schedule(interval),
    )

    async def run() -> None:
        import trio

        async with trio.open_nursery() as nursery:
            port = await nursery.start(node.serve)
            host = f"[{args.address}]" if ":" in args.address else args.address
            _ready(f"ready {host}:{port}={identity.public.hex()}")

    return run


def _relay_arguments(argv: list[str]) -> argparse.Namespace:
    """The relay's arguments: the command line over its --config file."""
    from hopchain.relayconfig import apply_config, parse_config, subparser

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config is None:
        return args
    try:
        text = args.config.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {args.config}: {exc}") from exc
    relay = subparser(parser, ["relay"])
    values = parse_config(
        text, relay, source=str(args.config), base_dir=args.config.parent
    )
    return apply_config(lambda: parser.parse_args(argv), relay, values)


def _relay(args: argparse.Namespace) -> Callable[[], Awaitable[None]]:
    if args.relay_command is not None:
        return _RELAY_COMMANDS[args.relay_command](args)
    from hopchain.relay.daemon import RelayDaemon

    return RelayDaemon(lambda: _relay_arguments(args.argv), ready=_ready)


def _relay_init(args: argparse.Namespace) -> Callable[[], Awaitable[None]]:
    from hopchain.relay.daemon import init_relay
    from hopchain.relayconfig import record_given, render_config, subparser

    parser = build_parser()
    init = subparser(parser, ["relay", "init"])
    given = record_given(init, lambda: parser.parse_args(args.argv))
    if args.data_dir is None:
        raise ConfigError("relay init needs --data-dir")

    def text(data_dir: Path) -> str:
        given["data_dir"] = str(data_dir)
        return render_config(init, given, title=f"hopchain {__version__} relay")

    message = init_relay(args.data_dir, text)

    async def run() -> None:
        print(message, flush=True)

    return run


# ``hopchain relay SUBCOMMAND``: add a subcommand's parser next to "init"
# above and its runner here.
_RELAY_COMMANDS: dict[
    str, Callable[[argparse.Namespace], Callable[[], Awaitable[None]]]
] = {
    "init": _relay_init,
}


def _client(args: argparse.Namespace) -> Callable[[], Awaitable[None]]:
    import random

    from hopchain.client.node import ClientConfig, ClientNode
    from hopchain.relay.dirclient import AuthorityAddress
    from hopchain.relay.net import TcpNetwork

    config = ClientConfig(
        authorities=[AuthorityAddress.parse(a) for a in args.authority],
        socks_host=args.socks_host,
        socks_port=args.socks_port,
        hops=args.hops,
        test_network=args.test_network,
        socks=_socks_options(args),
        data_dir=args.data_dir,
        http_host=args.http_host,
        http_port=None if args.no_http else args.http_port,
        http=_http_options(args),
        countries=_country_rules(args),
        geoip=_load_geoip(args),
    )
    _warn_if_public_http(args)
    node = ClientNode(config, TcpNetwork(), random.SystemRandom())

    async def run() -> None:
        import trio

        async with trio.open_nursery() as nursery:
            port = await nursery.start(node.serve)
            http = "" if args.no_http else f" http {args.http_host}:{node.http_port}"
            _ready(f"ready socks5 {args.socks_host}:{port}{http}")

    return run


def _exits(args: argparse.Namespace) -> Callable[[], Awaitable[None]]:
    import random

    from hopchain.client.node import ClientConfig, ClientNode
    from hopchain.exitpolicy import format_ports
    from hopchain.path import PathConstraints, exit_choice
    from hopchain.relay.dirclient import AuthorityAddress
    from hopchain.relay.net import TcpNetwork

    node = ClientNode(
        ClientConfig(authorities=[AuthorityAddress.parse(a) for a in args.authority]),
        TcpNetwork(),
        random.SystemRandom(),
    )

    async def run() -> None:
        consensus = await node.fetch_consensus()
        choice = exit_choice(
            consensus,
            PathConstraints(
                port=args.port,
                exit_countries=args.exit_country,
                exclude_exit_countries=args.exclude_country,
                exclude_countries_anywhere=args.exclude_country_anywhere,
            ),
        )
        print(
            f"{len(choice.matching)} of {choice.running_exits} running exits match, "
            f"{100 * choice.bandwidth_share:.0f}% of weighted exit bandwidth:"
        )
        for d in sorted(choice.matching, key=lambda d: -d.bandwidth):
            print(
                f"  {d.nickname:<20} {d.address:<16} {d.country or '??':<3} "
                f"{d.bandwidth / 1e6:7.1f} MB/s  ports {format_ports(d.exit_ports)}  "
                f"{d.identity.hex()}"
            )
        if choice.is_small:
            print(
                "warning: so few exits (or so little of their bandwidth) that "
                "your traffic may stand out among the few who exit there"
            )

    return run


def _control_command(args: argparse.Namespace) -> Callable[[], Awaitable[None]]:
    from hopchain.client.circuitlist import circuit_list
    from hopchain.client.control import request
    from hopchain.client.doctor import report
    from hopchain.client.node import CONTROL_SOCKET

    path = args.data_dir / CONTROL_SOCKET

    async def run() -> None:
        reply = await request(path, "newnym" if args.command == "newnym" else "status")
        if not reply.get("ok"):
            raise ConfigError(f"the client refused: {reply.get('error')}")
        status = reply.get("status")
        status = status if isinstance(status, dict) else {}
        if args.command == "doctor":
            print(report(status), flush=True)
        elif args.command == "circuits":
            print(circuit_list(status), flush=True)
        else:
            print("ok: new streams will use new circuits", flush=True)

    return run


def _demo(args: argparse.Namespace) -> Callable[[], Awaitable[None]]:
    from hopchain.client.demo import DemoOptions, run_demo

    if args.relays < max(3, args.hops):
        raise ConfigError(f"--relays must be at least {max(3, args.hops)}")
    if not 1 <= args.exits <= args.relays - 1:
        raise ConfigError("--exits must be between 1 and relays - 1")
    if not 1 <= args.authorities <= 9:
        raise ConfigError("--authorities must be between 1 and 9")
    _socks_options(args)  # refuse bad client options before starting anything
    _warn_if_public_http(args)
    options = DemoOptions(
        authorities=args.authorities,
        relays=args.relays,
        exits=args.exits,
        socks_port=args.socks_port,
        hops=args.hops,
        data_dir=args.data_dir,
        log_level=args.log_level,
        client_argv=_client_argv(args),
        unsafe_logging=args.unsafe_logging,
    )
    return lambda: run_demo(options)


def _relay_status(args: argparse.Namespace) -> Callable[[], Awaitable[None]]:
    from hopchain.relay.status import command

    return command(args)


_COMMANDS = {
    "authority": _authority,
    "relay": _relay,
    "relay status": _relay_status,
    "client": _client,
    "demo": _demo,
    "exits": _exits,
    "doctor": _control_command,
    "newnym": _control_command,
    "circuits": _control_command,
}


@runtime_checkable
class GracefulCommand(Protocol):
    """A command that stops gracefully and reloads (the relay daemon)."""

    def __call__(self) -> Awaitable[None]: ...

    def stop(self) -> None:
        """Begin a graceful stop: the call then returns by itself."""

    def reload(self) -> None:
        """Re-read the configuration."""


async def _until_signalled(run: Callable[[], Awaitable[None]]) -> None:
    """Run a command; SIGTERM/SIGINT cancel it.  A ``GracefulCommand`` gets
    ``stop()`` on the first such signal (the second cancels) and
    ``reload()`` on SIGHUP."""
    import signal

    import trio

    graceful = run if isinstance(run, GracefulCommand) else None
    wanted = [signal.SIGTERM, signal.SIGINT]
    if graceful is not None:
        wanted.append(signal.SIGHUP)

    async def main_task() -> None:
        await run()
        nursery.cancel_scope.cancel()  # one-shot commands end here

    with trio.open_signal_receiver(*wanted) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(main_task)

            async def watch() -> None:
                stopping = False
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if graceful is not None and signum == signal.SIGHUP:
                        logger.info("reloading the configuration (SIGHUP)")
                        graceful.reload()
                    elif graceful is not None and not stopping:
                        stopping = True
                        logger.info(
                            "stopping gracefully (%s); send it again to stop now",
                            name,
                        )
                        graceful.stop()
                    else:
                        logger.info("stopping (%s)", name)
                        nursery.cancel_scope.cancel()
                        return

            nursery.start_soon(watch)


def _user_error(exc: BaseException) -> BaseException | None:
    """The first user-facing error inside ``exc`` (which may be a group)."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _user_error(inner)
            if found is not None:
                return found
        return None
    if isinstance(exc, HopchainError | OSError | KeyboardInterrupt):
        return exc
    return None


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and run the chosen role until it is stopped."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["relay", "status"]:  # not a relay option set: its own parser
        from hopchain.relay.status import build_parser as build_status_parser

        args = build_status_parser().parse_args(argv[2:])
    else:
        args = build_parser().parse_args(argv)
    args.argv = argv
    _configure_logging(args.log_level, unsafe=getattr(args, "unsafe_logging", False))
    import trio

    try:
        if args.command == "sim":
            from hopchain.simulations.cli import run as run_study

            run_study(args)
        else:
            trio.run(_until_signalled, _COMMANDS[args.command](args))
    except BaseException as exc:
        error = _user_error(exc)
        if error is None:
            raise
        if isinstance(error, KeyboardInterrupt):
            sys.exit(130)
        print(f"hopchain {args.command}: error: {error}", file=sys.stderr)
        sys.exit(2 if isinstance(error, ConfigError) else 1)
    finally:
        logging.shutdown()
