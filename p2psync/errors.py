"""The one exception hierarchy of p2psync.

Servers catch these per connection, log one line, close that connection and
keep serving; nothing here is fatal to a process.
"""

from __future__ import annotations

import errno

__all__ = [
    "ConfigError",
    "ConnectionClosed",
    "FolderGone",
    "P2PSyncError",
    "PeerHungUp",
    "ProtocolError",
    "Refused",
    "TransferError",
    "UnsafeName",
    "send_failed",
]


class P2PSyncError(Exception):
    """Base of every error p2psync raises on purpose."""


class ProtocolError(P2PSyncError):
    """A message broke the wire protocol: bad JSON, wrong types, a line too long,
    a bad header, a connection closed in the middle of a line."""


class ConnectionClosed(ProtocolError):
    """The other side closed the connection cleanly, between two lines."""


class TransferError(P2PSyncError):
    """A file transfer failed: short stream, size or hash mismatch, timeout,
    a refusal from the holder, or a source file that changed while sent."""


class PeerHungUp(TransferError):
    """The other side closed or reset the connection while this side was sending
    to it: its choice (it had what it needed, got the rest elsewhere, or stopped),
    not a fault here."""


def send_failed(errno_value: int | None, reason: str) -> TransferError:
    """The error for a send that failed with `errno_value`: `PeerHungUp` when the
    other side went away (EPIPE, ECONNRESET), else a `TransferError`."""
    if errno_value in _HUNG_UP:
        return PeerHungUp(f"the other side closed the connection: {reason}")
    return TransferError(f"send failed: {reason}")


_HUNG_UP = frozenset({errno.EPIPE, errno.ECONNRESET})


class Refused(TransferError):
    """The holder answered a request with an `Error: ...` line instead of the file."""


class UnsafeName(P2PSyncError):
    """A file name that would leave the sync folder or is not allowed in it."""


class ConfigError(P2PSyncError):
    """A setting a user gave is wrong: a bad ignore pattern, option or value."""


class FolderGone(P2PSyncError):
    """The sync folder was deleted, or its `.p2psync` state removed or replaced
    (the folder emptied, another drive mounted there), while it was synced: its
    missing files are not deletions, and nothing more is reported of it."""
