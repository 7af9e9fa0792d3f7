"""Helpers shared by the benchmark suites: loopback ports, waiting for services, and the
processes several suites start (an rsync daemon, trackers, a p2psync holder, a `--once` receiver)."""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
import re
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from p2psync.protocol import encode_header


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for servers started by number)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:`port`."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Poll `condition`; raise `RuntimeError` naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


MiB = 1 << 20


def write_source(path: Path, size: int) -> str:
    """Write `size` bytes (a random MiB, repeated) to `path`; returns their SHA-256."""
    hasher = hashlib.sha256()
    block = os.urandom(MiB)
    with open(path, "wb") as out:
        for _ in range(size // MiB):
            out.write(block)
            hasher.update(block)
    return hasher.hexdigest()


def _serve_file(listener: socket.socket, path: str, protocol: bool) -> None:
    fd = os.open(path, os.O_RDONLY)
    size = os.fstat(fd).st_size
    while True:
        conn, _ = listener.accept()
        with conn:
            if protocol:  # read the request line, answer the header first
                request = b""
                while not request.endswith(b"\n"):
                    request += conn.recv(4096)
                conn.sendall(encode_header(size))
            offset = 0
            while offset < size:
                offset += os.sendfile(conn.fileno(), fd, offset, size - offset)


def sendfile_server(path: Path, protocol: bool) -> tuple[multiprocessing.Process, socket.socket]:
    """A process that answers every connection with the whole file by `sendfile`
    (after a `Content-Length` header when `protocol`); the caller kills it and
    closes the listener."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=16)
    process = multiprocessing.get_context("fork").Process(
        target=_serve_file, args=(listener, str(path), protocol), daemon=True
    )
    process.start()
    return process, listener


@contextlib.contextmanager
def rsync_daemon(tree: Path, conf_dir: Path) -> Iterator[int]:
    """An `rsync --daemon` on 127.0.0.1 serving `tree` as module `src`; its port."""
    conf = conf_dir / "rsyncd.conf"
    conf.write_text(f"use chroot = no\nuid = root\ngid = root\n[src]\n    path = {tree}\n    read only = yes\n")
    port = free_port()
    daemon = subprocess.Popen(
        ["rsync", "--daemon", "--no-detach", "--address=127.0.0.1", f"--port={port}", f"--config={conf}"]
    )
    try:
        wait_until(lambda: listening(port), 10, "the rsync daemon")
        yield port
    finally:
        daemon.terminate()
        daemon.wait(10)


@contextlib.contextmanager
def redis_server() -> Iterator[int]:
    """A throwaway `redis-server` on 127.0.0.1 (no persistence); its port."""
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: listening(port), 10, "redis-server to start")
        yield port
    finally:
        server.terminate()
        server.wait(10)


def raise_open_files(wanted: int) -> None:
    """Let this process hold `wanted` descriptors (both ends of many connections), as far as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, wanted)), hard))


def tracker_process(*extra: str) -> tuple[subprocess.Popen[bytes], int]:
    """`p2psync tracker` in its own process on 127.0.0.1 (with `extra` flags); it and its port."""
    port = free_port()
    args = [sys.executable, "-m", "p2psync.cli", "tracker", "--host", "127.0.0.1", "--port", str(port), "-q", *extra]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: listening(port), 10, "a tracker")
    return proc, port


@contextlib.contextmanager
def p2psync_holder(source: Path, *extra: str) -> Iterator[int]:
    """`p2psync sync SOURCE` with its embedded tracker (and `extra` flags); the tracker's port."""
    args = [sys.executable, "-m", "p2psync.cli", "sync", str(source), "--port", "0", "--tracker-port", "0"]
    proc = subprocess.Popen(
        [*args, "--no-progress", *extra], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert proc.stdout is not None
    found = None
    for line in proc.stdout:
        found = re.search(r"--tracker 127\.0\.0\.1:(\d+)", line)
        if found:
            break
    try:
        assert found, "the holder did not start"
        yield int(found.group(1))
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def p2psync_peer(folder: Path, tracker_port: int, *extra: str) -> Iterator[None]:
    """`p2psync sync FOLDER` against that tracker (and `extra` flags), running until the block ends."""
    args = [sys.executable, "-m", "p2psync.cli", "sync", str(folder), "--port", "0"]
    args += ["--tracker", f"127.0.0.1:{tracker_port}", "--no-progress", "-q", *extra]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(10)


_SUMMARY = re.compile(r"round: \d+ fetched \(([\d.]+) (KiB|MiB|GiB) in ([\d.]+) s")


def receive_once(tracker_port: int, dest: Path, *extra: str) -> tuple[float, float]:
    """`p2psync sync DEST --once` from that tracker; (MiB, seconds) from its own round line
    (bytes over the time the round spent fetching)."""
    args = [sys.executable, "-m", "p2psync.cli", "sync", str(dest), "--once", "--port", "0"]
    args += ["--tracker", f"127.0.0.1:{tracker_port}", "--no-progress", *extra]
    result = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    found = _SUMMARY.search(result.stderr)
    assert found, result.stderr
    scale = {"KiB": 1 / 1024, "MiB": 1.0, "GiB": 1024.0}[found.group(2)]
    return float(found.group(1)) * scale, float(found.group(3))
