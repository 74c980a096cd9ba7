"""The relay's config file, derived from its argparse options."""

import argparse
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hopchain import cli
from hopchain.errors import ConfigError
from hopchain.relayconfig import (
    apply_config,
    check_required,
    config_keys,
    duration,
    parse_config,
    record_given,
    render_config,
    split_authority,
    subparser,
)

KEY = "ab" * 32
AUTHORITY = f"127.0.0.1:7000={KEY}"


def relay_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    parser = cli.build_parser()
    return parser, subparser(parser, ["relay"])


def load(
    text: str, argv: list[str] | None = None, base_dir: Path = Path("/etc/hopchain")
) -> argparse.Namespace:
    parser, relay = relay_parser()
    values = parse_config(text, relay, source="relay.toml", base_dir=base_dir)
    return apply_config(
        lambda: parser.parse_args(["relay", *(argv or [])]), relay, values
    )


GOOD = f"""
data_dir = "/var/lib/hopchain"
nickname = "relay1"
address = "192.0.2.7"
ipv6_address = "2001:db8::7"
authority = ["{AUTHORITY}"]
exit = true
exit_ports = "80,443"
port = 443
shutdown_grace = "1m"
"""


def test_a_config_file_sets_every_kind_of_option() -> None:
    args = load(GOOD)
    check_required(args)
    assert args.data_dir == Path("/var/lib/hopchain")
    assert args.nickname == "relay1"
    assert args.ipv6_address == "2001:db8::7"
    assert args.authority == [AUTHORITY]
    assert args.exit is True
    assert args.exit_ports == ((80, 80), (443, 443))
    assert args.port == 443
    assert args.shutdown_grace == 60.0
    assert args.onion_key_lifetime == 28 * 86400.0  # untouched default


def test_flags_override_the_file_and_repeatables_replace_it() -> None:
    other = f"127.0.0.1:7001={KEY}"
    args = load(GOOD, ["--port", "9001", "--authority", other, "--nickname", "x2"])
    assert args.port == 9001
    assert args.nickname == "x2"
    assert args.authority == [other]
    assert load(GOOD).authority == [AUTHORITY]


def test_relative_paths_are_relative_to_the_config_file() -> None:
    args = load('data_dir = "keys"', base_dir=Path("/srv/relay"))
    assert args.data_dir == Path("/srv/relay/keys")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('port = "http"', "relay.toml line 3: port: invalid value 'http'"),
        ("port = 70000", "relay.toml line 3: port: port must be 0..65535"),
        ('exit = "yes"', "relay.toml line 3: exit: must be true or false"),
        ('nickname = "no way"', "line 3: nickname: must be 1..32 letters"),
        ('authority = "x"', "line 3: authority: must be an array"),
        ("authority = [1]", "line 3: authority: '1' is not HOST:PORT=HEXKEY"),
        ('address = "0.0.0.0"', "line 3: address: must be the address clients"),
        ('log_level = "loud"', "line 3: log_level: 'loud' is not one of"),
        (
            'exit_port = "80"',
            "line 3: exit_port: unknown key (did you mean 'exit_ports'?)",
        ),
        ('exit-ports = "80"', "line 3: exit-ports: unknown key (did you mean"),
        ("[relay]", "line 3: relay: unknown key"),
        ("port = ", "relay.toml: Invalid value (at line 3, column 8)"),
        ('shutdown_grace = "soon"', "line 3: shutdown_grace: 'soon' is not a duration"),
    ],
)
def test_a_broken_config_names_the_line_and_the_key(line: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(f'# a relay\nbandwidth = 100\n{line}\ncountry = "DE"\n')
    assert message in str(info.value)


def test_missing_required_options_are_named() -> None:
    with pytest.raises(ConfigError, match="address is required: give --address"):
        check_required(load('nickname = "r1"\ndata_dir = "/d"'))


def test_options_added_to_the_parser_become_keys() -> None:
    """The config file follows the parser: nothing to register by hand."""
    parser, relay = relay_parser()
    relay.add_argument("--rate-limit", type=int, default=0, help="bytes/s")
    relay.add_argument("--reject", action="append", help="a rule")
    assert {"rate_limit", "reject", "nickname", "exit_ports"} <= set(config_keys(relay))
    assert "config" not in config_keys(relay)
    values = parse_config(
        'rate_limit = 500\nreject = ["a", "b"]', relay, source="f", base_dir=Path()
    )
    args = apply_config(lambda: parser.parse_args(["relay"]), relay, values)
    assert (args.rate_limit, args.reject) == (500, ["a", "b"])
    with pytest.raises(ConfigError, match="line 1: rate_limit: invalid value"):
        parse_config('rate_limit = "fast"', relay, source="f", base_dir=Path())


def test_init_writes_every_key_and_the_file_reads_back() -> None:
    parser = cli.build_parser()
    init = subparser(parser, ["relay", "init"])
    argv = ["relay", "init", "--data-dir", "/d", "--nickname", "r1", "--exit"]
    argv += ["--onion-key-lifetime", "2d", "--port", "9002", "--authority", AUTHORITY]
    argv += ["--exit-ports", "1-65535"]  # the default, typed: written as given
    given_values = record_given(init, lambda: parser.parse_args(argv))
    text = render_config(init, given_values, title="test")
    for key in config_keys(init):
        assert f"\n{key} = " in text or f"\n# {key} = " in text, key
    assert 'onion_key_lifetime = "2d"' in text
    assert "port = 9002" in text
    assert '\nexit_ports = "1-65535"' in text
    assert '# shutdown_grace = "30s"' in text
    args = load(text)
    assert (args.nickname, args.exit, args.port) == ("r1", True, 9002)
    assert args.onion_key_lifetime == 2 * 86400.0
    assert args.authority == [AUTHORITY]


@settings(max_examples=30, deadline=None)
@given(
    nickname=st.text("abcXYZ019", min_size=1, max_size=32),
    port=st.integers(0, 65535),
    contact=st.text(st.characters(blacklist_categories=["C", "Z"]), max_size=40),
    exit=st.booleans(),
)
def test_rendered_values_parse_back_to_the_same_options(
    nickname: str, port: int, contact: str, exit: bool
) -> None:
    parser = cli.build_parser()
    init = subparser(parser, ["relay", "init"])
    argv = ["relay", "init", "--nickname", nickname, "--port", str(port)]
    argv += [f"--contact={contact}"] + (["--exit"] if exit else [])
    given_values = record_given(init, lambda: parser.parse_args(argv))
    wanted = cli.build_parser().parse_args(argv)
    args = load(render_config(init, given_values, title="t"))
    assert (args.nickname, args.port, args.contact, args.exit) == (
        wanted.nickname,
        wanted.port,
        wanted.contact,
        wanted.exit,
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), ("45s", 45.0), ("1.5m", 90.0), ("28d", 2419200.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["", "d", "-1s", "1w", "inf"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        duration(text)


def test_init_writes_every_default_as_the_file_reads_it() -> None:
    """Limit sizes are written as sizes (``64M``), and every commented-out
    line, uncommented, gives the option's default (or a valid example)."""
    parser = cli.build_parser()
    init = subparser(parser, ["relay", "init"])
    text = render_config(init, {}, title="t")
    assert '# max_queued_bytes = "64M"' in text
    assert "# bandwidth_rate = 0" in text
    assert '# accounting_period = "month"' in text
    assert "# max_creates_per_second = 20" in text
    assert "# metrics_port = 9052" in text
    defaults = load("")
    keys = config_keys(subparser(cli.build_parser(), ["relay"]))
    for line in text.splitlines():
        key, sep, value = line.removeprefix("# ").partition(" = ")
        if not sep or value in ('""', "[]"):
            continue  # no default, no example
        args = load(f"{key} = {value}")
        examples = ("address", "metrics_port", "exit_policy", "exit_policy_file")
        if key not in (*examples, "exit_ports"):
            assert getattr(args, keys[key].dest) == getattr(defaults, keys[key].dest)
    assert load('exit_ports = "80,443"').exit_ports == ((80, 80), (443, 443))


@pytest.mark.parametrize("value", ['"64M"', '"64 MiB"', "67108864"])
def test_sizes_are_strings_or_integers(value: str) -> None:
    args = load(f"max_queued_bytes = {value}\nbandwidth_rate = {value}")
    assert args.max_queued_bytes == args.bandwidth_rate == 64 * 1024 * 1024


def test_one_exit_policy_option_in_the_file_and_the_command_line_wins() -> None:
    with pytest.raises(ConfigError, match="line 3: exit_ports: not together with"):
        load('exit = true\nexit_policy = "accept *:80"\nexit_ports = "80"\n')
    args = load('exit_policy = "reject *:*"', ["--exit-ports", "443"])
    assert (args.exit_policy, args.exit_ports) == (None, ((443, 443),))
    args = load('exit_policy = "reject *:*"')
    assert (args.exit_policy, args.exit_ports) == ("reject *:*", None)


def test_authority_specs_split_and_an_empty_host_is_refused() -> None:
    assert split_authority(f"[::1]:7000={KEY}") == ("::1", 7000, bytes.fromhex(KEY))
    with pytest.raises(ValueError, match="a host given"):
        split_authority(f"[]:7000={KEY}")
    with pytest.raises(ValueError, match="is not HOST:PORT=HEXKEY"):
        split_authority(KEY)
