"""One timed receive in a fresh process, for benchmarks; prints `seconds extra_rss_mib backend`.

    receive.py p2psync DEST_DIR NAME PORT MTIME SIZE SHA256|- [LIST_ID]   the real syncfile path
                                     (with LIST_ID, the version's chunk list id: a chunked fetch)
    receive.py raw DEST_FILE PORT                               recv_into + write, 1 MiB buffer

The process measures itself, so interpreter start-up is not timed, and its
peak RSS above what it had before the transfer is the transfer's own memory (the p2psync
imports and the peer are built before that mark).
"""

from __future__ import annotations

import os
import resource
import socket
import sys
import time


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _mark() -> float:
    """RSS now, with the peak reset, so the peak afterwards is the transfer's own."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # resets VmHWM (Linux)
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return _status_mib("VmRSS")


def _peak_mib() -> float:
    peak = _status_mib("VmHWM")
    return peak if peak == peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def p2psync(
    dest: str, name: str, port: str, mtime: str, size: str, digest: str, list_id: str = ""
) -> tuple[float, float]:
    from p2psync.peer import FileSynchronizer

    os.chdir(dest)
    peer = FileSynchronizer("127.0.0.1", 9, 0, "127.0.0.1")
    info = {"ip": "127.0.0.1", "port": int(port), "mtime": int(mtime), "size": int(size)}
    if digest != "-":
        info["sha256"] = digest
    if list_id:
        info["chunks"] = list_id
    before = _mark()
    began = time.perf_counter()
    if not peer.syncfile(name, info):
        raise SystemExit("syncfile failed")
    took = time.perf_counter() - began
    peer.exit()
    return took, before


def raw(dest: str, port: str) -> tuple[float, float]:
    before = _mark()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    began = time.perf_counter()
    with socket.create_connection(("127.0.0.1", int(port))) as sock:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            while got := sock.recv_into(view):
                os.write(fd, view[:got])
        finally:
            os.close(fd)
    return time.perf_counter() - began, before


if __name__ == "__main__":
    if sys.argv[1] == "p2psync":
        seconds, before = p2psync(*sys.argv[2:])
        from p2psync.transfer import BACKEND as backend
    else:
        (seconds, before), backend = raw(*sys.argv[2:]), "-"
    print(f"{seconds:.6f} {_peak_mib() - before:.1f} {backend}")
