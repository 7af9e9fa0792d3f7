"""The tracker: answers every peer message with the directory, over many connections.

Strategy: one thread runs a `selectors` loop over non-blocking sockets. Peer
connections are long-lived and mostly idle (a KeepAlive every 5 s), so one
loop serves thousands of them without a thread each, and the directory reply
is encoded once per change and written to every peer from the same bytes. A
connection that breaks the protocol, sends a line over the limit, or stays
silent past the timeout is logged in one line and closed; the loop goes on.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import ssl
import threading
import time
from dataclasses import dataclass

from p2psync import tls
from p2psync.errors import P2PSyncError, ProtocolError, UnsafeName
from p2psync.net import is_loopback
from p2psync.paths import safe_path
from p2psync.protocol import FileInfo, decode_peer_message
from p2psync.protocol.auth import MAX_HANDSHAKE_LINE, REFUSAL, Channel, ServerHandshake
from p2psync.sync.versions import Deletion
from p2psync.transfer import LineSplitter

from .directory import Directory, PeerKey
from .shared import REFRESH_S, Change, RedisState

__all__ = [
    "IDENTIFY_TIMEOUT_S",
    "MAX_BUFFERED_BYTES",
    "MAX_CONNECTIONS",
    "MAX_MESSAGE_BYTES",
    "PEER_TIMEOUT_S",
    "Tracker",
]

log = logging.getLogger(__name__)

PEER_TIMEOUT_S = 180.0  # the classic liveness rule
IDENTIFY_TIMEOUT_S = 30.0  # a new connection must send its first message within this
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # one Init line: room for ~300,000 paths with their hashes and vectors
MAX_CONNECTIONS = 4096  # past it, new connections are closed at once (one log line each)
MAX_BUFFERED_BYTES = 256 * 1024 * 1024  # unfinished messages of all connections together
_RECV_BYTES = 256 * 1024
_SWEEP_INTERVAL_S = 1.0
_TOMBSTONE_SWEEP_S = 60.0  # old deletions are forgotten this often


_NOTHING = memoryview(b"")


@dataclass(eq=False)
class _Connection:
    sock: socket.socket
    address: tuple[str, int]
    splitter: LineSplitter
    last_seen: float
    loopback_alias: str | None  # see Directory.encoded
    peer: PeerKey | None = None
    out: memoryview = _NOTHING  # the unsent rest of a reply: a view of the shared encoded directory
    buffered: int = 0  # bytes of an unfinished message held for it, as last counted
    seen_generation: int = -1  # the directory generation of the last reply sent
    held_until: float | None = None  # a long poll: its reply is owed by then, or at the next change
    features: tuple[str, ...] = ()  # what the peer declared (none: a classic peer, answered the classic way)
    since: str | None = None  # the directory generation the peer said it holds: its reply may be a delta
    handshake: ServerHandshake | None = None  # members only: until the peer has proved it holds the key
    proved_hello: bool = False  # its first handshake line was answered
    channel: Channel | None = None  # members only: its lines' tags, from the handshake on
    tls_state: str | None = None  # --tls: "first byte" (not yet seen), "handshake", then None

    @property
    def name(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = socket.create_server((host, port), family=family, backlog=1024)
    server.setblocking(False)
    return server


class Tracker(threading.Thread):
    """`Tracker(port, host="0.0.0.0")`: a thread; `start()` serves, `exit()` stops.

    The listening socket is bound by the constructor (port 0: any free port;
    `port` holds the real one afterwards), so peers can connect right away.
    """

    def __init__(
        self,
        port: int,
        host: str = "0.0.0.0",
        *,
        peer_timeout: float = PEER_TIMEOUT_S,
        identify_timeout: float = IDENTIFY_TIMEOUT_S,
        max_message: int = MAX_MESSAGE_BYTES,
        max_connections: int = MAX_CONNECTIONS,
        max_buffered: int = MAX_BUFFERED_BYTES,
        shared: RedisState | None = None,
        group_key: bytes | None = None,
        use_tls: bool = False,
    ) -> None:
        super().__init__(name=f"p2psync-tracker-{port}", daemon=True)
        self.host = host
        self.server = _listen(host, port)
        self.port: int = self.server.getsockname()[1]
        self.peer_timeout = peer_timeout
        self.identify_timeout = identify_timeout
        self.max_message = max_message
        self.max_connections = max_connections
        self.max_buffered = max_buffered
        self._buffered = 0  # sum of every connection's `buffered`
        self.directory = Directory()
        self._connections: dict[socket.socket, _Connection] = {}
        self._owner: dict[PeerKey, _Connection] = {}  # the live connection that speaks for a peer
        self._held: dict[_Connection, None] = {}  # long polls waiting for a change (an ordered set)
        self._held_generation = 0  # the directory generation the held polls were last checked against
        self._next_due = float("inf")  # when the earliest held poll is due
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)  # a wake-up never blocks its sender: a full buffer is awake enough
        self._stopping = threading.Event()
        # Several trackers, one swarm (shared.py): this one's peers go out, the others' come in.
        self.shared = shared
        self._group_key = group_key  # members only: every connection proves it holds this key first
        # members only, encrypted: TLS with the swarm's certificate before the handshake
        self._tls = tls.contexts(group_key) if use_tls and group_key is not None else None
        self._publishing = shared is not None  # off while stopping: the records stay for failover

    # ------------------------------------------------------------ public

    @property
    def connections(self) -> list[tuple[str, int]]:
        """Addresses of the peer connections open now."""
        return [c.address for c in list(self._connections.values())]

    def exit(self) -> None:
        """Stop serving and close every socket; returns within a second."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self.is_alive() and threading.current_thread() is not self:
            self.join(1.0)
        if not self.is_alive():
            self._close_all()

    def _wake_loop(self) -> None:
        """From another thread: have the loop look at the shared state's changes now."""
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def run(self) -> None:
        selector = self._selector
        selector.register(self.server, selectors.EVENT_READ, None)
        selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        log.info("tracker listening on %s:%d", self.host, self.port)
        next_sweep = time.monotonic() + _SWEEP_INTERVAL_S
        next_expiry = time.monotonic()
        next_refresh = time.monotonic()
        if self.shared is not None:
            self.shared.start(self._wake_loop)
        try:
            while not self._stopping.is_set():
                for key, mask in selector.select(timeout=self._select_timeout()):
                    if key.data is None:
                        self._accept()
                    elif key.data == "wake":
                        with contextlib.suppress(BlockingIOError, InterruptedError):
                            self._wake_r.recv(4096)  # drained: one wake-up may stand for many
                        continue
                    else:
                        self._service(key.data, mask)
                if self.shared is not None:
                    self._apply_shared(self.shared.changes())
                now = time.monotonic()
                self._answer_held(now)
                if self.shared is not None and now >= next_refresh:
                    self.shared.refresh(list(self._owner))
                    next_refresh = now + REFRESH_S
                if now >= next_sweep:
                    self._expire_silent(now)
                    next_sweep = now + _SWEEP_INTERVAL_S
                    if now >= next_expiry:
                        self.directory.expire(time.time())  # deletions carry wall-clock times
                        next_expiry = now + _TOMBSTONE_SWEEP_S
        except Exception:  # a bug, not bad input: say so loudly, free the port
            log.exception("tracker loop failed")
        finally:
            self._close_all()

    # ------------------------------------------------------------ connections

    def _accept(self) -> None:
        for _ in range(256):  # bounded, so a flood of connects cannot starve the others
            try:
                sock, address = self.server.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: log, keep serving the rest
                log.warning("tracker: accept failed: %s", exc)
                return
            if len(self._connections) >= self.max_connections:
                log.warning("peer %s:%d: refused, %d connections open already", *address[:2], self.max_connections)
                sock.close()
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            local_ip = sock.getsockname()[0]
            alias = None if is_loopback(address[0]) else local_ip
            conn = _Connection(sock, address[:2], LineSplitter(self.max_message), time.monotonic(), alias)
            if self._group_key is not None:
                conn.handshake = ServerHandshake(self._group_key, b"tracker")
            if self._tls is not None:
                conn.tls_state = "first byte"
            self._connections[sock] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)
            log.debug("peer %s connected", conn.name)

    def _service(self, conn: _Connection, mask: int) -> None:
        try:
            if conn.tls_state is not None and not self._tls_step(conn):
                return
            if mask & selectors.EVENT_WRITE:
                self._flush(conn)
            if mask & selectors.EVENT_READ and not conn.out:
                data = self._recv(conn)
                if data is None:
                    return
                if not data:
                    self._close(conn, "closed the connection")
                    return
                conn.splitter.feed(data)
                if conn.handshake is not None and conn.splitter.pending_bytes > MAX_HANDSHAKE_LINE:
                    self._refuse(conn)  # a handshake line is short: do not hold a long one
                    return
                if conn.held_until is not None:  # a new message ends a long poll: its reply goes first
                    self._reply(conn)
            self._answer_lines(conn)
            self._account(conn)
        except P2PSyncError as exc:
            self._close(conn, str(exc), level=logging.WARNING)
        except OSError as exc:
            self._close(conn, f"connection error: {exc.strerror or exc}")

    @staticmethod
    def _recv(conn: _Connection) -> bytes | None:
        """What arrived (b"": the peer closed); None when TLS has no whole record yet.
        A TLS record is taken whole: what it holds past one read is read too, since
        the selector cannot see bytes OpenSSL holds."""
        sock = conn.sock
        if not isinstance(sock, ssl.SSLSocket):
            return sock.recv(_RECV_BYTES)
        try:
            data = sock.recv(_RECV_BYTES)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return None
        while data and sock.pending():
            data += sock.recv(sock.pending())
        return data

    def _tls_step(self, conn: _Connection) -> bool:
        """--tls: move a new connection's TLS handshake on; whether it is done. A
        first byte that cannot start TLS gets the one refusal line in clear."""
        assert self._tls is not None
        if conn.tls_state == "first byte":
            try:
                first = conn.sock.recv(1, socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                return False
            if not first:
                self._close(conn, "closed the connection")
                return False
            if not tls.is_tls_start(first):
                with contextlib.suppress(OSError):  # read what it sent: closing on unread bytes resets the line
                    conn.sock.recv(MAX_HANDSHAKE_LINE)
                self._refuse(conn)
                return False
            self._rewrap(conn, self._tls.server_socket(conn.sock))
            conn.tls_state = "handshake"
        sock = conn.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
            self._tls.check_peer(sock)
        except ssl.SSLWantReadError:
            self._selector.modify(sock, selectors.EVENT_READ, conn)
            return False
        except ssl.SSLWantWriteError:
            self._selector.modify(sock, selectors.EVENT_WRITE, conn)
            return False
        except (OSError, ProtocolError):  # ssl.SSLError included: not the swarm's certificate
            self._close(conn, "not a member of this swarm (TLS)", level=logging.INFO)
            return False
        conn.tls_state = None
        self._selector.modify(sock, selectors.EVENT_READ, conn)
        return True

    def _rewrap(self, conn: _Connection, wrapped: socket.socket) -> None:
        """`conn` speaks through `wrapped` from now on (wrapping spends the old socket
        object, so the selector and the table learn the new one)."""
        self._selector.unregister(conn.sock)
        del self._connections[conn.sock]
        conn.sock = wrapped
        self._connections[wrapped] = conn
        self._selector.register(wrapped, selectors.EVENT_READ, conn)

    def _answer_lines(self, conn: _Connection) -> None:
        # One reply at a time: a peer that does not read its replies stops
        # being read, so its unsent output stays one directory long.
        while not conn.out and conn.held_until is None and (line := conn.splitter.next_line()) is not None:
            if conn.handshake is not None:
                if not self._shake(conn, line):
                    return
                continue
            if conn.channel is not None:
                line = conn.channel.open(line)  # a bad tag: ProtocolError, the connection is closed
            conn.last_seen = time.monotonic()
            wait = self._handle(conn, line)
            if wait and conn.seen_generation == self.directory.generation and not conn.splitter.pending_bytes:
                # A long poll, and the peer has this directory already: answer at the next change.
                conn.held_until = conn.last_seen + wait
                self._held[conn] = None
                self._next_due = min(self._next_due, conn.held_until)
            else:
                self._reply(conn)
        self._watch_events(conn)

    def _shake(self, conn: _Connection, line: bytes) -> bool:
        """One handshake line of a members-only connection; whether it goes on."""
        assert conn.handshake is not None
        try:
            if not conn.proved_hello:
                conn.out = memoryview(conn.handshake.hello(line))
                conn.proved_hello = True
                self._flush(conn)
            else:
                conn.channel = conn.handshake.proof(line)
                conn.handshake = None
        except ProtocolError:
            self._refuse(conn)
            return False
        return True

    def _refuse(self, conn: _Connection) -> None:
        """Not a member: the one refusal line (whatever went wrong), then the close."""
        with contextlib.suppress(OSError):
            conn.sock.send(REFUSAL)
        self._close(conn, "not a member of this swarm", level=logging.INFO)

    def _reply(self, conn: _Connection) -> None:
        """Start sending `conn` the directory (a long poll held for it ends here)."""
        if conn.held_until is not None:
            conn.held_until = None
            self._held.pop(conn, None)
        # shared, never copied: one encoded reply per shape
        since = conn.since if "delta" in conn.features else None
        line = self.directory.encoded(conn.loopback_alias, bool(conn.features), since)
        if conn.channel is not None:  # members only: the shared line, then this connection's tag
            line = line[:-1] + conn.channel.trailer(line[:-1])
        conn.out = memoryview(line)
        conn.seen_generation = self.directory.generation
        self._flush(conn)

    def _watch_events(self, conn: _Connection) -> None:
        """Wait to write while a reply is unsent, else to read."""
        if conn.sock in self._connections:
            events = selectors.EVENT_WRITE if conn.out else selectors.EVENT_READ
            if self._selector.get_key(conn.sock).events != events:
                self._selector.modify(conn.sock, events, conn)

    def _select_timeout(self) -> float:
        """Until the next sweep, or sooner if a long poll is due."""
        return min(_SWEEP_INTERVAL_S, max(0.0, self._next_due - time.monotonic()))

    def _answer_held(self, now: float) -> None:
        """Answer the long polls whose directory changed, or whose time is up. Looks
        at them only when the directory changed or one is due: an idle loop with
        thousands of held polls costs nothing per event."""
        generation = self.directory.generation
        if generation == self._held_generation and now < self._next_due:
            return
        self._held_generation = generation
        for conn in [c for c in self._held if c.seen_generation != generation or (c.held_until or 0.0) <= now]:
            try:
                self._reply(conn)
                self._watch_events(conn)
            except OSError as exc:
                self._close(conn, f"connection error: {exc.strerror or exc}")
        self._next_due = min((c.held_until or 0.0 for c in self._held), default=float("inf"))

    def _flush(self, conn: _Connection) -> None:
        try:
            sent = conn.sock.send(conn.out)  # TLS: all or nothing; retried with the same bytes
        except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return
        conn.out = conn.out[sent:] if sent < len(conn.out) else _NOTHING

    def _handle(self, conn: _Connection, line: bytes) -> float:
        """Take in one peer message; how long its reply may be held (a long poll), else 0."""
        message = decode_peer_message(line)
        peer = (conn.address[0], message.port)
        if conn.peer != peer:
            self._claim(conn, peer)
        if message.files is not None or message.features:
            conn.features = message.features  # an Init says what the peer can do; a classic one says nothing
        conn.since = message.since
        if message.files is None:
            self.directory.join(peer)
        else:
            files, deleted = self._safe_files(conn, message.files), self._safe_deletions(conn, message.deleted)
            if self.directory.report(peer, files, deleted):
                log.debug("directory changed: %d files after a report from %s", len(self.directory), conn.name)
            if self.shared is not None:
                self.shared.publish_report(peer, files, deleted)
        return message.wait

    def _apply_shared(self, changes: list[Change]) -> None:
        """Other trackers' changes, into this tracker's mirror. This tracker's own peers
        are its own to say: what others say of them is not applied."""
        for change in changes:
            if change.snapshot is not None:
                local = set(self._owner)
                for peer in set(self.directory.peers) - local - change.snapshot.keys():
                    self.directory.forget(peer)  # gone while this tracker was not listening
                for peer, (files, deleted) in change.snapshot.items():
                    if peer not in local:
                        self.directory.report(peer, files, deleted)
                self.directory.add_deletions(change.deleted)
            elif change.peer is not None and change.peer not in self._owner:
                if change.files is None:
                    self.directory.forget(change.peer)
                else:
                    self.directory.report(change.peer, change.files, change.deleted)

    def _claim(self, conn: _Connection, peer: PeerKey) -> None:
        """Let `conn` speak for `peer`; an older connection of the same peer is dead."""
        self._release(conn)
        previous = self._owner.get(peer)
        if previous is not None and previous is not conn:
            self._close(previous, "replaced by a new connection of the same peer")
        self._owner[peer] = conn
        conn.peer = peer

    @staticmethod
    def _safe_files(conn: _Connection, files: tuple[FileInfo, ...]) -> list[FileInfo]:
        kept = []
        for info in files:
            try:
                safe_path(info.name)
            except UnsafeName as exc:
                log.warning("peer %s: skipping a listed file: %s", conn.name, exc)
                continue
            kept.append(info)
        return kept

    @staticmethod
    def _safe_deletions(conn: _Connection, deleted: tuple[tuple[str, Deletion], ...]) -> list[tuple[str, Deletion]]:
        kept = []
        for name, deletion in deleted:
            try:
                safe_path(name)
            except UnsafeName as exc:
                log.warning("peer %s: skipping a listed deletion: %s", conn.name, exc)
                continue
            kept.append((name, deletion))
        return kept

    def _expire_silent(self, now: float) -> None:
        for conn in list(self._connections.values()):
            limit = self.peer_timeout if conn.peer is not None else self.identify_timeout
            if now - conn.last_seen > limit:
                self._close(conn, f"silent for over {limit:g} s", level=logging.INFO)

    def _account(self, conn: _Connection) -> None:
        """Keep the bytes held for unfinished messages of all connections under
        `max_buffered`: past it, the connection holding the most is dropped."""
        if conn.sock not in self._connections:
            return  # closed meanwhile (refused): its bytes are no longer counted
        held = conn.splitter.pending_bytes
        self._buffered += held - conn.buffered
        conn.buffered = held
        if self._buffered > self.max_buffered:
            hog = max(self._connections.values(), key=lambda c: c.buffered)
            reason = f"holds {hog.buffered} bytes of an unfinished message while all buffers are full"
            self._close(hog, f"{reason} ({self.max_buffered} bytes)", level=logging.WARNING)

    def _close(self, conn: _Connection, reason: str, level: int = logging.DEBUG) -> None:
        if self._connections.pop(conn.sock, None) is None:
            return
        self._held.pop(conn, None)
        self._buffered -= conn.buffered
        log.log(level, "peer %s: %s; closing", conn.name, reason)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn.sock)
        self._release(conn)
        conn.sock.close()  # last: whoever sees the close sees the directory without it

    def _release(self, conn: _Connection) -> None:
        """`conn` no longer speaks for its peer: forget that peer's files, if it was the one speaking."""
        if conn.peer is not None and self._owner.get(conn.peer) is conn:
            del self._owner[conn.peer]
            self.directory.forget(conn.peer)
            if self.shared is not None and self._publishing:
                self.shared.publish_forget(conn.peer)

    def _close_all(self) -> None:
        self._publishing = False  # a stopping tracker's peers move to another one: their records stay
        for conn in list(self._connections.values()):
            self._close(conn, "tracker stopping")
        self._selector.close()
        if self.shared is not None:
            self.shared.stop()
        for sock in (self.server, self._wake_r, self._wake_w):
            sock.close()
