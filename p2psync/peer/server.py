"""The file server of a peer: `name\\n` in, `Content-Length: N\\n` + N bytes out.

Strategy: one thread accepts and hands connections to a fixed pool of
workers through a bounded queue, so a burst of requests waits its turn
instead of being refused, and a flood past the queue gets `Error: busy`
rather than a thread each. Every exchange has an overall deadline enforced by
the watchdog (a client trickling one byte a minute is cut off), every name is
checked before the folder opens it, and every refusal is one log line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import threading
from collections.abc import Callable
from typing import Any

from p2psync import transfer
from p2psync.deadlines import Watchdog
from p2psync.errors import (
    ConnectionClosed,
    P2PSyncError,
    PeerHungUp,
    ProtocolError,
    TransferError,
    UnsafeName,
    send_failed,
)
from p2psync.events import Events
from p2psync.local import Folder, OpenFolders
from p2psync.membership import HANDSHAKE_TIMEOUT_S, server_handshake, wrap_server
from p2psync.protocol import FileRequest, decode_request, encode_refusal
from p2psync.protocol.auth import Channel
from p2psync.ratelimit import RateLimiter
from p2psync.transfer import Buffer, upload

__all__ = [
    "HELD_REPLY_BYTES",
    "MAX_QUEUED",
    "MAX_REQUEST_BYTES",
    "REQUEST_TIMEOUT_S",
    "WORKERS",
    "FileServer",
]

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 10.0  # from accept to a complete request line
MAX_REQUEST_BYTES = 4096  # one request line: a name is at most 255 bytes
WORKERS = 32  # requests served at once
MAX_QUEUED = 1024  # accepted requests waiting for a worker; past it, `Error: busy`
HELD_REPLY_BYTES = 256 * 1024  # small replies to pipelined requests are sent together, up to this much


def refuse(conn: socket.socket, reason: str) -> None:
    """Send one `Error: ...` line, if the client is still there, and close."""
    with contextlib.suppress(OSError):
        conn.sendall(encode_refusal(reason))
    conn.close()


def _who(addr: Any) -> str:
    return f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)


class FileServer:
    """Serves the files of `folder` on the listening socket `listener`."""

    def __init__(
        self,
        listener: socket.socket,
        folder: Folder,
        watchdog: Watchdog,
        buffer_size: int = 8192,
        limiter: RateLimiter | None = None,
        group_key: bytes | None = None,
        use_tls: bool = False,
        events: Events | None = None,
    ) -> None:
        self.listener = listener
        self.events = events  # where uploads in flight are shown (the live display), if anywhere
        self._group_key = group_key  # members only: every connection proves it holds this key first
        self._tls = use_tls  # members only, encrypted: TLS with the swarm's certificate first
        self.limiter = limiter  # uploads' bandwidth limit, if any
        self.folder = folder
        self.watchdog = watchdog
        self.buffer_size = buffer_size
        self._queue: queue.Queue[tuple[socket.socket, Any] | None] = queue.Queue(MAX_QUEUED)
        self._stopping = threading.Event()
        self._active: set[socket.socket] = set()  # connections being served, cut by stop()
        self._lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def start(self, name: str) -> None:
        for i in range(WORKERS):
            worker = threading.Thread(target=self._work, name=f"{name}-worker-{i}", daemon=True)
            worker.start()
            self.threads.append(worker)
        acceptor = threading.Thread(target=self._accept_forever, name=f"{name}-accept", daemon=True)
        acceptor.start()
        self.threads.append(acceptor)

    def stop(self) -> None:
        """Stop accepting; workers finish their request and leave (the caller closes the listener)."""
        self._stopping.set()
        with self._lock:  # uploads in progress end now, not when their client is done
            for conn in self._active:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        while True:  # the waiting connections get closed, the workers a stop sign each
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0].close()
        for _ in range(WORKERS):
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)

    def _accept_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, addr = self.listener.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                continue
            try:
                self._queue.put_nowait((conn, addr))
            except queue.Full:
                log.warning("peer %s: refused, %d requests already waiting", _who(addr), MAX_QUEUED)
                refuse(conn, "busy, try again later")

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._stopping.is_set():
                item[0].close()
                continue
            self.serve(*item)

    def serve(self, conn: socket.socket, addr: Any) -> None:
        """Serve requests on an accepted connection, then close it: one request,
        or several when each asks to keep the connection open (a p2psync
        extension). Never raises for anything the client did."""
        who = _who(addr)
        with contextlib.suppress(OSError):  # replies go out whole; no waiting on Nagle
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = wrap_server(conn, self._group_key, self._tls)
        reader = Buffer(conn, self.buffer_size, MAX_REQUEST_BYTES)
        held = _HeldReplies(conn, self.watchdog)
        folders = OpenFolders(self.folder)  # for one burst of pipelined requests
        shown = _ShownUpload(self.events, who.rpartition(":")[0] or who) if self.events is not None else None
        with self._lock:
            self._active.add(conn)
        try:
            if self._group_key is not None:
                held.channel = self._shake(conn, reader, who)
                if held.channel is None:
                    return
            while not self._stopping.is_set() and self._answer(conn, reader, held, who, shown, folders):
                pass
            held.send()  # what was answered before the client hung up or erred is still its due
        except (P2PSyncError, OSError) as exc:
            log.debug("peer %s: replies not delivered: %s", who, exc)
        finally:
            folders.close()
            if shown is not None:
                shown.close()
            with self._lock:
                self._active.discard(conn)
            conn.close()

    def _shake(self, conn: socket.socket, reader: Buffer, who: str) -> Channel | None:
        """Members only: the client's proof, within the handshake's deadline; None (and
        the one refusal line, sent by `server_handshake`) for anything else."""
        assert self._group_key is not None
        conn.settimeout(HANDSHAKE_TIMEOUT_S)
        try:
            with self.watchdog.limit(conn, HANDSHAKE_TIMEOUT_S, "the handshake"):
                return server_handshake(conn, reader, self._group_key, b"peer")
        except (P2PSyncError, OSError) as exc:
            log.info("peer %s: not a member of this swarm (%s); closing", who, type(exc).__name__)
            return None

    def _answer(
        self,
        conn: socket.socket,
        reader: Buffer,
        held: _HeldReplies,
        who: str,
        shown: _ShownUpload | None = None,
        folders: OpenFolders | None = None,
    ) -> bool:
        """Answer one request; whether the client asked to send another."""
        fd = -1
        try:
            line = reader.poll_line()  # pipelined: the next request may be here already
            if line is None:
                if folders is not None:
                    folders.close()  # the burst is over: the next one walks the folders afresh
                held.send()  # the client has asked for nothing more yet: give it what it asked for
                conn.settimeout(REQUEST_TIMEOUT_S)
                with self.watchdog.limit(conn, REQUEST_TIMEOUT_S, "the request"):
                    line = reader.read_line()
            if held.channel is not None:
                line = held.channel.open(line)
            request = decode_request(line)
            seal = held.channel.seal if held.channel is not None else None
            if (
                folders is not None
                and request.keep_open
                and not (request.chunks or request.offset)
                and request.length is None
            ):
                reply = self._whole_small(request, folders)  # a pipeline's small file: one call of the core
                if reply is not None:
                    reply = transfer.sealed_reply(reply, seal)
                    if self.limiter is not None:
                        self.limiter.take(len(reply))
                    held.add(reply)
                    log.debug("served %s to %s", request.name, who)
                    return True
            fd, st = self.folder.open_for_serving(request.name, folders)
            if request.sha256 is not None and self.folder.digest(fd, st) != request.sha256:
                raise UnsafeName(f"{request.name!r}: that version is no longer here")
            if request.chunks:  # its chunk list instead of its bytes (cut now, or from the index)
                held.add(transfer.sealed_reply(transfer.body_reply(self.folder.chunk_list(fd, st).encode()), seal))
                return request.keep_open
            reply = transfer.small_reply(fd, st, request.offset, request.length) if request.keep_open else None
            if reply is not None:
                reply = transfer.sealed_reply(reply, seal)
                if self.limiter is not None:
                    self.limiter.take(len(reply))
                held.add(reply)  # sent with the replies to the requests that follow it
            else:
                held.send()
                conn.settimeout(transfer.BASE_TRANSFER_S)
                nbytes = st.st_size - request.offset if request.length is None else request.length
                sent = shown.sending(request.name) if shown is not None else None
                with self.watchdog.limit(conn, transfer.transfer_deadline(nbytes), "the upload"):
                    upload(conn, fd, st, request.offset, self.limiter, seal, request.length, sent)
            log.debug("served %s (from byte %d) to %s", request.name, request.offset, who)
            return request.keep_open
        except ConnectionClosed:
            log.debug("peer %s: closed the connection", who)
        except TimeoutError:
            log.warning("peer %s: no request within %g s; closing", who, REQUEST_TIMEOUT_S)
        except FileNotFoundError:
            log.info("peer %s: asked for a file this peer does not have; refusing", who)
            held.refuse("no such file")
        except (UnsafeName, ProtocolError) as exc:
            log.warning("peer %s: %s; refusing", who, exc)
            held.refuse(str(exc))
        except PeerHungUp:
            log.debug("peer %s: closed the connection during an upload", who)
        except TransferError as exc:
            log.warning("peer %s: transfer aborted: %s", who, exc)
        except P2PSyncError as exc:
            log.warning("peer %s: %s; closing", who, exc)
        except OSError as exc:
            log.warning("peer %s: %s; closing", who, exc)
            held.refuse("cannot read that file")
        finally:
            if fd >= 0:
                os.close(fd)
        return False

    def _whole_small(self, request: FileRequest, folders: OpenFolders) -> bytes | None:
        """The reply to a request for a whole small file of the version it names, read
        by the core; None when the file takes the slower way (large, not a regular
        file, or a version whose hash the scan has not cached: `open_for_serving`,
        then hashed). Raises what that way raises for a file that is not there or
        not that version."""
        got = self.folder.read_to_serve(request.name, folders, transfer.whole_small_reply)
        if got is None or got[1] is None:
            return None
        reply, digest = got
        if digest != request.sha256:
            raise UnsafeName(f"{request.name!r}: that version is no longer here")
        return reply


class _ShownUpload:
    """The display's row for what one connection is sent of a large file: one row
    per file, across the runs of chunks a receiver asks for one after another
    (a delta's total is the receiver's to know: the row counts what was sent)."""

    def __init__(self, events: Events, to: str) -> None:
        self._events, self._to = events, to
        self._row: contextlib.ExitStack | None = None
        self._path: str | None = None
        self._sent = 0  # read by the display's thread

    def sending(self, path: str) -> Callable[[int], None]:
        """Count an upload of `path` (a new row unless it is the file being sent)."""
        if path != self._path:
            self.close()
            self._row = contextlib.ExitStack()
            self._row.enter_context(self._events.transfer(path, 0, -1, progress=lambda: self._sent, to=self._to))
            self._path, self._sent = path, 0
        before = self._sent

        def sent(nbytes: int) -> None:
            self._sent = before + nbytes

        return sent

    def close(self) -> None:
        if self._row is not None:
            self._row.close()
            self._row, self._path = None, None


class _HeldReplies:
    """Whole small replies to pipelined requests, held until the client has asked
    for nothing more (or enough is held), then sent in one piece: one system
    call and one deadline for a batch of files instead of one each. Replies
    always leave in the order they were asked for."""

    def __init__(self, conn: socket.socket, watchdog: Watchdog) -> None:
        self.conn = conn
        self.watchdog = watchdog
        self._replies: list[bytes] = []
        self._bytes = 0
        self.channel: Channel | None = None  # members only: tags every line sent

    def add(self, reply: bytes) -> None:
        self._replies.append(reply)
        self._bytes += len(reply)
        if self._bytes >= HELD_REPLY_BYTES:
            self.send()

    def send(self) -> None:
        """Send what is held. Raises `TransferError` if the client does not take it."""
        if not self._replies:
            return
        data = b"".join(self._replies)
        self._replies.clear()
        self._bytes = 0
        self.conn.settimeout(transfer.BASE_TRANSFER_S)
        with self.watchdog.limit(self.conn, transfer.transfer_deadline(len(data)), "the upload"):
            try:
                self.conn.sendall(data)
            except OSError as exc:
                raise send_failed(exc.errno, exc.strerror or str(exc)) from None

    def refuse(self, reason: str) -> None:
        """Send what is held, then refuse the request after it, and close."""
        with contextlib.suppress(P2PSyncError, OSError):
            self.send()
        if self.channel is None:
            refuse(self.conn, reason)
        else:
            with contextlib.suppress(OSError):
                self.conn.sendall(self.channel.seal(encode_refusal(reason).rstrip(b"\n")))
