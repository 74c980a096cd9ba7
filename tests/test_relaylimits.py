"""Limit settings and their options (hopchain/relaylimits.py)."""

import argparse

import pytest

from hopchain.errors import ConfigError
from hopchain.relaylimits import (
    LIMIT_OPTIONS,
    MIB,
    RelayLimits,
    add_limit_options,
    format_size,
    limits_from_args,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("1048576", MIB),
        ("512K", 512 * 1024),
        ("64MiB", 64 * MIB),
        ("2 GB", 2048 * MIB),
        ("3m", 3 * MIB),
        ("100b", 100),
        ("1kb", 1024),
    ],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "-1", "1.5M", "12X", "M", "5ib", "3MM"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_limit_options(parser)
    return parser.parse_args(argv)


def test_defaults_are_generous_and_bounded() -> None:
    limits = limits_from_args(parse())
    assert limits == RelayLimits()
    assert limits.bandwidth_rate == 0  # unlimited
    assert limits.handshake_timeout == 10.0
    assert limits.max_queued_bytes == 64 * MIB


def test_options_reach_the_settings() -> None:
    limits = limits_from_args(
        parse(
            "--bandwidth-rate",
            "1M",
            "--bandwidth-burst",
            "2M",
            "--accounting-max",
            "10G",
            "--accounting-period",
            "week",
            "--max-links-per-address",
            "5",
            "--max-new-links-per-second",
            "0.5",
            "--max-creates-per-second",
            "2.5",
            "--max-creates-burst",
            "7",
            "--handshake-timeout",
            "3",
            "--max-queued-bytes",
            "8M",
        )
    )
    assert limits == RelayLimits(
        bandwidth_rate=MIB,
        bandwidth_burst=2 * MIB,
        accounting_max=10 * 1024 * MIB,
        accounting_period="week",
        links_per_address=5,
        new_links_per_second=0.5,
        creates_per_second=2.5,
        creates_burst=7,
        handshake_timeout=3.0,
        max_queued_bytes=8 * MIB,
    )
    assert limits.burst == 2 * MIB
    assert limits.new_links_burst == 5
    assert RelayLimits(links_per_address=0).new_links_burst == 100
    assert limits.advertised(10_000_000) == MIB
    assert limits.advertised(1000) == 1000
    assert RelayLimits().advertised(10_000_000) == 10_000_000
    assert RelayLimits(bandwidth_rate=100).burst == 100
    assert parse("--accounting-period", "86400").accounting_period == 86400


@pytest.mark.parametrize(
    "argv",
    [
        ("--bandwidth-rate", "2M", "--bandwidth-burst", "1M"),
        ("--handshake-timeout", "0"),
        ("--max-links-per-address", "-1"),
        ("--max-creates-per-second", "1", "--max-creates-burst", "0"),
    ],
)
def test_impossible_settings_are_config_errors(argv: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError):
        limits_from_args(parse(*argv))


def test_malformed_values_are_argparse_errors() -> None:
    for argv in (("--bandwidth-rate", "fast"), ("--accounting-period", "year")):
        with pytest.raises(SystemExit):
            parse(*argv)


def test_limit_options_names_every_option() -> None:
    parser = argparse.ArgumentParser(add_help=False)
    add_limit_options(parser)
    assert tuple(a.dest for a in parser._actions) == LIMIT_OPTIONS


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0"), (1000, "1000"), (1024, "1K"), (64 * MIB, "64M"), (1536 * MIB, "1536M")],
)
def test_format_size_reads_back(size: int, text: str) -> None:
    assert format_size(size) == text
    assert parse_size(text) == size
