"""The group-key handshake on a blocking socket (peer side of the tracker line,
both sides of peer-to-peer connections). The messages are protocol/auth.py's;
this only moves them. A refusal is always the same line, then the close."""

from __future__ import annotations

import contextlib
import socket

from .errors import ConnectionClosed, ProtocolError
from .protocol.auth import MAX_HANDSHAKE_LINE, REFUSAL, Channel, ClientHandshake, ServerHandshake
from .transfer import Buffer

__all__ = ["HANDSHAKE_TIMEOUT_S", "client_handshake", "server_handshake", "tracker_handshake"]

HANDSHAKE_TIMEOUT_S = 10.0


def client_handshake(sock: socket.socket, key: bytes, channel: bytes) -> Channel:
    """Prove membership to the server and check its proof. Raises `ProtocolError`
    when the other side is not a member (a classic or open program included)."""
    hs = ClientHandshake(key, channel)
    sock.sendall(hs.hello())
    reader = Buffer(sock, MAX_HANDSHAKE_LINE, MAX_HANDSHAKE_LINE)
    line = reader.read_line()
    proof, sealed = hs.answer(line)
    if reader.buffer:  # the server speaks only after our proof: anything more is not a member
        raise ProtocolError("the other side is not a member of this swarm")
    sock.sendall(proof)
    return sealed


def tracker_handshake(sock: socket.socket, key: bytes) -> Channel:
    """`client_handshake` on a tracker line; a tracker that cannot prove the key is an
    `OSError` for the caller, like a tracker that cannot be reached."""
    try:
        return client_handshake(sock, key, b"tracker")
    except (ProtocolError, ConnectionClosed):
        raise OSError("the tracker is not a member of this swarm (no key, or another one)") from None


def server_handshake(sock: socket.socket, reader: Buffer, key: bytes, channel: bytes) -> Channel:
    """Check a connecting client's membership, reading through `reader`. On any
    failure the client gets `REFUSAL` and `ProtocolError` is raised: close."""
    hs = ServerHandshake(key, channel)
    try:
        sock.sendall(hs.hello(reader.read_line()))
        return hs.proof(reader.read_line())
    except ProtocolError:
        with contextlib.suppress(OSError):
            sock.sendall(REFUSAL)
        raise
