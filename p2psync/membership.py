"""The group-key handshake on a blocking socket (peer side of the tracker line,
both sides of peer-to-peer connections). The messages are protocol/auth.py's;
this only moves them. A refusal is always the same line, then the close.

With `--tls` the connection is wrapped first (`wrap_client` / `wrap_server`,
no I/O), so the caller's deadline covers the TLS handshake too, which the
handshake functions here run before the group-key one, inside TLS."""

from __future__ import annotations

import contextlib
import socket
from typing import TYPE_CHECKING

from .errors import ConnectionClosed, ProtocolError
from .net import is_tls
from .protocol.auth import MAX_HANDSHAKE_LINE, REFUSAL, Channel, ClientHandshake, ServerHandshake
from .transfer import Buffer

if TYPE_CHECKING:
    import ssl

__all__ = [
    "HANDSHAKE_TIMEOUT_S",
    "client_handshake",
    "server_handshake",
    "tracker_handshake",
    "wrap_client",
    "wrap_server",
]

HANDSHAKE_TIMEOUT_S = 10.0


def wrap_client(sock: socket.socket, key: bytes | None, use_tls: bool) -> socket.socket:
    """The socket to use from now on: `sock` itself, or with `use_tls` a TLS socket
    over it (`sock` is spent then) whose handshake `client_handshake` runs."""
    if not use_tls or key is None:
        return sock
    from . import tls  # only for --tls: ssl and OpenSSL stay unloaded otherwise

    return tls.contexts(key).client_socket(sock)


def wrap_server(sock: socket.socket, key: bytes | None, use_tls: bool) -> socket.socket:
    """`wrap_client` for an accepted connection; `server_handshake` finishes it."""
    if not use_tls or key is None:
        return sock
    from . import tls

    return tls.contexts(key).server_socket(sock)


def client_handshake(sock: socket.socket, key: bytes, channel: bytes) -> Channel:
    """Prove membership to the server and check its proof (TLS first, when `sock`
    is a TLS socket). Raises `ProtocolError` when the other side is not a
    member (a classic or open program included)."""
    if is_tls(sock):
        from . import tls

        try:
            tls.contexts(key).finish(sock)
        except OSError:  # it hung up on our hello: an open or classic server
            raise ProtocolError("the other side is not a member of this swarm (TLS)") from None
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
        raise OSError(
            "the tracker is not a member of this swarm (no key, another one, or --tls on one side only)"
        ) from None


def server_handshake(sock: socket.socket, reader: Buffer, key: bytes, channel: bytes) -> Channel:
    """Check a connecting client's membership, reading through `reader` (TLS first,
    when `sock` is a TLS socket). On any failure the client gets `REFUSAL` (in
    clear if it did not even start TLS) and `ProtocolError` is raised: close."""
    if is_tls(sock):
        _server_tls(sock, key)
    hs = ServerHandshake(key, channel)
    try:
        sock.sendall(hs.hello(reader.read_line()))
        return hs.proof(reader.read_line())
    except ProtocolError:
        with contextlib.suppress(OSError):
            sock.sendall(REFUSAL)
        raise


def _server_tls(sock: ssl.SSLSocket, key: bytes) -> None:
    from . import tls

    # The first byte, peeked below TLS: a client that does not start TLS (classic,
    # open, or keyed without --tls) is told in clear, in the one refusal line.
    first = socket.socket.recv(sock, 1, socket.MSG_PEEK)
    if not tls.is_tls_start(first):
        with contextlib.suppress(OSError):  # what it sent is read first: closing on unread bytes resets the line
            socket.socket.recv(sock, MAX_HANDSHAKE_LINE, socket.MSG_DONTWAIT)
            socket.socket.sendall(sock, REFUSAL)
        raise ProtocolError("not a TLS client")
    try:
        tls.contexts(key).finish(sock)
    except OSError:
        raise ProtocolError("not a member's TLS handshake") from None
