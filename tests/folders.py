"""Reading a synced folder while peers work on it."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from p2psync.local import STATE_DIR


def names(folder: Path) -> list[str]:
    """The relative paths of every synced file under `folder`, without reading them (see `tree`)."""
    found = []
    for top, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not (top == str(folder) and d == STATE_DIR)]
        found += [Path(top, name).relative_to(folder).as_posix() for name in files]
    return found


def tree(folder: Path) -> dict[str, bytes]:
    """Every synced file under `folder` by relative path (the state folder and symlinks left out).

    This is polled while peers run: a file or folder a peer moves away between the listing
    and the read is left out, never an error (os.walk skips a folder that vanished; rglob raises).
    """
    found: dict[str, bytes] = {}
    for name in names(folder):
        path = folder / name
        if not path.is_symlink():
            with contextlib.suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError):
                found[name] = path.read_bytes()
    return found


def texts(folder: Path) -> dict[str, str]:
    """`tree` decoded as UTF-8 text."""
    return {name: data.decode() for name, data in tree(folder).items()}
