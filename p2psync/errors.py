"""The one exception hierarchy of p2psync.

Servers catch these per connection, log one line, close that connection and
keep serving; nothing here is fatal to a process.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ConnectionClosed",
    "FolderGone",
    "P2PSyncError",
    "ProtocolError",
    "Refused",
    "TransferError",
    "UnsafeName",
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
