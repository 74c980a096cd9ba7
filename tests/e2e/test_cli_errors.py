"""User mistakes on the command line get one clear line, never a traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

KEY = "ab" * 32


def hopchain(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hopchain", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            [
                "relay",
                "--nickname",
                "r",
                "--address",
                "0.0.0.0",
                "--authority",
                f"127.0.0.1:7000={KEY}",
            ],
            "argument --address: must be the address clients reach",
        ),
        (
            [
                "relay",
                "--nickname",
                "r",
                "--address",
                "relay.example",
                "--authority",
                f"127.0.0.1:7000={KEY}",
            ],
            "argument --address: must be an IP address",
        ),
        (
            [
                "relay",
                "--nickname",
                "r!",
                "--address",
                "127.0.0.2",
                "--authority",
                f"127.0.0.1:7000={KEY}",
            ],
            "argument --nickname: must be",
        ),
        (
            [
                "relay",
                "--nickname",
                "r",
                "--address",
                "127.0.0.2",
                "--authority",
                f"127.0.0.1:7000={KEY}",
                "--bandwidth-rate",
                "2M",
                "--bandwidth-burst",
                "1M",
            ],
            "--bandwidth-burst must be at least --bandwidth-rate",
        ),
        (["client", "--authority", "127.0.0.1:7000"], "is not HOST:PORT=HEXKEY"),
        (["client", "--authority", "127.0.0.1:7000=abcd"], "key must be 64 hex digits"),
        (["demo", "--relays", "2"], "--relays must be at least 3"),
        (["demo", "--exits", "5"], "--exits must be between 1 and relays - 1"),
        (["demo", "--authorities", "0"], "--authorities must be between 1 and 9"),
        (
            ["authority", "--vote-interval", "0"],
            "--vote-interval must be at least 1 second",
        ),
        (["authority", "--peer", "127.0.0.1:7001"], "is not HOST:PORT=HEXKEY"),
    ],
)
def test_bad_arguments_give_one_clear_error(
    args: list[str], message: str, tmp_path: Path
) -> None:
    if args[0] in ("relay", "authority"):
        args = [*args, "--data-dir", str(tmp_path / "keys")]
    result = hopchain(*args)
    assert not (tmp_path / "keys").exists()  # refused before any key is made
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_world_readable_key_file_is_refused(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    (keys / "identity.key").write_bytes(os.urandom(32))
    (keys / "identity.key").chmod(0o644)
    result = hopchain(
        "relay",
        "--nickname",
        "r",
        "--address",
        "127.0.0.2",
        "--authority",
        f"127.0.0.1:7000={KEY}",
        "--data-dir",
        str(keys),
    )
    assert result.returncode == 2
    assert "readable by group or others" in result.stderr
    assert "chmod 600" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_shared_data_directory_is_refused(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o755)
    keys.chmod(0o755)
    result = hopchain("authority", "--data-dir", str(keys), "--port", "0")
    assert result.returncode == 2
    assert "chmod 700" in result.stderr


def test_help_explains_every_subcommand() -> None:
    for command in ("demo", "authority", "relay", "client"):
        result = hopchain(command, "--help")
        assert result.returncode == 0
        assert "usage: hopchain " + command in result.stdout


def test_doctor_without_a_running_client_says_so(tmp_path: Path) -> None:
    result = hopchain("doctor", "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert "no hopchain client answers" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("host", "warned"), [("0.0.0.0", True), ("127.0.0.1", False), ("::1", False)]
)
def test_a_public_http_proxy_address_is_logged_as_a_warning(
    host: str, warned: bool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from hopchain import cli

    args = cli.build_parser().parse_args(
        [
            "client",
            "--authority",
            f"127.0.0.1:7000={KEY}",
            "--data-dir",
            str(tmp_path),
            "--http-host",
            host,
        ]
    )
    with caplog.at_level("WARNING", logger="hopchain"):
        cli._client(args)  # builds the node; nothing is started
    assert ("not on loopback" in caplog.text) is warned


def test_client_passes_http_options_from_the_command_line(tmp_path: Path) -> None:
    from hopchain import cli

    argv = ["--authority", f"127.0.0.1:7000={KEY}", "--data-dir", str(tmp_path)]
    args = cli.build_parser().parse_args(
        ["client", *argv, "--http-port", "0", "--http-normalise-headers"]
    )
    assert args.http_port == 0
    assert cli._http_options(args).scrub.normalise_identity
    assert "--http-normalise-headers" in cli._client_argv(args)
    off = cli.build_parser().parse_args(["demo", "--no-http"])
    assert "--no-http" in cli._client_argv(off)
    assert cli.build_parser().parse_args(["demo"]).http_port == 8118


def test_a_malformed_geoip_file_names_its_line(tmp_path: Path) -> None:
    geoip = tmp_path / "geoip"
    geoip.write_text("1,2,US\n5,3,DE\n")
    result = hopchain(
        "authority",
        "--data-dir",
        str(tmp_path / "a"),
        "--port",
        "0",
        "--geoip",
        str(geoip),
    )
    assert result.returncode == 2
    assert "line 2: range empty, out of order or overlaps" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["authority", "client"])
def test_a_file_that_is_not_an_mmdb_is_one_line(tmp_path: Path, command: str) -> None:
    mmdb = tmp_path / "countries.mmdb"
    mmdb.write_bytes(b"GIF89a not a database")
    args = ["--data-dir", str(tmp_path / "d"), "--geoip-mmdb", str(mmdb)]
    if command == "authority":
        args += ["--port", "0"]
    else:
        args += ["--authority", f"127.0.0.1:1={KEY}", "--socks-port", "0"]
    result = hopchain(command, *args)
    assert result.returncode == 2
    assert f"{mmdb}: not a MaxMind DB file" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_demo_hands_geoip_files_to_its_client(tmp_path: Path) -> None:
    from hopchain import cli

    mmdb = tmp_path / "countries.mmdb"
    args = cli.build_parser().parse_args(["demo", "--geoip-mmdb", str(mmdb)])
    argv = cli._client_argv(args)
    assert argv[argv.index("--geoip-mmdb") + 1] == str(mmdb.resolve())


def _init_relay(tmp_path: Path) -> Path:
    result = hopchain(
        "relay",
        "init",
        "--data-dir",
        str(tmp_path / "relay"),
        "--nickname",
        "r1",
        "--address",
        "127.0.0.2",
        "--authority",
        f"127.0.0.1:7000={KEY}",
    )
    assert result.returncode == 0, result.stderr
    assert "hopchain relay --config" in result.stdout
    return tmp_path / "relay" / "relay.toml"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("\n# port = 9001", "\nport = 99999"), "line {}: port: port must be 0..65535"),
        (
            ("\n# exit_ports = ", "\nexit_ports = 0\n# "),
            "line {}: exit_ports: bad port",
        ),
        (("\nnickname", "\nnick_name"), "line {}: nick_name: unknown key"),
        (("\n# exit = false", "\nexit = 1"), "line {}: exit: must be true or false"),
        (("\nnickname = ", "\nnickname == "), "(at line {}, column"),
    ],
)
def test_a_broken_config_file_names_the_line_and_the_key(
    tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    config = _init_relay(tmp_path)
    text = config.read_text()
    before, after = edit
    assert before in text
    text = text.replace(before, after, 1)
    config.write_text(text)
    result = hopchain("relay", "--config", str(config))
    assert "Traceback" not in result.stderr
    line = text[: text.index(after)].count("\n") + 2
    assert result.returncode == 2
    assert message.format(line) in result.stderr
    assert str(config) in result.stderr
    assert "listening" not in result.stderr  # refused before any socket


def test_a_world_readable_key_file_stops_a_configured_relay(tmp_path: Path) -> None:
    config = _init_relay(tmp_path)
    for name in ("identity.key", "onion.key"):
        key_file = config.parent / name
        key_file.chmod(0o644)
        result = hopchain("relay", "--config", str(config))
        assert result.returncode == 2
        assert f"key file {key_file} is readable by group or others" in result.stderr
        assert f"chmod 600 {key_file}" in result.stderr
        assert "listening" not in result.stderr
        key_file.chmod(0o600)


def test_relay_init_keeps_an_existing_config(tmp_path: Path) -> None:
    config = _init_relay(tmp_path)
    config.write_text("# mine\n")
    result = hopchain("relay", "init", "--data-dir", str(config.parent))
    assert result.returncode == 2
    assert "exists already" in result.stderr
    assert config.read_text() == "# mine\n"
    modes = {p.name: p.stat().st_mode & 0o777 for p in config.parent.iterdir()}
    assert modes["identity.key"] == modes["onion.key"] == 0o600
    assert config.parent.stat().st_mode & 0o777 == 0o700
