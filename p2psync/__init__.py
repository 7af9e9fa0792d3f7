"""p2psync: a peer-to-peer folder synchronizer speaking the classic wire protocol."""

from __future__ import annotations

from .errors import ConnectionClosed, P2PSyncError, ProtocolError, TransferError, UnsafeName

__version__ = "0.1.0"

__all__ = [
    "ConnectionClosed",
    "P2PSyncError",
    "ProtocolError",
    "TransferError",
    "UnsafeName",
    "__version__",
]
