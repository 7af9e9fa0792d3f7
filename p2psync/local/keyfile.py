"""The group key on disk (`p2psync keygen FILE`, `--secret FILE`): made private,
read only when private, and never quoted anywhere."""

from __future__ import annotations

import os
import stat

from p2psync.errors import ConfigError, ProtocolError
from p2psync.protocol.auth import new_key, parse_key

from .fileops import O_CLOEXEC, O_NOFOLLOW

__all__ = ["load_key", "write_new_key"]


def write_new_key(path: str) -> None:
    """Write a fresh group key to `path` (0600); never over an existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path} exists; refusing to overwrite a key (remove it first if you mean to)") from None
    except OSError as exc:
        raise ConfigError(f"cannot create {path}: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, new_key().hex().encode() + b"\n")
    finally:
        os.close(fd)


def load_key(path: str) -> bytes:
    """The group key in `path`. Raises `ConfigError` (naming the file and the fix,
    never its contents) for a file others can read or write, or that is not one."""
    try:
        fd = os.open(path, os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"cannot read the key file {path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"the key file {path} is not a regular file")
        if st.st_mode & 0o077:
            raise ConfigError(f"the key file {path} is open to other users; make it private: chmod 600 {path}")
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    try:
        return parse_key(data.decode("ascii", "replace"))
    except ProtocolError as exc:
        raise ConfigError(f"{path}: {exc}") from None
