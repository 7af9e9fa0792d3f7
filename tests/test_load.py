"""Load: many concurrent downloads from one peer; a tracker with a thousand peers."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import socket
import threading
import time
from pathlib import Path

import pytest

from p2psync.transfer import recv_to_file, request

from .classic_peer import recv_line
from .loopback import LOOPBACK

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("backend")]


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_200_concurrent_downloads_from_one_peer(tmp_path: Path, make_peer, capsys) -> None:
    served = tmp_path / "served"
    served.mkdir()
    data = os.urandom(1 << 20)
    (served / "one-mib.bin").write_bytes(data)
    peer = make_peer(served, 9)
    peer.start()
    digests: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    go = threading.Event()

    def download(i: int) -> None:
        try:
            go.wait()
            with socket.create_connection((LOOPBACK, peer.port), timeout=60) as sock:
                length, reader = request(sock, "one-mib.bin")
                out = tmp_path / f"copy-{i}"
                fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o644)
                try:
                    recv_to_file(sock, fd, length, reader)
                finally:
                    os.close(fd)
            digest = hashlib.sha256(out.read_bytes()).hexdigest()
            out.unlink()
            with lock:
                digests.append(digest)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=download, args=(i,)) for i in range(200)]
    for t in threads:
        t.start()
    began = time.monotonic()
    go.set()
    for t in threads:
        t.join(120)
    took = time.monotonic() - began
    assert errors == []
    assert digests == [hashlib.sha256(data).hexdigest()] * 200
    with capsys.disabled():
        print(f"\n200 x 1 MiB concurrent downloads: {took:.2f} s, max RSS {_max_rss_mib():.0f} MiB")


def test_a_tracker_with_1000_peers(start_tracker, capsys) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:  # both ends of 1000 connections live in this process
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    tracker = start_tracker()
    peers = 1000
    socks = [socket.create_connection((LOOPBACK, tracker.port), timeout=60) for _ in range(peers)]
    try:
        began = time.monotonic()
        for i, s in enumerate(socks):  # every peer holds its own file and the shared one, newest at peer 999
            files = [{"name": f"own-{i}.txt", "mtime": 1000 + i}, {"name": "shared.txt", "mtime": 1000 + i}]
            s.sendall(json.dumps({"port": 20000 + i, "files": files}).encode() + b"\n")
        for s in socks:
            recv_line(s)
        init_s = time.monotonic() - began
        began = time.monotonic()
        rounds = 5
        for _ in range(rounds):
            for i, s in enumerate(socks):
                s.sendall(json.dumps({"port": 20000 + i}).encode() + b"\n")
            for s in socks:
                line, rest = recv_line(s)
                assert rest == b""
        keepalive_s = time.monotonic() - began
        directory = json.loads(line)
        assert len(directory) == peers + 1
        assert directory["shared.txt"] == {"ip": "127.0.0.1", "port": 20999, "mtime": 1999}
        assert directory["own-500.txt"]["port"] == 20500
        assert len(tracker.connections) == peers  # no peer lost
        with capsys.disabled():
            print(
                f"\n1000 peers: Init of all {init_s:.2f} s; {rounds} KeepAlive rounds {keepalive_s:.2f} s "
                f"({rounds * peers / keepalive_s:.0f} round trips/s, {len(line) // 1024} KiB directory); "
                f"max RSS {_max_rss_mib():.0f} MiB"
            )
    finally:
        for s in socks:
            s.close()
