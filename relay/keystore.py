"""Key files on disk: created 0600 in a 0700 directory, looser modes refused."""

import os
import secrets
import stat
from pathlib import Path

from hopchain.errors import ConfigError


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (mode 0700) or check an existing one is not shared.

    Raises:
        ConfigError: the directory is group- or world-accessible, or not a
            directory.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = path.stat().st_mode
    if not stat.S_ISDIR(mode):
        raise ConfigError(f"{path} is not a directory")
    if mode & 0o077:
        raise ConfigError(
            f"{path} is accessible by group or others (mode {mode & 0o777:o}); "
            f"run: chmod 700 {path}"
        )


def load_or_create_secret(path: Path) -> bytes:
    """A 32-byte secret from ``path``, created with mode 0600 if missing.

    Raises:
        ConfigError: the file is group- or world-readable, or malformed.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = path.stat().st_mode
        if mode & 0o077:
            raise ConfigError(
                f"key file {path} is readable by group or others "
                f"(mode {mode & 0o777:o}); run: chmod 600 {path}"
            ) from None
        data = path.read_bytes()
        if len(data) != 32:
            raise ConfigError(
                f"key file {path} must hold 32 bytes, not {len(data)}"
            ) from None
        return data
    secret = secrets.token_bytes(32)
    with os.fdopen(fd, "wb") as f:
        f.write(secret)
    return secret
