"""The tracker under load: KeepAlive round trips per second at 1,000 peers x 10 files,
50 concurrent clients, against redis-benchmark GET of a value the size of the reply.

The tracker runs in its own process; 1,000 connections report 10 files each
first, then 50 client threads send KeepAlives and read the whole directory
reply each time (sized once, then read with `recv_into`). redis-server and
redis-benchmark run in the same test (skipped, with a message, when not
installed: apt-get install redis-server).
"""

from __future__ import annotations

import json
import shutil
import socket
import statistics
import subprocess
import threading
import time

from bench_support import raise_open_files, redis_server, tracker_process

PEERS = 1000
FILES_PER_PEER = 10
CLIENTS = 50
SECONDS = 3.0


def _read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1 << 20)
        assert chunk, "tracker closed the connection"
        data += chunk
    return data


def _keepalive_rate(port: int) -> tuple[float, int]:
    stop = time.monotonic() + SECONDS
    counts = [0] * CLIENTS
    size = [0]

    def client(i: int) -> None:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            msg = json.dumps({"port": 30000 + i}).encode() + b"\n"
            sock.sendall(msg)
            reply = _read_line(sock)  # learn the size once; every reply is the same bytes
            size[0] = len(reply)
            view = memoryview(bytearray(len(reply)))
            while time.monotonic() < stop:
                sock.sendall(msg)
                got = 0
                while got < len(reply):
                    n = sock.recv_into(view[got:])
                    assert n, "tracker closed the connection"
                    got += n
                counts[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.monotonic() - began), size[0]


def _redis_get_rate(size: int) -> float | None:
    if shutil.which("redis-server") is None or shutil.which("redis-benchmark") is None:
        return None
    with redis_server() as port:
        out = subprocess.run(
            [
                "redis-benchmark",
                "-p",
                str(port),
                "-c",
                str(CLIENTS),
                "-n",
                "3000",
                "-d",
                str(size),
                "-t",
                "set,get",
                "--csv",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for line in out.splitlines():
            cells = [c.strip('"') for c in line.split(",")]
            if cells[0] == "GET":
                return float(cells[1])
        raise AssertionError(f"no GET line in redis-benchmark output: {out}")


def test_keepalive_round_trips(benchmark, capsys) -> None:
    raise_open_files(4096)
    tracker, port = tracker_process()
    peers: list[socket.socket] = []
    try:
        for i in range(PEERS):
            sock = socket.create_connection(("127.0.0.1", port))
            files = [{"name": f"peer{i}-file{j}.dat", "mtime": 1772047595 + j, "size": 4096} for j in range(10)]
            sock.sendall(json.dumps({"port": 20000 + i, "files": files}).encode() + b"\n")
            _read_line(sock)
            peers.append(sock)
        result: dict[str, float] = {}

        def measure() -> None:
            result["rate"], result["size"] = _keepalive_rate(port)

        benchmark.group = f"tracker: KeepAlive round trips, {PEERS} peers x {FILES_PER_PEER} files"
        benchmark.pedantic(measure, rounds=1, iterations=1)
    finally:
        for sock in peers:
            sock.close()
        tracker.terminate()
        tracker.wait(10)
    assert result["size"] > PEERS * FILES_PER_PEER * 50  # every file is in the reply
    redis = _redis_get_rate(int(result["size"]))
    benchmark.extra_info["keepalive round trips/s"] = round(result["rate"])
    benchmark.extra_info["reply bytes"] = int(result["size"])
    line = (
        f"\ntracker: {result['rate']:.0f} KeepAlive round trips/s with {CLIENTS} clients, "
        f"{result['size']:.0f}-byte replies"
    )
    if redis is not None:
        benchmark.extra_info["redis GET/s"] = round(redis)
        benchmark.extra_info["tracker / redis"] = round(result["rate"] / redis, 2)
        line += f"; redis GET of the same size {redis:.0f}/s; ratio {result['rate'] / redis:.2f}"
    else:
        line += " (redis-server not installed: apt-get install redis-server for the baseline)"
    with capsys.disabled():
        print(line)


def test_idle_swarm_egress_full_against_delta(benchmark, capsys) -> None:
    """An idle round of 1,000 p2psync peers x 10 files: the bytes the tracker sends and
    the time a peer spends decoding its reply, whole directories against deltas
    (`"since"`), in interleaved rounds."""
    from p2psync.protocol import FEATURES, apply_delta, decode_listing

    raise_open_files(4096)
    tracker, port = tracker_process()
    peers: list[socket.socket] = []
    sent: dict[str, list[int]] = {"whole": [], "delta": []}
    decode: dict[str, list[float]] = {"whole": [], "delta": []}
    try:
        for i in range(PEERS):
            sock = socket.create_connection(("127.0.0.1", port))
            files = [
                {"name": f"peer{i}/file{j}.dat", "mtime": 1772047595 + j, "size": 4096, "sha256": f"{i:060x}{j:04x}"}
                for j in range(FILES_PER_PEER)
            ]
            init = {"port": 20000 + i, "files": files, "features": list(FEATURES)}
            sock.sendall(json.dumps(init).encode() + b"\n")
            _read_line(sock)
            peers.append(sock)
        whole = decode_listing(_ask(peers[0], {"port": 20000, "features": list(FEATURES)}))
        token = whole.generation
        assert token is not None and len(whole.files) == PEERS * FILES_PER_PEER

        def one_round(kind: str) -> None:
            message = {"port": 0} if kind == "whole" else {"port": 0, "since": token}
            total = 0
            line = b""
            for i, sock in enumerate(peers):
                message["port"] = 20000 + i
                line = _ask(sock, message)
                total += len(line)
            sent[kind].append(total)
            began = time.perf_counter()
            listing = decode_listing(line)
            if kind == "delta":
                listing = apply_delta(whole, listing)
            decode[kind].append(time.perf_counter() - began)
            assert len(listing.files) == PEERS * FILES_PER_PEER

        def measure() -> None:
            for r in range(3):
                for kind in ("whole", "delta") if r % 2 == 0 else ("delta", "whole"):
                    one_round(kind)

        benchmark.group = f"tracker: an idle round of {PEERS} p2psync peers x {FILES_PER_PEER} files"
        benchmark.pedantic(measure, rounds=1, iterations=1)
    finally:
        for sock in peers:
            sock.close()
        tracker.terminate()
        tracker.wait(10)
    w, d = statistics.median(sent["whole"]), statistics.median(sent["delta"])
    dw, dd = statistics.median(decode["whole"]), statistics.median(decode["delta"])
    benchmark.extra_info.update(whole_bytes=w, delta_bytes=d, whole_decode_s=dw, delta_decode_s=dd)
    with capsys.disabled():
        print(
            f"\nidle round, {PEERS} peers x {FILES_PER_PEER} files, 3 interleaved rounds, medians: tracker sends "
            f"{w / 1e6:.1f} MB of whole directories against {d / 1e3:.1f} kB of deltas ({w / d:.0f}x less); "
            f"a peer decodes its reply in {dw * 1e3:.1f} ms against {dd * 1e3:.3f} ms ({dw / dd:.0f}x less)"
        )
    assert d * 100 <= w  # the goal: at least 100x fewer bytes when nothing changes


def _ask(sock: socket.socket, message: dict) -> bytes:
    sock.sendall(json.dumps(message).encode() + b"\n")
    return _read_line(sock)
