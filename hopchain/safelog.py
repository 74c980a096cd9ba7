"""Safe, structured log lines: ``event key=value ...``, addresses scrubbed.

Relays and clients never log who a user is or where the user goes unless
the operator asks (Tor's SafeLogging).  Code wraps such values in
``Sensitive`` (``sensitive(host)``); their text is ``[scrubbed]``.  The
``hopchain`` command's ``--unsafe-logging`` installs ``RevealSensitive`` on
its log handler, which puts the real values back into each record before it
is formatted.  Everything else about a log line stays the same, so scrubbing
cannot be switched off by accident in one place and forgotten in another.

``log_event(logger, level, "exit_refused", reason="EXIT_POLICY",
host=sensitive(host))`` logs ``exit_refused reason=EXIT_POLICY
host=[scrubbed]``; values with spaces, quotes or ``=`` are quoted.
"""

import logging
from dataclasses import dataclass
from typing import Final

__all__ = ["SCRUBBED", "RevealSensitive", "Sensitive", "log_event", "sensitive"]

SCRUBBED: Final = "[scrubbed]"


@dataclass(frozen=True, slots=True)
class Sensitive:
    """A value that identifies a user or a destination; it prints as
    ``[scrubbed]`` unless ``RevealSensitive`` unwraps it."""

    value: object

    def __str__(self) -> str:
        return SCRUBBED

    def __repr__(self) -> str:
        return SCRUBBED

    def __format__(self, spec: str) -> str:
        return format(SCRUBBED, spec)


def sensitive(value: object) -> Sensitive:
    """Wrap ``value`` (an address, host name, port...) for logging."""
    return value if isinstance(value, Sensitive) else Sensitive(value)


def _render(value: object) -> object:
    """A field value as it appears after ``key=``: quoted when it would
    otherwise be ambiguous.  Sensitive values stay wrapped."""
    if isinstance(value, Sensitive):
        return value
    text = str(value)
    if text and not any(c.isspace() or c in '"=' for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def log_event(logger: logging.Logger, level: int, event: str, **fields: object) -> None:
    """Log ``event key=value ...`` at ``level``; wrap what identifies a user
    or a destination in ``sensitive()``."""
    if not logger.isEnabledFor(level):
        return
    message = event + "".join(f" {key}=%s" for key in fields)
    logger.log(level, message, *(_render(v) for v in fields.values()), stacklevel=2)


class RevealSensitive(logging.Filter):
    """A handler filter for ``--unsafe-logging``: shows sensitive values.

    It rewrites the record's arguments, so handlers that see the record
    after this one show the values too: install it on every handler or on
    the only one (the ``hopchain`` command has one, on stderr).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Unwrap every ``Sensitive`` argument of the record (never drops it)."""
        args = record.args
        if isinstance(args, tuple):
            record.args = tuple(_reveal(a) for a in args)
        elif isinstance(args, dict):
            record.args = {k: _reveal(v) for k, v in args.items()}
        return True


def _reveal(value: object) -> object:
    return _render(value.value) if isinstance(value, Sensitive) else value
