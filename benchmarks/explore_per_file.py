"""One-off exploration, not a pytest suite: what one small file costs each side of a join.

    python benchmarks/explore_per_file.py

A tree of 100 folders x 100 files x 4 KiB in RAM (/dev/shm when there is
one), then, in this process, 5 rounds of each of:

- serve: the file server answering 10,000 pipelined keep-open requests (the
  form a joining p2psync sends) on one connection, a socketpair; the serving
  thread's CPU time (`time.thread_time`), without the threads that feed the
  requests and drain the replies;
- receive: the joining side's loop over 10,000 replies already sent (read
  the header, take the body, SHA-256 it, build its `Install`); its CPU time;
- install: `Folder.install_many` in batches of 32 into an empty folder with
  its index, as the pipeline's install thread runs it; user and system time.

Prints the median microseconds a file for each. The numbers are for
comparing one version of the code with another on the same machine.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import statistics
import tempfile
import threading
import time

from p2psync.deadlines import Watchdog
from p2psync.ignore import IgnoreRules
from p2psync.local import Folder, Install
from p2psync.peer.server import FileServer
from p2psync.protocol import decode_reply, encode_header, encode_request
from p2psync.transfer import Buffer, recv_body

FOLDERS, PER_FOLDER, SIZE = 100, 100, 4096
FILES = FOLDERS * PER_FOLDER
ROUNDS = 5
BASE = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


def _names() -> list[str]:
    return [f"dir-{d:03}/file-{i:03}.dat" for d in range(FOLDERS) for i in range(PER_FOLDER)]


def _make_tree(root: str) -> None:
    for name in _names():
        os.makedirs(os.path.join(root, os.path.dirname(name)), exist_ok=True)
        with open(os.path.join(root, name), "wb") as file:
            file.write(os.urandom(SIZE))


def _pump(sock: socket.socket, data: bytes) -> threading.Thread:
    def send() -> None:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)

    thread = threading.Thread(target=send)
    thread.start()
    return thread


def _drain(sock: socket.socket) -> threading.Thread:
    def drain() -> None:
        while sock.recv(1 << 20):
            pass

    thread = threading.Thread(target=drain)
    thread.start()
    return thread


def serve_round(server: FileServer, requests: bytes) -> float:
    ours, theirs = socket.socketpair()
    feeder, drainer = _pump(theirs, requests), _drain(theirs)
    began = time.thread_time()
    server.serve(ours, ("127.0.0.1", 1))
    took = time.thread_time() - began
    feeder.join()
    drainer.join()
    theirs.close()
    return took


def receive_round(replies: bytes, shas: list[str]) -> float:
    ours, theirs = socket.socketpair()
    feeder = _pump(theirs, replies)
    reader = Buffer(ours, 64 * 1024, 4096)  # as the pipeline reads
    began = time.thread_time()
    held = []
    for i, name in enumerate(_names()):
        data = recv_body(ours, reader, decode_reply(reader.read_line()))
        if hashlib.sha256(data).hexdigest() != shas[i]:
            raise RuntimeError("bad body")
        held.append(Install(name, data, 1_700_000_000, shas[i], 0o644, None, (("BENCH", 1),)))
    took = time.thread_time() - began
    feeder.join()
    ours.close()
    theirs.close()
    return took


def install_round(root: str, installs: list[Install]) -> tuple[float, float]:
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    folder = Folder(root, IgnoreRules.tree(), state=True)
    before = os.times()
    for start in range(0, len(installs), 32):
        folder.install_many(installs[start : start + 32])
    after = os.times()
    folder.close()
    return after.user - before.user, after.system - before.system


def main() -> None:
    work = tempfile.mkdtemp(prefix="p2psync-per-file-", dir=BASE)
    try:
        tree = os.path.join(work, "tree")
        _make_tree(tree)
        folder = Folder(tree, IgnoreRules.tree())
        files = folder.scan()
        names = _names()
        shas = [files[n].sha256 for n in names]
        requests = b"".join(encode_request(n, 0, s, keep_open=True) for n, s in zip(names, shas, strict=True))
        bodies = []
        for name in names:
            with open(os.path.join(tree, name), "rb") as file:
                bodies.append(file.read())
        replies = b"".join(encode_header(len(b)) + b for b in bodies)
        installs = [
            Install(n, b, 1_700_000_000, s, 0o644, None, (("BENCH", 1),))
            for n, b, s in zip(names, bodies, shas, strict=True)
        ]
        server = FileServer(socket.socket(), folder, Watchdog())
        serve, receive, install_user, install_sys = [], [], [], []
        for _ in range(ROUNDS):
            serve.append(serve_round(server, requests))
            receive.append(receive_round(replies, shas))
            user, system = install_round(os.path.join(work, "dest"), installs)
            install_user.append(user)
            install_sys.append(system)
        folder.close()

        def per_file(values: list[float]) -> str:
            return f"{statistics.median(values) / FILES * 1e6:.1f} us"

        print(f"{FILES} files of {SIZE} B in {BASE}, median of {ROUNDS} rounds, CPU time a file:")
        print(f"  serve (the holder's serving thread):  {per_file(serve)}")
        print(f"  receive (header, body, SHA-256):      {per_file(receive)}")
        print(f"  install_many: user {per_file(install_user)}, system {per_file(install_sys)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
