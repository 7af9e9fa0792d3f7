"""Ask a tracker for its directory without joining as a holder (`p2psync status --tracker`)."""

from __future__ import annotations

import socket

from p2psync.errors import ProtocolError
from p2psync.membership import tracker_handshake, wrap_client
from p2psync.net import family
from p2psync.protocol import FEATURES, Listing, decode_listing, encode_keepalive
from p2psync.transfer import Buffer

__all__ = ["MAX_DIRECTORY_BYTES", "read_directory"]

MAX_DIRECTORY_BYTES = 64 * 1024 * 1024


def read_directory(
    host: str, port: int, timeout: float = 10.0, group_key: bytes | None = None, use_tls: bool = False
) -> Listing:
    """The tracker's directory, as a p2psync peer is shown it.

    One KeepAlive that declares p2psync's features, from a port that no peer of
    this machine serves on (the connection's own source port): the tracker sees
    a peer holding nothing, which it forgets as soon as the connection closes.
    Raises `OSError` when the tracker cannot be reached, `ProtocolError` for a
    reply that is not a directory.
    """
    plain = socket.socket(family(host), socket.SOCK_STREAM)
    plain.settimeout(timeout)
    try:
        plain.connect((host, port))
    except OSError:
        plain.close()
        raise
    own_port = plain.getsockname()[1]
    with wrap_client(plain, group_key, use_tls) as sock:
        channel = None
        if group_key is not None:
            channel = tracker_handshake(sock, group_key)
        # Classic trackers ignore the features key; p2psync trackers answer in the extended shape.
        message = encode_keepalive(own_port, features=FEATURES)
        sock.sendall(message if channel is None else channel.seal(message.rstrip(b"\n")))
        reader = Buffer(sock, 64 * 1024, MAX_DIRECTORY_BYTES)
        try:
            line = reader.read_line()
        except TimeoutError:
            raise OSError(f"tracker {host}:{port} did not answer within {timeout:g} s") from None
        if channel is not None:
            line = channel.open(line)
    try:
        return decode_listing(line)
    except ProtocolError as exc:
        raise ProtocolError(f"tracker {host}:{port} sent a malformed directory: {exc}") from None
