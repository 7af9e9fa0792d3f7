"""One-off exploration, not a pytest suite: does `posix_fadvise` help the receive loop?

    python benchmarks/explore_fadvise.py

256 MiB over loopback TCP from a `sendfile` sender thread, received with
`recv_into` + `write` through a 1 MiB buffer into a fresh file. Variants:
plain; POSIX_FADV_SEQUENTIAL on the source (sender side) or on the
destination; and POSIX_FADV_DONTNEED behind the writer every 64 MiB (after an
`fdatasync`, to keep the page cache small). One warm-up pass, then 8 rounds in
rotating order; prints median MiB/s and the median per-round ratio to plain.
"""

from __future__ import annotations

import os
import socket
import statistics
import tempfile
import threading
import time

SIZE = 256 << 20
CHUNK = 1 << 20
HERE = tempfile.gettempdir()
SOURCE = os.path.join(HERE, "p2psync-fadvise-src.bin")
VARIANTS = ["plain", "sequential-source", "sequential-dest", "dontneed-behind"]


def _serve(listener: socket.socket, advise_source: bool) -> None:
    conn, _ = listener.accept()
    with conn, open(SOURCE, "rb") as source:
        if advise_source:
            os.posix_fadvise(source.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        offset = 0
        while offset < SIZE:
            offset += os.sendfile(conn.fileno(), source.fileno(), offset, SIZE - offset)


def _receive(variant: str) -> float:
    dest = os.path.join(HERE, f"p2psync-fadvise-{variant}.bin")
    listener = socket.create_server(("127.0.0.1", 0))
    sender = threading.Thread(target=_serve, args=(listener, variant == "sequential-source"))
    sender.start()
    view = memoryview(bytearray(CHUNK))
    began = time.perf_counter()
    with socket.create_connection(listener.getsockname()) as sock:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        if variant == "sequential-dest":
            os.posix_fadvise(fd, 0, SIZE, os.POSIX_FADV_SEQUENTIAL)
        done = 0
        while got := sock.recv_into(view):
            os.write(fd, view[:got])
            done += got
            if variant == "dontneed-behind" and done % (64 << 20) < got:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, done, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    took = time.perf_counter() - began
    sender.join()
    listener.close()
    os.unlink(dest)
    return took


def main() -> None:
    if not os.path.exists(SOURCE) or os.path.getsize(SOURCE) != SIZE:
        with open(SOURCE, "wb") as source:
            for _ in range(SIZE // CHUNK):
                source.write(os.urandom(CHUNK))
    for variant in VARIANTS:
        _receive(variant)  # warm-up, not counted
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(8):
        for variant in VARIANTS[r % 4 :] + VARIANTS[: r % 4]:
            times[variant].append(_receive(variant))
    for variant in VARIANTS:
        ratio = statistics.median(p / t for p, t in zip(times["plain"], times[variant], strict=True))
        print(f"{variant:18s} {SIZE / CHUNK / statistics.median(times[variant]):7.0f} MiB/s  {ratio:.2f}x plain")
    os.unlink(SOURCE)


if __name__ == "__main__":
    main()
