"""Members only, encrypted (`--tls`, issue 13): TLS 1.3 with one certificate the
whole swarm derives from its group key.

Every member derives the same Ed25519 key pair from the group key (an HMAC
of it, so the group key itself is never the TLS key) and the same
self-signed certificate (Ed25519 signatures are deterministic, the fields are
fixed), and trusts that certificate only: both sides present it (mutual TLS)
and both check that the other's is byte for byte the one they derived. A
non-member cannot finish the TLS handshake; the group-key handshake of
`membership` still runs inside it.

File bodies: where the kernel does TLS (kTLS: Linux's `tls` module, OpenSSL 3
built with it, asked for with SSL_OP_ENABLE_KTLS), OpenSSL hands the
connection's keys to the kernel and bodies keep going out with `sendfile`.
Elsewhere they go through OpenSSL in user space, in 1 MiB writes
(`transfer.send_from_file_tls`), never `SSLSocket.sendfile`'s 8 KiB sends.
`body_path()` says which one this machine gets; `sync` and `tracker` log it.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import hmac
import os
import socket
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

from p2psync.errors import ConfigError, ProtocolError

__all__ = [
    "TLS_RECORD_PROBE",
    "is_tls_start",
    "Contexts",
    "available",
    "body_path",
    "contexts",
    "kernel_sends",
]

SERVER_NAME = "p2psync"  # the certificate's one name; every member connects to it
TLS_RECORD_PROBE = 0x16  # a TLS connection's first byte (a handshake record); anything else is refused in clear
_SEED_LABEL = b"p2psync-tls-v1|ed25519"
_SOL_TLS = 282  # linux/socket.h; the socket module has no name for it
_TLS_TX = 1  # linux/tls.h: getsockopt(SOL_TLS, TLS_TX) answers once the kernel encrypts what is sent
# SSL_OP_ENABLE_KTLS: a name in the ssl module from Python 3.12; the same bit in OpenSSL 3 before that.
_OP_ENABLE_KTLS = getattr(ssl, "OP_ENABLE_KTLS", 1 << 3 if ssl.OPENSSL_VERSION_INFO >= (3,) else 0)


def available() -> bool:
    """Whether the `cryptography` package (the extra `p2psync[tls]`) is installed."""
    try:
        import cryptography.x509  # noqa: F401
    except ImportError:
        return False
    return True


def certificate(group_key: bytes) -> tuple[bytes, bytes]:
    """(certificate, private key), PEM, derived from `group_key` alone: every
    member gets the same bytes."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.x509.oid import NameOID

    seed = hmac.new(group_key, _SEED_LABEL, hashlib.sha256).digest()
    private = Ed25519PrivateKey.from_private_bytes(seed)
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "p2psync swarm")])
    utc = datetime.timezone.utc
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(int.from_bytes(hashlib.sha256(public).digest()[:16], "big") >> 1)  # positive, < 2^127
        .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=utc))
        .not_valid_after(datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=utc))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)  # its own trust anchor
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME)]), critical=False)
        .sign(private, None)
    )
    key_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


@contextlib.contextmanager
def _key_file(data: bytes) -> Iterator[str]:
    """A path `ssl` can load the key pair from: a memory-only file where Linux has
    them (nothing reaches a disk), else a 0600 file in a private temp folder,
    removed at once."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("p2psync-tls", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory() as private:  # created 0700
        path = Path(private) / "pair.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        yield str(path)


class Contexts:
    """The swarm's two TLS contexts and the certificate both sides pin."""

    def __init__(self, group_key: bytes) -> None:
        cert_pem, key_pem = certificate(group_key)
        self.certificate = ssl.PEM_cert_to_DER_cert(cert_pem.decode())
        self.server = self._context(ssl.PROTOCOL_TLS_SERVER, cert_pem, key_pem)
        self.client = self._context(ssl.PROTOCOL_TLS_CLIENT, cert_pem, key_pem)

    @staticmethod
    def _context(protocol: int, cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
        context = ssl.SSLContext(protocol)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.verify_mode = ssl.CERT_REQUIRED  # both ways: a member proves it to the server too
        context.load_verify_locations(cadata=cert_pem.decode())  # the swarm's certificate, nothing else
        with _key_file(cert_pem + key_pem) as path:
            context.load_cert_chain(path)
        context.options |= _OP_ENABLE_KTLS
        return context

    def client_socket(self, sock: socket.socket) -> ssl.SSLSocket:
        """`sock` (connected; spent from now on) as a TLS client, handshake still to
        do with `finish`, so the caller can put a deadline on it."""
        return self.client.wrap_socket(sock, server_hostname=SERVER_NAME, do_handshake_on_connect=False)

    def server_socket(self, sock: socket.socket) -> ssl.SSLSocket:
        """`sock` (accepted; spent from now on) as a TLS server, handshake to do."""
        return self.server.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)

    def finish(self, sock: ssl.SSLSocket) -> None:
        """The TLS handshake on a blocking socket (within its timeout). Raises
        `ProtocolError` unless the other side holds the swarm's certificate."""
        try:
            sock.do_handshake()
        except ssl.SSLError:
            raise ProtocolError("the other side is not a member of this swarm (TLS)") from None
        self.check_peer(sock)

    def check_peer(self, sock: ssl.SSLSocket) -> None:
        """After a handshake: the other side's certificate is the swarm's, byte for
        byte (belt and braces on top of the CA check, which already requires it)."""
        if sock.getpeercert(binary_form=True) != self.certificate:
            raise ProtocolError("the other side is not a member of this swarm (TLS)")


@functools.lru_cache(maxsize=4)
def contexts(group_key: bytes) -> Contexts:
    """The swarm's contexts, built once per key (an Ed25519 signature and two
    contexts: a millisecond, but not one per connection)."""
    if not available():
        raise ConfigError("--tls needs the cryptography package: pip install 'p2psync[tls]'")
    return Contexts(group_key)


def is_tls_start(first: bytes) -> bool:
    """Whether a connection's first byte can begin a TLS handshake."""
    return first[:1] == bytes([TLS_RECORD_PROBE])


def kernel_sends(sock: socket.socket) -> bool:
    """Whether the kernel encrypts what is written to `sock` (kTLS transmit is on),
    so `sendfile` on its descriptor sends a TLS stream."""
    try:
        sock.getsockopt(_SOL_TLS, _TLS_TX, 64)
    except OSError:
        return False
    return True


def body_path() -> str:
    """Which path file bodies take under `--tls` on this machine, in a phrase."""
    if not _OP_ENABLE_KTLS:
        return "user space (this OpenSSL cannot hand TLS to the kernel: kTLS needs OpenSSL 3)"
    try:
        ulps = Path("/proc/sys/net/ipv4/tcp_available_ulp").read_text().split()
    except OSError:
        ulps = []
    if "tls" not in ulps:
        return "user space (the kernel's tls module is not loaded: modprobe tls for kernel TLS)"
    return "kernel TLS, sendfile (if OpenSSL was built with kTLS; -v logs each connection's path)"
