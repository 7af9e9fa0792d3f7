"""A minimal classic-style peer, written for the tests from the assignment's protocol.

It shares no code with p2psync: newline JSON to the tracker with
`json.dumps` defaults, `name\\n` -> `Content-Length: N\\n` + bytes between
peers, one request per connection. If p2psync and this agree on the bytes,
classic programs and p2psync interoperate.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path


def recv_line(sock: socket.socket, held: bytes = b"") -> tuple[bytes, bytes]:
    """(line without newline, bytes after it), as the classic Buffer does."""
    while b"\n" not in held:
        chunk = sock.recv(8192)
        if not chunk:
            raise ConnectionError("closed before a full line")
        held += chunk
    line, _, rest = held.partition(b"\n")
    return line, rest


class ClassicPeer:
    def __init__(self, folder: Path, tracker: tuple[str, int]) -> None:
        self.folder = folder
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.tracker = socket.create_connection(tracker, timeout=10)
        self.held = b""
        self.sent: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def file_info(self) -> list[dict[str, object]]:
        return [
            {"name": p.name, "mtime": int(p.stat().st_mtime)}
            for p in sorted(self.folder.iterdir())
            if p.is_file() and not p.name.endswith((".py", ".so", ".dll"))
        ]

    def report(self, init: bool = True) -> dict[str, dict[str, object]]:
        """Send Init (or KeepAlive) and return the directory."""
        msg = {"port": self.port, "files": self.file_info()} if init else {"port": self.port}
        data = (json.dumps(msg) + "\n").encode()
        self.sent.append(data)
        self.tracker.sendall(data)
        line, self.held = recv_line(self.tracker, self.held)
        return json.loads(line)

    def fetch(self, name: str, ip: str, port: int, mtime: int) -> bytes:
        with socket.create_connection((ip, port), timeout=10) as sock:
            sock.sendall(name.encode() + b"\n")
            header, data = recv_line(sock)
            size = int(header.decode().split(":")[1])
            while len(data) < size:
                chunk = sock.recv(8192)
                if not chunk:
                    raise ConnectionError("short transfer")
                data += chunk
        path = self.folder / name
        path.write_bytes(data)
        os.utime(path, (mtime, mtime))
        return data

    def sync_once(self) -> None:
        directory = self.report()
        for name, info in directory.items():
            local = self.folder / name
            if not local.exists() or int(local.stat().st_mtime) < info["mtime"]:
                self.fetch(name, info["ip"], info["port"], info["mtime"])  # type: ignore[arg-type]

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                try:
                    line, _ = recv_line(conn)
                    data = (self.folder / line.decode()).read_bytes()
                    conn.sendall(b"Content-Length: %d\n" % len(data) + data)
                except (OSError, ValueError):
                    conn.sendall(b"Error: cannot serve\n")

    def close(self) -> None:
        self.server.close()
        self.tracker.close()
