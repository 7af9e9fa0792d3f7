"""Members only (issue 13): the group-key handshake and the authenticated lines
after it. Sans-IO: bytes in, bytes out; the caller moves them.

Handshake, before any other byte on a connection (tracker or peer):

    client -> server   P2PSYNC-AUTH/1 CHANNEL CLIENT_NONCE\\n
    server -> client   P2PSYNC-AUTH/1 SERVER_NONCE SERVER_PROOF\\n
    client -> server   CLIENT_PROOF\\n

Nonces are 32 random bytes (hex) from each side; a proof is
HMAC-SHA256(key, label | role | channel | client nonce | server nonce) with
role "server" or "client", so a proof is good for one connection only (fresh
nonces: no replay) and one direction only (no reflection), and is checked
with `hmac.compare_digest`. `CHANNEL` names what the connection is for
("tracker" or "peer"), so a proof for one kind cannot open the other. The
first line starts with a token no classic message can (a classic name has no
`/`, a classic tracker message is JSON), so a classic program is refused in
one line. Every refusal is the same line (`REFUSAL`), whatever went wrong.

After it, each line either way carries a tag: `LINE TAG\\n`, the tag being
the first 16 bytes (hex) of HMAC-SHA256(session key, direction | sequence
number | line); the session key is derived from the group key and both
nonces. A changed, dropped, reordered, replayed or injected line fails.
Bodies (after `Content-Length`) are not tagged: they are checked against the
SHA-256 the authenticated directory names, and stay zero copy.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from p2psync.errors import ProtocolError

__all__ = [
    "HELLO",
    "KEY_BYTES",
    "MAX_HANDSHAKE_LINE",
    "REFUSAL",
    "Channel",
    "ClientHandshake",
    "ServerHandshake",
    "new_key",
    "parse_key",
]

HELLO = b"P2PSYNC-AUTH/1"
KEY_BYTES = 32
NONCE_BYTES = 32
TAG_BYTES = 16
MAX_HANDSHAKE_LINE = 256  # a longer first line is refused before it is all read
CHANNELS = (b"tracker", b"peer")
REFUSAL = b"Error: not a member of this swarm\n"  # the same whatever went wrong: it says nothing
_LABEL = b"p2psync-auth-v1"


def new_key() -> bytes:
    """A fresh group key."""
    return secrets.token_bytes(KEY_BYTES)


def parse_key(text: str) -> bytes:
    """A key file's contents (64 hex digits and an optional newline) -> the key.
    The error never quotes the text."""
    stripped = text.strip()
    if len(stripped) != 2 * KEY_BYTES:
        raise ProtocolError(f"a key file holds {2 * KEY_BYTES} hex digits (p2psync keygen FILE makes one)")
    try:
        return bytes.fromhex(stripped)
    except ValueError:
        raise ProtocolError(f"a key file holds {2 * KEY_BYTES} hex digits (p2psync keygen FILE makes one)") from None


def _proof(key: bytes, role: bytes, channel: bytes, client_nonce: bytes, server_nonce: bytes) -> bytes:
    message = b"|".join((_LABEL, role, channel, client_nonce, server_nonce))
    return hmac.new(key, message, hashlib.sha256).hexdigest().encode()


def _session(key: bytes, channel: bytes, client_nonce: bytes, server_nonce: bytes) -> bytes:
    return hmac.new(key, b"|".join((_LABEL, b"session", channel, client_nonce, server_nonce)), hashlib.sha256).digest()


def _hex(value: bytes, size: int) -> bool:
    return len(value) == 2 * size and all(c in b"0123456789abcdef" for c in value)


class ClientHandshake:
    """The connecting side: `hello()` to send, `answer(line)` with the server's line
    (without its newline) -> the proof to send and the `Channel` from then on."""

    def __init__(self, key: bytes, channel: bytes, nonce: bytes | None = None) -> None:
        if channel not in CHANNELS:
            raise ValueError(f"unknown channel {channel!r}")
        self._key, self._channel = key, channel
        self._nonce = nonce or secrets.token_hex(NONCE_BYTES).encode()

    def hello(self) -> bytes:
        return b"%s %s %s\n" % (HELLO, self._channel, self._nonce)

    def answer(self, line: bytes) -> tuple[bytes, Channel]:
        """Raises `ProtocolError` unless the server proved it holds the key."""
        parts = line.split(b" ")
        if len(parts) != 3 or parts[0] != HELLO or not _hex(parts[1], NONCE_BYTES) or not _hex(parts[2], 32):
            raise ProtocolError("the other side is not a member of this swarm")
        server_nonce, proof = parts[1], parts[2]
        expected = _proof(self._key, b"server", self._channel, self._nonce, server_nonce)
        if not hmac.compare_digest(proof, expected):
            raise ProtocolError("the other side is not a member of this swarm")
        mine = _proof(self._key, b"client", self._channel, self._nonce, server_nonce)
        session = _session(self._key, self._channel, self._nonce, server_nonce)
        return mine + b"\n", Channel(session, outgoing=b"c", incoming=b"s")


class ServerHandshake:
    """The accepting side: `hello(line)` with the client's first line -> the line to
    send; `proof(line)` with its second -> the `Channel`. Either raises
    `ProtocolError` on anything wrong: answer `REFUSAL` and close."""

    def __init__(self, key: bytes, channel: bytes, nonce: bytes | None = None) -> None:
        self._key, self._channel = key, channel
        self._nonce = nonce or secrets.token_hex(NONCE_BYTES).encode()
        self._client_nonce: bytes | None = None

    def hello(self, line: bytes) -> bytes:
        parts = line.split(b" ")
        if len(parts) != 3 or parts[0] != HELLO or parts[1] != self._channel or not _hex(parts[2], NONCE_BYTES):
            raise ProtocolError("not a member's handshake")
        if parts[2] == self._nonce:
            raise ProtocolError("not a member's handshake")  # our own nonce sent back: a reflection
        self._client_nonce = parts[2]
        proof = _proof(self._key, b"server", self._channel, self._client_nonce, self._nonce)
        return b"%s %s %s\n" % (HELLO, self._nonce, proof)

    def proof(self, line: bytes) -> Channel:
        if self._client_nonce is None:
            raise ProtocolError("not a member's handshake")
        expected = _proof(self._key, b"client", self._channel, self._client_nonce, self._nonce)
        if not _hex(line, 32) or not hmac.compare_digest(line, expected):
            raise ProtocolError("not a member's handshake")
        return Channel(_session(self._key, self._channel, self._client_nonce, self._nonce), b"s", b"c")


class Channel:
    """Tags the lines one side sends and checks those it receives, in order."""

    def __init__(self, session: bytes, outgoing: bytes, incoming: bytes) -> None:
        self._session = session
        self._out, self._in = outgoing, incoming
        self._sent = self._received = 0

    def _tag(self, direction: bytes, number: int, line: bytes) -> bytes:
        mac = hmac.new(self._session, b"%s|%d|" % (direction, number), hashlib.sha256)
        mac.update(line)
        return mac.hexdigest()[: 2 * TAG_BYTES].encode()

    def seal(self, line: bytes) -> bytes:
        """`line` (without its newline) as sent: `line TAG\\n`."""
        tag = self._tag(self._out, self._sent, line)
        self._sent += 1
        return line + b" " + tag + b"\n"

    def trailer(self, line: bytes) -> bytes:
        """What follows `line` (without its newline) when it is sent as it is, from a
        buffer shared with other connections: ` TAG\\n`."""
        return self.seal(line)[len(line) :]

    def open(self, line: bytes) -> bytes:
        """A received line (without its newline) -> the line it carries. Raises
        `ProtocolError` for a line that is not the next one the other side sealed."""
        body, _, tag = line.rpartition(b" ")
        if not _hex(tag, TAG_BYTES) or not hmac.compare_digest(tag, self._tag(self._in, self._received, body)):
            raise ProtocolError("a line failed its check: changed, dropped, replayed or injected")
        self._received += 1
        return body
