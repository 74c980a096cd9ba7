"""The relay's options: one declaration serves the command line and relay.toml.

``add_relay_options`` declares every option of ``hopchain relay`` on an
argparse parser.  The config file is derived from that parser, so an option
added there is a config key at once:

* each option with a long name is a key: the name without its leading dashes,
  hyphens written as underscores (``--exit-ports`` -> ``exit_ports``);
  ``--config`` and ``--help`` are not keys;
* a flag (``store_true``) takes ``true`` or ``false``; a repeatable option
  (``append``) takes an array; anything else a string or a number, which is
  checked by running the option's own ``type`` converter on its text (and
  ``choices``), exactly as argparse would;
* a relative path (an option of type ``Path``) is relative to the directory
  of the config file;
* values from the file become parser defaults, so every flag on the command
  line overrides the file; a repeatable flag given on the command line
  replaces the file's array instead of adding to it.

Everything here is pure: the caller reads the file and passes its text.
"""

import argparse
import difflib
import ipaddress
import re
import textwrap
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from hopchain.directory import MAX_CONTACT
from hopchain.errors import ConfigError
from hopchain.relaylimits import add_limit_options

CONFIG_FILE: Final = "relay.toml"
# Options that must have a value, from the command line or the file.
REQUIRED: Final = ("data_dir", "nickname", "address", "authority")
_NOT_KEYS: Final = frozenset({"config", "help"})
_UNITS: Final = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# What ``relay init`` writes, commented out, for an option that has no
# default value: something valid to start an edit from.
_EXAMPLES: Final[dict[str, object]] = {
    "address": "203.0.113.7",
    "exit_policy": "accept *:80, accept *:443, reject *:*",
    "exit_policy_file": "exit-policy.txt",
    "exit_ports": "80,443",
    "metrics_port": 9052,
}


def port_number(text: str) -> int:
    """A TCP port, 0..65535 (0: any free port)."""
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError("port must be 0..65535")
    return port


def exit_port_ranges(text: str) -> tuple[tuple[int, int], ...]:
    """Port ranges such as ``80,443,8000-8999``."""
    ranges = []
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        try:
            lo, hi = int(low), int(high or low)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"bad port range {part!r}") from exc
        if not 1 <= lo <= hi <= 65535:
            raise argparse.ArgumentTypeError(f"bad port range {part!r}")
        ranges.append((lo, hi))
    return tuple(ranges)


def nickname(text: str) -> str:
    """1..32 letters and digits."""
    if not (text.isalnum() and text.isascii() and len(text) <= 32):
        raise argparse.ArgumentTypeError("must be 1..32 letters and digits")
    return text


def relay_address(text: str) -> str:
    """The one IP address clients reach (not 0.0.0.0 or ::)."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"must be an IP address, not {text!r}"
        ) from exc
    if ip.is_unspecified:
        raise argparse.ArgumentTypeError(
            "must be the address clients reach, not 0.0.0.0 or ::"
        )
    return str(ip)


def ipv6_address(text: str) -> str:
    """An IPv6 address clients can reach, or "" for none."""
    if text == "":
        return text
    address = relay_address(text)
    if ":" not in address:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IPv6 address")
    return address


def country_code(text: str) -> str:
    """ "" or a two-letter country code (upper-cased)."""
    if text and not (len(text) == 2 and text.isalpha() and text.isascii()):
        raise argparse.ArgumentTypeError("must be a two-letter code such as DE")
    return text.upper()


def contact(text: str) -> str:
    """Printable text, at most 256 characters, published in the descriptor."""
    if len(text) > MAX_CONTACT or not text.isprintable():
        raise argparse.ArgumentTypeError(
            f"must be printable text of at most {MAX_CONTACT} characters"
        )
    return text


def identity_key(text: str) -> bytes:
    """A relay identity key: 64 hex digits, optionally after a ``$``."""
    try:
        key = bytes.fromhex(text.removeprefix("$"))
    except ValueError:
        key = b""
    if len(key) != 32:
        raise argparse.ArgumentTypeError(f"{text!r} is not a 64-hex-digit identity key")
    return key


def split_authority(text: str) -> tuple[str, int, bytes]:
    """``HOST:PORT=HEXKEY`` as host (IPv6 brackets removed), port and key.

    Raises:
        ValueError: the text does not have that form.
    """
    try:
        where, key_hex = text.rsplit("=", 1)
        host, port = where.rsplit(":", 1)
        key, port_value = bytes.fromhex(key_hex), int(port)
    except ValueError:
        raise ValueError(f"{text!r} is not HOST:PORT=HEXKEY (64 hex digits)") from None
    host = host.strip("[]")
    if not host or len(key) != 32 or not 0 < port_value < 65536:
        raise ValueError(
            f"{text!r}: key must be 64 hex digits, port 1..65535, and a host given"
        )
    return host, port_value, key


def authority_spec(text: str) -> str:
    """``HOST:PORT=HEXKEY``, checked here and parsed by the relay shell."""
    try:
        split_authority(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def duration(text: str) -> float:
    """Seconds from ``90``, ``45s``, ``30m``, ``12h`` or ``28d``."""
    number, unit = text.strip(), "s"
    if number[-1:].lower() in _UNITS:
        number, unit = number[:-1], number[-1].lower()
    try:
        seconds = float(number) * _UNITS[unit]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration such as 30s, 10m, 12h or 28d"
        ) from exc
    if not 0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration >= 0")
    return seconds


def add_relay_options(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``hopchain relay`` and ``hopchain relay init``.

    Defaults of typed options are given as text, so argparse converts them
    like any command-line value and ``relay init`` can write them as they
    are typed.
    """
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="key directory, created 0700 (required)",
    )
    ident = parser.add_argument_group("identity")
    ident.add_argument(
        "--nickname", type=nickname, help="a short alphanumeric name (required)"
    )
    ident.add_argument(
        "--contact",
        type=contact,
        default="",
        help="how to reach the operator (an e-mail address, say); published",
    )
    ident.add_argument(
        "--family",
        type=identity_key,
        action="append",
        metavar="IDENTITY",
        help="identity key (64 hex digits) of another relay you run; clients "
        "never use two relays of one family in a circuit (repeatable)",
    )
    ident.add_argument(
        "--country",
        type=country_code,
        default="",
        help="two-letter country code to declare (default: none)",
    )
    net = parser.add_argument_group("addresses and ports")
    net.add_argument(
        "--address",
        type=relay_address,
        help="the IPv4 or IPv6 address to listen on and publish (required)",
    )
    net.add_argument(
        "--ipv6-address",
        type=ipv6_address,
        default="",
        metavar="ADDRESS",
        help="an IPv6 address to listen on and publish too, with an IPv4 --address",
    )
    net.add_argument(
        "--port",
        type=port_number,
        default="9001",
        help="relay port, on every address (default 9001; 0: any free port)",
    )
    net.add_argument(
        "--authority",
        type=authority_spec,
        action="append",
        metavar="HOST:PORT=KEY",
        help="a directory authority to publish to (repeatable; required)",
    )
    net.add_argument(
        "--bandwidth",
        type=int,
        default="10000000",
        help="declared bytes/s: authorities list the relay's observed "
        "throughput, capped by this (default 10000000; lowered to "
        "--bandwidth-rate when that is smaller)",
    )
    net.add_argument(
        "--publish-interval",
        type=duration,
        default="600s",
        metavar="DURATION",
        help="time between descriptor uploads (default 600s)",
    )
    exits = parser.add_argument_group("exit")
    exits.add_argument(
        "--exit", action="store_true", help="be an exit relay (default: middle only)"
    )
    policy = exits.add_mutually_exclusive_group()
    policy.add_argument(
        "--exit-policy",
        metavar="RULES",
        help="exit policy, Tor's language: 'accept *:80, accept *:443, reject "
        "*:*' (rules 'accept|reject ADDR[/MASK]:PORT[-PORT]', first match wins, "
        "reject when none matches; default: Tor's reduced exit policy, or "
        "'accept *:*' with --test-network). Private, loopback, link-local, "
        "multicast and own addresses are refused before it, except in a test "
        "network; reloaded on SIGHUP",
    )
    policy.add_argument(
        "--exit-policy-file",
        type=Path,
        metavar="FILE",
        help="read the exit policy from FILE (one rule or more per line, '#' "
        "comments); reloaded on SIGHUP",
    )
    policy.add_argument(
        "--exit-ports",
        type=exit_port_ranges,
        metavar="PORTS",
        help="shorthand for --exit-policy 'accept *:PORTS, reject *:*', e.g. "
        "80,443,8000-8999; clients use an exit only if it accepts two of 80, "
        "443, 6667; reloaded on SIGHUP",
    )
    exits.add_argument(
        "--test-network",
        action="store_true",
        help="declare a test network: allow private and loopback destinations",
    )
    keys = parser.add_argument_group("keys and lifecycle")
    keys.add_argument(
        "--onion-key-lifetime",
        type=duration,
        default="28d",
        metavar="DURATION",
        help="replace the onion key this often (default 28d, as Tor)",
    )
    keys.add_argument(
        "--onion-key-grace",
        type=duration,
        default="7d",
        metavar="DURATION",
        help="keep answering handshakes made with the previous onion key this "
        "long after a rotation (default 7d; less than the lifetime)",
    )
    keys.add_argument(
        "--shutdown-grace",
        type=duration,
        default="30s",
        metavar="DURATION",
        help="on SIGTERM or SIGINT, let circuits finish for this long before "
        "closing them (default 30s; a second signal stops at once)",
    )
    add_limit_options(parser)
    _add_metrics_options(parser)


def _add_metrics_options(parser: argparse.ArgumentParser) -> None:
    """The relay's Prometheus endpoint (hopchain.relay.metrics)."""
    metrics = parser.add_argument_group("metrics")
    metrics.add_argument(
        "--metrics-port",
        type=port_number,
        metavar="PORT",
        help="serve Prometheus metrics at http://ADDRESS:PORT/metrics, which "
        "'hopchain relay status' reads (default: off; 9052 is what status "
        "tries first; 0: any port)",
    )
    metrics.add_argument(
        "--metrics-address",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="metrics listen address (default 127.0.0.1; anything but loopback "
        "needs --metrics-allow-public)",
    )
    metrics.add_argument(
        "--metrics-allow-public",
        action="store_true",
        help="allow a non-loopback --metrics-address: metrics show when and "
        "how much the relay carries, so keep them behind a firewall",
    )


@dataclass(frozen=True, slots=True)
class ConfigValues:
    """A checked config file: parser defaults and arrays for repeatables."""

    defaults: dict[str, Any]
    repeated: dict[str, list[Any]]


def config_keys(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every config key of ``parser``, with the action that defines it."""
    keys = {}
    for action in parser._actions:
        names = [o for o in action.option_strings if o.startswith("--")]
        if not names or isinstance(action, argparse._SubParsersAction):
            continue
        key = names[0][2:].replace("-", "_")
        if key not in _NOT_KEYS:
            keys[key] = action
    return keys


class _BadValueError(Exception):
    """A key's value is wrong; the message says why (without the key)."""


def _is_flag(action: argparse.Action) -> bool:
    return isinstance(action, argparse._StoreConstAction)


def _is_repeatable(action: argparse.Action) -> bool:
    return isinstance(action, argparse._AppendAction) or action.nargs in ("+", "*")


def _convert_one(action: argparse.Action, value: object, base_dir: Path) -> Any:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _BadValueError("must be a string or a number")
    convert: Callable[[str], Any] = action.type if callable(action.type) else str
    try:
        result = convert(str(value))
    except argparse.ArgumentTypeError as exc:
        raise _BadValueError(str(exc)) from exc
    except (TypeError, ValueError) as exc:
        raise _BadValueError(f"invalid value {value!r}") from exc
    if isinstance(result, Path) and not result.is_absolute():
        result = base_dir / result
    if action.choices is not None and result not in action.choices:
        choices = ", ".join(repr(c) for c in action.choices)
        raise _BadValueError(f"{value!r} is not one of {choices}")
    return result


def _convert(action: argparse.Action, value: object, base_dir: Path) -> Any:
    if _is_flag(action):
        if not isinstance(value, bool):
            raise _BadValueError("must be true or false")
        return action.const if value else action.default
    if _is_repeatable(action):
        if not isinstance(value, list):
            raise _BadValueError('must be an array, e.g. ["..."]')
        return [_convert_one(action, item, base_dir) for item in value]
    if isinstance(value, list | dict):
        raise _BadValueError("must be a single value")
    return _convert_one(action, value, base_dir)


def _line_of(text: str, key: str) -> int | None:
    name = rf"""(["']?){re.escape(key)}\1"""
    assignment = re.compile(rf"^\s*{name}\s*[=.]")
    table = re.compile(rf"^\s*\[+\s*{name}\s*[\].]")
    for number, line in enumerate(text.splitlines(), 1):
        if assignment.match(line) or table.match(line):
            return number
    return None


def _error(source: str, text: str, key: str, message: str) -> ConfigError:
    line = _line_of(text, key)
    where = f"{source} line {line}" if line is not None else source
    return ConfigError(f"{where}: {key}: {message}")


def parse_config(
    text: str, parser: argparse.ArgumentParser, *, source: str, base_dir: Path
) -> ConfigValues:
    """Check a whole config file against ``parser``'s options.

    Raises:
        ConfigError: naming the file, the line and the key, for the first
            syntax error, unknown key or bad value.
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    keys = config_keys(parser)
    defaults: dict[str, Any] = {}
    repeated: dict[str, list[Any]] = {}
    _check_exclusive(parser, document, text, source)
    for key, value in document.items():
        action = keys.get(key)
        if action is None:
            close = difflib.get_close_matches(key.replace("-", "_"), keys, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            if isinstance(value, dict):
                hint += "; tables are not used, every key is at the top level"
            raise _error(source, text, key, f"unknown key{hint}")
        try:
            converted = _convert(action, value, base_dir)
        except _BadValueError as exc:
            raise _error(source, text, key, str(exc)) from None
        if _is_repeatable(action):
            repeated[action.dest] = converted
        else:
            defaults[action.dest] = converted
    return ConfigValues(defaults, repeated)


def _exclusive_groups(parser: argparse.ArgumentParser) -> list[list[str]]:
    """The config keys of each mutually exclusive group (``exit_policy``,
    ``exit_policy_file``, ``exit_ports``)."""
    key_of = {action: key for key, action in config_keys(parser).items()}
    return [
        [key_of[a] for a in group._group_actions if a in key_of]
        for group in parser._mutually_exclusive_groups
    ]


def _check_exclusive(
    parser: argparse.ArgumentParser, document: dict[str, Any], text: str, source: str
) -> None:
    for group in _exclusive_groups(parser):
        present = [key for key in group if key in document]
        if len(present) > 1:
            raise _error(
                source,
                text,
                present[1],
                f"not together with {present[0]}; set one of " + ", ".join(group),
            )


def apply_config(
    parse: Callable[[], argparse.Namespace],
    parser: argparse.ArgumentParser,
    values: ConfigValues,
) -> argparse.Namespace:
    """Parse the command line with the file's values as defaults.

    ``parse`` parses the whole command line with the parser tree that holds
    ``parser`` (the relay's), whose defaults are set first.  An option of a
    mutually exclusive group given on the command line replaces the file's
    value for the whole group (``--exit-ports`` over ``exit_policy``).
    """
    keys = config_keys(parser)
    actions = {a.dest: a for a in keys.values()}
    exclusive = [[keys[k].dest for k in group] for group in _exclusive_groups(parser)]
    grouped = {dest for group in exclusive for dest in group}
    parser.set_defaults(
        **{d: v for d, v in values.defaults.items() if d not in grouped}
    )
    args = parse()
    for dest, items in values.repeated.items():
        if getattr(args, dest) is actions[dest].default:  # not on the command line
            setattr(args, dest, items)
    for group in exclusive:
        if all(getattr(args, d) == actions[d].default for d in group):
            for dest in group:
                if dest in values.defaults:
                    setattr(args, dest, values.defaults[dest])
    return args


def check_required(args: argparse.Namespace) -> None:
    """Every option in ``REQUIRED`` has a value.

    Raises:
        ConfigError: naming the first missing one.
    """
    for key in REQUIRED:
        if not getattr(args, key, None):
            flag = "--" + key.replace("_", "-")
            raise ConfigError(
                f"{key} is required: give {flag} or set {key} in the config file"
            )


def _help_text(action: argparse.Action) -> str:
    text = action.help or ""
    if "%(" in text:
        text = text % {"default": action.default, "dest": action.dest}
    return text


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value)
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in escaped)
    return f'"{escaped}"'


def _written(action: argparse.Action, raw: object) -> object:
    """How a value typed as ``raw`` is written: a number typed as a number
    for a numeric option stays a TOML number, anything else is kept as text
    (``28d``, ``80,443``)."""
    if not isinstance(raw, str) or not callable(action.type):
        return str(raw) if isinstance(raw, Path) else raw
    try:
        converted = action.type(raw)
        number = float(raw) if "." in raw or "e" in raw.lower() else int(raw)
    except (argparse.ArgumentTypeError, TypeError, ValueError):
        return raw
    if isinstance(converted, int | float) and not isinstance(converted, bool):
        return number
    return raw


def render_config(
    parser: argparse.ArgumentParser, given: dict[str, object], *, title: str
) -> str:
    """The commented config file ``relay init`` writes.

    Every key is present, with its help text and default; a key in ``given``
    (dest -> the value as typed, a list for repeatables, True for flags) is
    set, every other key is commented out at its default (or, for a few
    keys without one, at an example from ``_EXAMPLES``).
    """
    lines = [f"# {line}" for line in title.splitlines()]
    lines.append(
        "# Every option of 'hopchain relay --help' is a key here (hyphens as "
        "underscores);\n# a command-line flag overrides the file.  After an "
        "edit, SIGHUP reloads what\n# can change while running (see "
        "docs/operators.md)."
    )
    for key, action in config_keys(parser).items():
        lines.append("")
        help_text = _help_text(action)
        lines.extend(f"# {row}" for row in textwrap.wrap(f"{key}: {help_text}", 76))
        if action.dest in given:
            value = given[action.dest]
            if isinstance(value, list):
                value = [_written(action, v) for v in value]
            else:
                value = _written(action, value)
            lines.append(f"{key} = {_toml_value(value)}")
            continue
        if _is_flag(action):
            default: object = False
        elif _is_repeatable(action):
            default = []
        elif action.default is None:
            default = _EXAMPLES.get(key, "")
        else:
            default = _written(action, action.default)
        lines.append(f"# {key} = {_toml_value(default)}")
    return "\n".join(lines) + "\n"


def record_given(
    parser: argparse.ArgumentParser, parse: Callable[[], argparse.Namespace]
) -> dict[str, object]:
    """The relay options given on the command line, as typed.

    ``parse`` parses the command line with the parser tree holding
    ``parser``.  For that one parse, every option of ``parser`` has no
    default and a converter that keeps the text it saw, so ``relay init``
    writes what the operator typed (``28d``, not 2419200.0), including a
    value that happens to equal the default.
    """
    given: dict[str, object] = {}
    saved = [(a, a.type, a.default) for a in config_keys(parser).values()]

    def recorder(
        action: argparse.Action, convert: Callable[[str], Any]
    ) -> Callable[[str], Any]:
        def record(text: str) -> Any:
            if _is_repeatable(action):
                items = given.setdefault(action.dest, [])
                assert isinstance(items, list)
                items.append(text)
            else:
                given[action.dest] = text
            return convert(text)

        return record

    for action, convert, _ in saved:
        action.default = argparse.SUPPRESS
        if not _is_flag(action):
            action.type = recorder(action, convert if callable(convert) else str)
    try:
        args = parse()
    finally:
        for action, convert, default in saved:
            action.type, action.default = convert, default
    for action, _, _ in saved:
        # (A parent parser may have set the flag's dest to its default.)
        if _is_flag(action) and getattr(args, action.dest, None) == action.const:
            given[action.dest] = True
    return given


def subparser(
    parser: argparse.ArgumentParser, path: Sequence[str]
) -> argparse.ArgumentParser:
    """The subcommand parser reached by the names in ``path``."""
    for name in path:
        for action in parser._actions:
            if (
                isinstance(action, argparse._SubParsersAction)
                and name in action.choices
            ):
                parser = action.choices[name]
                break
        else:
            raise KeyError(name)
    return parser
