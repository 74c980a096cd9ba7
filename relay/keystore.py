"""Key files on disk: created 0600 in a 0700 directory, looser modes refused."""

import os
import secrets
import stat
from pathlib import Path
from typing import Final

from hopchain.crypto.keys import IdentityKey
from hopchain.errors import ConfigError

AUTHORITY_KEY: Final = "authority_identity.key"


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
        f.flush()
        os.fsync(f.fileno())  # a crash must not leave an empty key file
    return secret


def load_authority_identity(data_dir: Path) -> IdentityKey:
    """A directory authority's identity key in ``data_dir``, created where
    missing (the demo creates it before the authority starts, to pin it).

    Raises:
        ConfigError: the directory or the key file is not private, or the
            key file is malformed.
    """
    ensure_private_dir(data_dir)
    return IdentityKey(load_or_create_secret(data_dir / AUTHORITY_KEY))


def write_secret(path: Path, secret: bytes) -> None:
    """Replace ``path`` with ``secret`` atomically, mode 0600.

    The bytes go to a temporary file in the same directory first, so a crash
    leaves either the old key or the new one, never half of one.
    """
    temporary = path.with_name(path.name + ".tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secret)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


class OnionKeyFiles:
    """A relay's onion keys on disk: the current one and, during the grace
    period after a rotation, the previous one.

    ``onion.key`` holds the current secret, ``onion.key.old`` the previous
    one, and ``onion.key.created`` the time (seconds since the epoch) the
    current key was made.  A data directory from before rotation existed has
    no ``onion.key.created``; its key counts as made at the first start.
    """

    CURRENT = "onion.key"
    PREVIOUS = "onion.key.old"
    CREATED = "onion.key.created"

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    def load(self, now: float) -> tuple[bytes, bytes | None, float]:
        """(current secret, previous secret or None, creation time).

        Raises:
            ConfigError: a key file is group- or world-readable or malformed,
                or the creation time is not a number.
        """
        current = load_or_create_secret(self.data_dir / self.CURRENT)
        old = self.data_dir / self.PREVIOUS
        previous = load_or_create_secret(old) if old.exists() else None
        created_path = self.data_dir / self.CREATED
        try:
            created = float(created_path.read_text(encoding="ascii").strip())
        except FileNotFoundError:
            created = now
            self._write_created(now)
        except (UnicodeDecodeError, ValueError) as exc:
            raise ConfigError(
                f"{created_path} must hold a time in seconds since the epoch"
            ) from exc
        return current, previous, created

    def rotate(self, current: bytes, new: bytes, now: float) -> None:
        """Keep ``current`` as the previous key and make ``new`` current."""
        write_secret(self.data_dir / self.PREVIOUS, current)
        write_secret(self.data_dir / self.CURRENT, new)
        self._write_created(now)

    def drop_previous(self) -> None:
        """Delete the previous key once its grace period is over."""
        (self.data_dir / self.PREVIOUS).unlink(missing_ok=True)

    def _write_created(self, now: float) -> None:
        write_secret(self.data_dir / self.CREATED, f"{now!r}\n".encode("ascii"))
