"""Hand-made holders for tests: a file server whose every answer the test decides."""

from __future__ import annotations

import hashlib
import socket
import threading

from .classic_peer import recv_line
from .loopback import LOOPBACK


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def info_for(data: bytes, port: int, mtime: int = 2000) -> dict:
    return {"ip": LOOPBACK, "port": port, "mtime": mtime, "size": len(data), "sha256": sha(data)}


class Holder:
    """A hand-made holder: records each request line, answers with `answer(request)`."""

    def __init__(self, answer) -> None:
        self.listener = socket.create_server((LOOPBACK, 0))
        self.port = self.listener.getsockname()[1]
        self.requests: list[bytes] = []
        self.connections = 0
        self.answer = answer
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            self._handle(conn)

    def _handle(self, conn: socket.socket) -> None:
        """One request per connection, answered in the accepting thread."""
        with conn:
            try:
                line, _ = recv_line(conn)
                self.requests.append(line)
                self.answer(conn, line)
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()


class PipelineHolder(Holder):
    """A hand-made p2psync holder that keeps connections open for keep-open
    requests, each on its own thread. `reply(name)` gives each reply's bytes
    (None: hang up instead)."""

    def __init__(self, reply) -> None:
        self.reply = reply
        super().__init__(answer=None)

    def _handle(self, conn: socket.socket) -> None:
        threading.Thread(target=self._answer_all, args=(conn,), daemon=True).start()

    def _answer_all(self, conn: socket.socket) -> None:
        held = b""
        with conn:
            try:
                while True:
                    line, held = recv_line(conn, held)
                    self.requests.append(line)
                    answer = self.reply(line.split(b"\x00")[0].decode())
                    if answer is None:
                        return
                    conn.sendall(answer)
                    if not line.endswith(b"\x00keep-open"):
                        return
            except OSError:
                pass
