"""One p2psync per folder: an flock the kernel releases with the process."""

from __future__ import annotations

import fcntl
import os

from p2psync.errors import ConfigError

from .fileops import O_CLOEXEC, O_NOFOLLOW


def lock_folder(state_path: str, root: str) -> int:
    """Hold `state_path/lock` (flock, released by the kernel with the process, even
    at kill -9) so a second p2psync on the same folder is refused, not let loose
    on the same files and index. Raises `ConfigError` if another one holds it."""
    fd = os.open(os.path.join(state_path, "lock"), os.O_RDWR | os.O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(f"another p2psync is already syncing {root}; stop it first") from None
    except OSError:
        os.close(fd)
        raise
    return fd


def check_unlocked(state_path: str, root: str) -> None:
    """Raise `ConfigError` now if another p2psync holds the folder, so a command
    says so before it starts anything (a tracker, a listener). The lock itself
    is taken later, by the folder; this only looks."""
    if os.path.isdir(state_path):
        os.close(lock_folder(state_path, root))
