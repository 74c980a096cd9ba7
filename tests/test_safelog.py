"""Unit tests for hopchain.safelog: scrubbed values and event lines."""

import logging

import pytest

from hopchain.safelog import SCRUBBED, RevealSensitive, log_event, sensitive

logger = logging.getLogger("hopchain.test.safelog")


def test_sensitive_values_print_scrubbed() -> None:
    value = sensitive("203.0.113.9")
    assert str(value) == repr(value) == f"{value}" == SCRUBBED
    assert f"{value:>12}" == "  [scrubbed]"
    assert "%s:%d" % (value, 80) == f"{SCRUBBED}:80"  # noqa: UP031
    assert sensitive(value) is value


def test_events_are_key_value_lines(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=logger.name)
    log_event(
        logger,
        logging.INFO,
        "exit_stream_refused",
        reason="EXIT_POLICY",
        why="exit policy refuses the port",
        host=sensitive("example.com"),
        port=25,
        empty="",
        quote='say "hi"',
    )
    assert caplog.messages == [
        'exit_stream_refused reason=EXIT_POLICY why="exit policy refuses the port" '
        'host=[scrubbed] port=25 empty="" quote="say \\"hi\\""'
    ]
    assert caplog.records[0].funcName == "test_events_are_key_value_lines"


def test_disabled_levels_log_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=logger.name)
    log_event(logger, logging.DEBUG, "quiet", host=sensitive("example.com"))
    assert caplog.records == []


def test_reveal_filter_shows_the_values(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=logger.name)
    caplog.handler.addFilter(RevealSensitive())
    log_event(logger, logging.INFO, "socks_connect", app=sensitive("127.0.0.1:5555"))
    log_event(logger, logging.INFO, "x", host=sensitive("a name"))
    logger.info("plain %s", sensitive("192.0.2.1"))
    logger.info("mapping %(host)s", {"host": sensitive("192.0.2.2")})
    assert caplog.messages == [
        "socks_connect app=127.0.0.1:5555",
        'x host="a name"',
        "plain 192.0.2.1",
        "mapping 192.0.2.2",
    ]
