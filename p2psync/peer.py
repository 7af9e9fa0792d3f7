"""The peer: serves its folder to other peers and fetches what the tracker says is newer.

Strategy: `FileSynchronizer` keeps the classic API and shape (a thread, a
listening `server`, a tracker `client`, `msg`, `sync`, `syncfile`,
`process_message`) so code written against the classic assignment runs
unchanged. Underneath: every request is served on its own short-lived thread
(bounded), bytes move through the core's copy loops, every name goes through
`safe_name`, downloads are hashed while received and installed atomically,
and a tracker failure is logged and retried with backoff instead of ending
the process.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from .deadlines import Watchdog
from .errors import ProtocolError
from .fetch import Fetcher
from .files import Folder, LocalFile, get_file_info
from .protocol import (
    DirectoryEntry,
    FileInfo,
    decode_directory,
    decode_entry,
    encode_init,
    encode_keepalive,
)
from .server import FileServer
from .transfer import Buffer
from .watching import FolderWatcher, require_watching

__all__ = [
    "Buffer",
    "FileSynchronizer",
    "check_port_available",
    "get_file_info",
    "get_next_available_port",
    "get_next_avaliable_port",
    "bind_first_free",
    "main",
]

log = logging.getLogger(__name__)

SYNC_INTERVAL_S = 5.0  # the classic round
FIRST_SYNC_DELAY_S = 2.0  # the classic first round, after start()
TRACKER_TIMEOUT_S = 180.0  # the classic client timeout
MAX_BACKOFF_S = 60.0  # longest wait between tries to reach a tracker that is down
MAX_DIRECTORY_BYTES = 64 * 1024 * 1024  # one directory line from the tracker: ~500,000 entries
CHANGE_SETTLE_S = 0.1  # after a watched change, wait this long so a burst of changes makes one round
FULL_SCAN_INTERVAL_S = 60.0  # when watching, rescan at least this often anyway (a missed event heals)
POLL_WAIT_S = 25.0  # a watching peer's KeepAlive lets the tracker hold the reply until a change, this long
POLL_HELD_S = 1.0  # a reply slower than this shows the tracker holds long polls (classic ones never do)


# ------------------------------------------------------------------ classic helpers


def check_port_available(port: int) -> bool:
    """Whether `port` can be bound for listening on every IPv4 address now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as our servers bind
        try:
            probe.bind(("", port))
        except OSError:
            return False
    return True


def get_next_available_port(initial: int) -> int:
    """The first port from `initial` up that can be bound. Raises `OSError` if none."""
    for port in range(initial, 65536):
        if check_port_available(port):
            return port
    raise OSError(f"no free port from {initial} up")


get_next_avaliable_port = get_next_available_port  # the classic spelling

T = TypeVar("T")


def bind_first_free(build: Callable[[int], T], initial: int, tries: int = 20) -> T:
    """`build(port)` on the first free port from `initial`, retrying past ports that
    another process took between the check and the bind."""
    port = initial
    for _ in range(tries):
        port = get_next_available_port(port)
        try:
            return build(port)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            port += 1
    raise OSError(errno.EADDRINUSE, f"no free port from {initial} after {tries} tries")


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


# ------------------------------------------------------------------ the peer


class FileSynchronizer(threading.Thread):
    """A peer serving and syncing the current working directory (as at construction).

    The constructor binds `server` on `(host, port)` (port 0: any free port)
    and creates the tracker socket `client` with a 180 s timeout, unconnected.
    """

    BUFFER_SIZE = 8192

    def __init__(
        self,
        trackerhost: str,
        trackerport: int,
        port: int,
        host: str = "0.0.0.0",
        *,
        interval: float = SYNC_INTERVAL_S,
        first_delay: float = FIRST_SYNC_DELAY_S,
        max_backoff: float = MAX_BACKOFF_S,
        max_file_size: int | None = None,
        watch: bool = False,
    ) -> None:
        super().__init__(name=f"p2psync-peer-{port}", daemon=True)
        if watch:
            require_watching()  # before anything is opened or bound
        self.trackerhost = trackerhost
        self.trackerport = trackerport
        self.host = host
        self.interval = interval
        self.first_delay = first_delay
        self.max_backoff = max_backoff
        self.folder = Folder(os.getcwd())
        self.server = socket.socket(_family(host), socket.SOCK_STREAM)
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.server.bind((host, port))
            self.server.listen(128)
        except OSError:
            self.server.close()
            self.folder.close()
            raise
        self.port: int = self.server.getsockname()[1]
        self.name = f"p2psync-peer-{self.port}"
        self.client = self._new_client()
        self._reader: Buffer | None = None
        self._local = self.folder.scan()
        self._last_scan = time.monotonic()
        self._rescan = threading.Event()  # the folder may differ from the last scan
        self._wake = threading.Event()  # run a round now (a watched change, or exit)
        # With `watch`, a round with no change skips the rescan, and a change starts a round.
        self._watcher = FolderWatcher(self.folder.root, self._on_folder_change) if watch else None
        self._send_lock = threading.Lock()  # the round and a watched change both send to the tracker
        self._owed = 0  # replies the tracker owes on this connection
        self._polling = False  # a long poll is out: a watched change cuts it short
        self._poll_cut = False  # the last long poll was cut short (so its quick answer says nothing)
        self._msg_waits = False  # `msg` is a long poll
        self._tracker_holds: bool | None = None  # whether this tracker holds long polls (None: not known yet)
        self._last_line = b""  # the last directory line, to tell a classic tracker's instant replies
        self._reported: tuple[FileInfo, ...] | None = None  # what the tracker has from us
        self._files_in_msg = self._infos(self._local)
        self._infos_generation = self.folder.generation
        self.msg: bytes = encode_init(self.port, self._files_in_msg)
        self._first_round = True
        self._backoff = 0.0
        self._stopping = threading.Event()
        self._watchdog = Watchdog()
        self._file_server = FileServer(self.server, self.folder, self._watchdog, self.BUFFER_SIZE)
        self._fetcher = Fetcher(self.folder, self._watchdog, (host, self.port), max_file_size)
        self._warned: set[str] = set()

    # ------------------------------------------------------------ lifecycle

    def run(self) -> None:
        """Serve file requests, connect to the tracker, sync every `interval` seconds
        (and, when watching, as soon as the folder changes)."""
        self._file_server.start(self.name)
        if self._watcher is not None:
            try:
                self._watcher.start()
            except Exception as exc:  # e.g. out of inotify watches: poll as a classic peer does
                log.warning("cannot watch %s (%s); rescanning every round instead", self.folder.root, exc)
                self._watcher = None
            self._rescan.set()  # what changed before the watcher started
        try:
            self._connect()
        except OSError as exc:
            self.fatal_tracker("Failed connecting to the tracker", exc)
        delay = self.first_delay
        while not self._wait_for_round(delay):
            try:
                self.sync()
            except Exception:  # a bug, not a peer's fault: keep the peer alive
                log.exception("sync round failed")
            # Watching, the next message goes out at once: an Init reports what this
            # round installed, a long poll waits at the tracker, which decides when to
            # answer. Unless this tracker has shown it answers polls at once (a classic one).
            watching = self._watcher is not None and self._watcher.alive and self._tracker_holds is not False
            delay = self._backoff or (CHANGE_SETTLE_S if watching else self.interval)

    def _wait_for_round(self, delay: float) -> bool:
        """Wait `delay` seconds, or until a watched change (then a moment more, so a
        burst of changes makes one round); whether the peer is stopping. While the
        tracker is failing, changes do not cut the backoff short."""
        if self._backoff:
            return self._stopping.wait(delay)
        if self._wake.wait(delay) and not self._stopping.is_set():
            self._stopping.wait(CHANGE_SETTLE_S)
        self._wake.clear()
        return self._stopping.is_set()

    def _on_folder_change(self) -> None:
        self._rescan.set()
        self._wake.set()
        self._cut_poll_short()

    def _cut_poll_short(self) -> None:
        """While a long poll is out, send a plain KeepAlive: the tracker answers the
        poll at once (then this one), the round ends, and the next reports the change."""
        with self._send_lock:
            if not self._polling:
                return
            self._polling = False
            self._poll_cut = True
            with contextlib.suppress(OSError):
                self.client.sendall(encode_keepalive(self.port))
                self._owed += 1

    def _send(self, message: bytes, poll: bool) -> None:
        with self._send_lock:
            self.client.sendall(message)
            self._owed += 1
            self._polling = poll  # only once it is out: a cut must come after it
            self._poll_cut = False

    def _read_reply(self, reader: Buffer) -> bytes:
        """The reply to the last message sent; replies owed for earlier ones (a long
        poll cut short) are read and dropped."""
        while True:
            line = reader.read_line()
            with self._send_lock:
                self._owed -= 1
                if self._owed <= 0:
                    self._owed = 0
                    self._polling = False
                    return line

    def exit(self) -> None:
        """Stop every thread and close every socket; returns within a second."""
        deadline = time.monotonic() + 0.9
        self._stopping.set()
        self._wake.set()
        if self._watcher is not None:
            self._watcher.stop()
        self._file_server.stop()
        for sock in (self.server, self.client):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        idle = self._fetcher.abort_all(0.5)  # downloads remove or keep their partial, then end
        me = threading.current_thread()
        for thread in [self, *self._file_server.threads]:
            if thread.is_alive() and thread is not me:
                thread.join(max(0.0, deadline - time.monotonic()))
        self._watchdog.close()
        if idle and not self.is_alive():
            self.folder.close()

    # ------------------------------------------------------------ tracker side

    def _new_client(self) -> socket.socket:
        client = socket.socket(_family(self.trackerhost), socket.SOCK_STREAM)
        client.settimeout(TRACKER_TIMEOUT_S)
        return client

    def _connect(self) -> None:
        self.client.connect((self.trackerhost, self.trackerport))
        log.info("connected to tracker %s:%d", self.trackerhost, self.trackerport)

    def _client_connected(self) -> bool:
        try:
            self.client.getpeername()
        except OSError:
            return False
        return True

    def fatal_tracker(self, message: str, exc: BaseException | None = None) -> None:
        """The tracker failed. The classic peer exits here; this one logs, drops the
        connection and lets a later round reconnect, waiting longer each time."""
        self._backoff = min(max(self._backoff * 2, 1.0), self.max_backoff)
        log.warning(
            "tracker %s:%d: %s (%s); retrying in %g s",
            self.trackerhost,
            self.trackerport,
            message,
            exc or "no detail",
            self._backoff,
        )
        try:
            self.client.close()
        finally:
            self.client = self._new_client()
            self._reader = None
            self._owed, self._polling, self._tracker_holds = 0, False, None  # a new connection, maybe a new tracker
            self._reported = None  # a new connection starts with a full Init
            self._set_next_message()

    def sync(self) -> None:
        """One round: report to the tracker, read the directory, fetch what is newer."""
        opened = not self._first_round
        if opened:
            self._set_next_message()  # report what changed since the last round
        if not self._client_connected():
            try:
                self._connect()
            except OSError as exc:
                self.fatal_tracker("Failed connecting to the tracker", exc)
                return
        if self._reader is None or self._reader.sock is not self.client:
            self._reader = Buffer(self.client, self.BUFFER_SIZE, MAX_DIRECTORY_BYTES)
        began = time.monotonic()
        try:
            self._send(self.msg, poll=self._msg_waits)
            line = self._read_reply(self._reader)
        except TimeoutError as exc:
            self.fatal_tracker("Failed waiting for the tracker to response", exc)
            return
        except (OSError, ProtocolError) as exc:
            if not self._stopping.is_set():  # exit() cuts a long poll short: nothing to report
                self.fatal_tracker("Lost the connection to the tracker", exc)
            return
        if self._msg_waits and not self._poll_cut:  # held: a p2psync tracker; the same at once: a classic one
            if time.monotonic() - began > POLL_HELD_S:
                self._tracker_holds = True
            elif line == self._last_line:
                self._tracker_holds = False
        self._last_line = line
        # The tracker now has this list: it was in the Init just sent, or a
        # KeepAlive was sent because the tracker had it already.
        self._reported = self._files_in_msg
        self._first_round = False
        try:
            directory = decode_directory(line)
        except ProtocolError as exc:
            self.fatal_tracker("The tracker sent a malformed directory", exc)
            return
        self._backoff = 0.0
        self._fetch_newer(directory)
        # The scan that opened this round is still current unless the round wrote to the folder.
        self._set_next_message(current=opened)

    # ------------------------------------------------------------ what to report

    @staticmethod
    def _infos(local: Mapping[str, LocalFile]) -> tuple[FileInfo, ...]:
        return tuple(f.info() for f in sorted(local.values(), key=lambda f: f.name))

    def _set_next_message(self, current: bool = False) -> None:
        """Init when the folder differs from what the tracker has, else KeepAlive.
        `current`: the last scan was taken moments ago, in this round; it is
        reused unless something wrote to the folder since."""
        if self._needs_scan(current):
            self._rescan.clear()  # before the scan: a change during it sets it again
            self._local = self.folder.scan()
            self._last_scan = time.monotonic()
        if self.folder.generation != self._infos_generation:  # rebuild the list only after a change
            self._files_in_msg = self._infos(self._local)
            self._infos_generation = self.folder.generation
        files = self._files_in_msg
        # Watching, a KeepAlive is a long poll: a p2psync tracker answers it when the directory changes.
        self._msg_waits = files == self._reported and self._watcher is not None and self._watcher.alive
        if files != self._reported:
            self.msg = encode_init(self.port, files)
        else:
            self.msg = encode_keepalive(self.port, POLL_WAIT_S if self._msg_waits else None)

    def _needs_scan(self, current: bool) -> bool:
        """Nothing wrote to the folder since a `current` scan: no. Else, without a
        (live) watcher, yes; with one, only after a change, and at least every
        `FULL_SCAN_INTERVAL_S` in case one was missed."""
        if current and not self._rescan.is_set():
            return False
        watcher = self._watcher
        return (
            watcher is None
            or not watcher.alive
            or self._rescan.is_set()
            or time.monotonic() - self._last_scan >= FULL_SCAN_INTERVAL_S
        )

    # ------------------------------------------------------------ fetching

    def _fetch_newer(self, directory: Mapping[str, DirectoryEntry]) -> None:
        wanted: set[str] = set()  # versions still worth a kept partial download
        todo: list[tuple[str, DirectoryEntry]] = []
        for name, entry in directory.items():
            why = self.folder.rules.why_not(name)
            if why is not None:
                self._warn_once(name, f"tracker lists {name[:200]!r}, which is not synced here ({why}); skipping it")
                continue
            local = self._local.get(name)
            if local is not None and local.mtime >= entry.mtime:
                continue
            if local is not None and entry.sha256 == local.sha256 and entry.size == local.size:
                self.folder.set_mtime(name, entry.mtime)  # same bytes, newer stamp: no transfer
                self._rescan.set()
                continue
            if entry.sha256 is not None:
                wanted.add(entry.sha256)
            todo.append((name, entry))
        if todo:
            self._fetcher.fetch_all(todo)
            self._rescan.set()  # this round wrote to the folder (its own events may still be on the way)
        self.folder.prune_partials(wanted)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)

    def syncfile(self, filename: str, info: Mapping[str, Any]) -> bool:
        """Fetch `filename` from the holder `info` names (`ip`, `port`, `mtime`, and
        optionally `size`, `sha256`, `sources`) and install it with that mtime.

        Returns whether it succeeded; never raises for a network or peer failure.
        """
        try:
            entry = decode_entry(filename, dict(info))
        except ProtocolError as exc:
            log.warning("%s: bad holder description %r: %s", filename, info, exc)
            return False
        self._rescan.set()  # whatever happened, the next report looks at the folder again
        return self._fetcher.fetch(filename, entry)

    # ------------------------------------------------------------ serving

    def process_message(self, conn: socket.socket, addr: Any) -> None:
        """Serve one request on an accepted connection: `name\\n` -> header + bytes."""
        self._file_server.serve(conn, addr)


def main(argv: list[str] | None = None) -> int:
    """The classic command line: `python -m p2psync.peer TRACKER_IP TRACKER_PORT`."""
    from .cli import classic_peer_main  # the CLI module owns process set-up and Ctrl-C

    return classic_peer_main(argv)


if __name__ == "__main__":
    sys.exit(main())
