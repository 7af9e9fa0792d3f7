"""Addresses and ports: which are free, which family a host is, which are loopback."""

from __future__ import annotations

import errno
import ipaddress
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeGuard, TypeVar

if TYPE_CHECKING:
    import ssl

__all__ = [
    "bind_first_free",
    "check_port_available",
    "family",
    "get_next_available_port",
    "is_loopback",
    "is_tls",
    "lan_address",
]


def check_port_available(port: int) -> bool:
    """Whether `port` can be bound for listening on every IPv4 address now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as our servers bind
        try:
            probe.bind(("", port))
        except OSError:
            return False
    return True


def get_next_available_port(initial: int) -> int:
    """The first port from `initial` up that can be bound. Raises `OSError` if none."""
    for port in range(initial, 65536):
        if check_port_available(port):
            return port
    raise OSError(f"no free port from {initial} up")


T = TypeVar("T")


def bind_first_free(build: Callable[[int], T], initial: int, tries: int = 20) -> T:
    """`build(port)` on the first free port from `initial`, retrying past ports that
    another process took between the check and the bind."""
    port = initial
    for _ in range(tries):
        port = get_next_available_port(port)
        try:
            return build(port)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            port += 1
    raise OSError(errno.EADDRINUSE, f"no free port from {initial} after {tries} tries")


def family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def is_loopback(ip: str) -> bool:
    """Whether `ip` is a loopback address (127.0.0.0/8, ::1, or v4-mapped loopback)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


def lan_address() -> str | None:
    """This machine's address on its network, for the join line other machines
    type; None when it has only loopback. Sends nothing: "connecting" a UDP
    socket only asks the routing table which source address a packet out would
    have; the machine's own name is the fallback where there is no route."""
    for family_, probe in ((socket.AF_INET, "10.255.255.255"), (socket.AF_INET6, "fd00::1")):
        try:
            with socket.socket(family_, socket.SOCK_DGRAM) as sock:
                sock.connect((probe, 9))
                ip = str(sock.getsockname()[0])
        except OSError:
            continue
        if not is_loopback(ip) and not ipaddress.ip_address(ip).is_unspecified:
            return ip
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET, socket.SOCK_STREAM)
    except OSError:
        return None
    for info in infos:
        ip = str(info[4][0])
        if not is_loopback(ip):
            return ip
    return None


def is_tls(sock: socket.socket) -> TypeGuard[ssl.SSLSocket]:
    """Whether `sock` is a TLS socket. Asked without importing `ssl`: no TLS socket
    exists before something imported it (`--tls` does, through p2psync.tls), and an
    open swarm's peer then starts ~5 ms sooner (the module and OpenSSL's loading)."""
    loaded = sys.modules.get("ssl")
    return loaded is not None and isinstance(sock, loaded.SSLSocket)
