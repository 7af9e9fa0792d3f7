"""The folder's index: `DIR/.p2psync/index.sqlite3`, what this peer knows of its files.

Strategy: per path, what the last scan saw (size, mtime_ns, mode, inode, hash,
version vector), which makes it the scan's hash cache across restarts, and
the version last agreed on with the network (`base`); plus the tombstones of
this peer's own deletions. It is what tells "deleted here" from "never had
it". Stdlib `sqlite3` in WAL mode, each round's changes in one transaction,
so a kill -9 at any moment leaves the last committed round; a file that is
missing starts a fresh index, and one that is corrupt is moved aside with one
warning and rebuilt from the next scan (nothing in the folder is touched).
This module never reads the folder or parses a message.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from p2psync.records import quick_frozen
from p2psync.sync.versions import Deletion, Vector, Version

__all__ = ["INDEX_FILE", "Index", "IndexRow"]

log = logging.getLogger(__name__)

INDEX_FILE = "index.sqlite3"
_SCHEMA_VERSION = "3"  # 2: vectors as PEER:N,PEER:N; 3: the agreed version's mode (base_mode)
_MIGRATIONS = {"2": "ALTER TABLE files ADD COLUMN base_mode INTEGER"}  # from an older schema, in place
_PEER_ID_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read aloud from a file name
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, mode INTEGER NOT NULL,
    inode INTEGER NOT NULL, sha256 TEXT NOT NULL, vector TEXT NOT NULL,
    base_mtime INTEGER, base_size INTEGER, base_sha256 TEXT, base_vector TEXT, base_mode INTEGER
);
CREATE TABLE IF NOT EXISTS tombstones (
    path TEXT PRIMARY KEY, time INTEGER NOT NULL, sha256 TEXT, vector TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS chunk_lists (sha256 TEXT PRIMARY KEY, list_id TEXT NOT NULL, chunks BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS trashed (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, inode INTEGER NOT NULL,
    sha256 TEXT NOT NULL
);
"""


_FILE_COLUMNS = "path, size, mtime_ns, mode, inode, sha256, vector, base_mtime, base_size, base_sha256, base_vector"


def _vector_text(vector: Vector) -> str:
    """`PEER:N,PEER:N` (peer ids are letters and digits): cheaper than JSON, 10,000 rows a batch."""
    return ",".join(f"{peer}:{n}" for peer, n in vector)


def _vector(text: str | None) -> Vector:
    if not text:
        return ()
    pairs = (item.partition(":") for item in text.split(","))
    return tuple((peer, int(n)) for peer, _, n in pairs)


@quick_frozen
@dataclass(frozen=True)
class IndexRow:
    """One path as the last scan saw it, and the version last agreed on."""

    path: str
    size: int
    mtime_ns: int
    mode: int
    inode: int
    sha256: str
    vector: Vector
    base: Version | None = None

    @property
    def key(self) -> tuple[int, int, int]:
        """What says the file is unchanged since: size, mtime_ns, inode."""
        return self.size, self.mtime_ns, self.inode

    def version(self) -> Version:
        return Version(self.mtime_ns // 1_000_000_000, self.size, self.sha256, self.mode, self.vector)


class Index:
    """The index of one folder's state directory; every method is thread-safe."""

    def __init__(self, state_dir: str | None) -> None:
        """The index in `state_dir`; with None, one in memory (gone with the process)."""
        self.path = ":memory:" if state_dir is None else os.path.join(state_dir, INDEX_FILE)
        self._lock = threading.Lock()
        self._base_mode = True  # the table has base_mode (an older one is migrated when opened)
        self._db = self._open()

    @classmethod
    def read_only(cls, state_dir: str) -> Index:
        """The index in `state_dir` as it is, for reading only (`p2psync status`,
        beside a running sync): nothing is created, checked, moved aside or
        written; a missing or unreadable index reads as an empty one."""
        index = cls.__new__(cls)
        index.path = os.path.join(state_dir, INDEX_FILE)
        index._lock = threading.Lock()
        index._base_mode = True
        try:
            # Beside a running sync (its write-ahead log exists), read as a second reader;
            # with none, as an unchanging file, which creates no -wal or -shm beside it.
            live = os.path.exists(index.path + "-wal")
            query = "mode=ro" if live else "immutable=1"
            db = sqlite3.connect(f"{pathlib.Path(index.path).as_uri()}?{query}", uri=True, check_same_thread=False)
            found = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if found is None or (found[0] != _SCHEMA_VERSION and found[0] not in _MIGRATIONS):
                raise sqlite3.DatabaseError(f"schema {found[0] if found else 'unknown'}")
            index._base_mode = found[0] == _SCHEMA_VERSION  # an older index, read as it is, has no base_mode
        except sqlite3.Error:
            db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
            db.executescript(_SCHEMA)
        index._db = db
        return index

    def _open(self) -> sqlite3.Connection:
        fresh = self.path == ":memory:" or not os.path.exists(self.path)
        if fresh and self.path != ":memory:" and os.path.exists(os.path.join(os.path.dirname(self.path), "lock")):
            # The state folder was used before (its lock file is made at the first start).
            log.warning("index %s is missing; rebuilding it from a scan", self.path)
        try:
            db = self._connect()
            if not fresh:
                row = db.execute("PRAGMA quick_check").fetchone()
                if row is None or row[0] != "ok":
                    raise sqlite3.DatabaseError(f"integrity check: {row[0] if row else 'no answer'}")
            return db
        except sqlite3.DatabaseError as exc:
            aside = f"{self.path}.corrupt-{int(time.time())}"
            log.warning("index %s is unreadable (%s); moved to %s, rebuilding it from a scan", self.path, exc, aside)
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(OSError):
                    os.unlink(self.path + suffix)
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL: a crash loses at most the last round, never consistency
        db.executescript(_SCHEMA)
        found = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if found is None:
            db.execute("INSERT INTO meta VALUES ('schema', ?)", (_SCHEMA_VERSION,))
        elif found[0] in _MIGRATIONS:
            with db:  # one transaction: migrated whole, or not at all
                db.execute("BEGIN")
                db.execute(_MIGRATIONS[found[0]])
                db.execute("UPDATE meta SET value=? WHERE key='schema'", (_SCHEMA_VERSION,))
        elif found[0] != _SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"schema {found[0]}, this p2psync reads {_SCHEMA_VERSION}")
        return db

    def close(self) -> None:
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._db.close()

    # ------------------------------------------------------------ identity

    def peer_id(self) -> str:
        """This folder's short stable id (in conflict-copy names and version vectors)."""
        with self._lock:
            found = self._db.execute("SELECT value FROM meta WHERE key='peer-id'").fetchone()
            if found is not None:
                return str(found[0])
            import secrets  # once per folder, ever: not worth loading at every start

            new = "".join(secrets.choice(_PEER_ID_ALPHABET) for _ in range(7))
            with contextlib.suppress(sqlite3.OperationalError):  # a read-only index keeps it to itself
                self._db.execute("INSERT INTO meta VALUES ('peer-id', ?)", (new,))
            return new

    def settle_place(self, inode: int, host: str, path: str) -> bool:
        """Note where this index lives: its state folder's inode, the machine and
        the folder's path. When it was made somewhere else (copied with its
        folder: `cp -a`, a disk seeded for another machine), forget its peer id,
        so that `peer_id` makes a new one and the two copies never sign edits as
        one peer. Somewhere else: another inode, and another machine or path (a
        new inode alone is a restore in place or a remount that numbers anew).
        Whether it was made elsewhere."""
        place = f"{inode}\n{host}\n{path}"
        with self._lock:
            found = self._db.execute("SELECT value FROM meta WHERE key='place'").fetchone()
            if found is not None and found[0] == place:
                return False
            was_inode, _, was_where = str(found[0]).partition("\n") if found is not None else ("", "", "")
            copied = found is not None and was_inode != str(inode) and was_where != f"{host}\n{path}"
            with contextlib.suppress(sqlite3.OperationalError), self._db:  # a read-only index keeps it to itself
                if copied:
                    self._db.execute("DELETE FROM meta WHERE key='peer-id'")
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('place', ?)", (place,))
            return copied

    # ------------------------------------------------------------ files

    def rows(self) -> dict[str, IndexRow]:
        """Every path the index knows."""
        with self._lock:
            base_mode = "base_mode" if self._base_mode else "NULL"
            cursor = self._db.execute(f"SELECT {_FILE_COLUMNS}, {base_mode} FROM files")
            return {r[0]: _row(r) for r in cursor}

    def tombstones(self) -> dict[str, Deletion]:
        """This peer's own deletions, by path."""
        with self._lock:
            cursor = self._db.execute("SELECT path, time, sha256, vector FROM tombstones")
            return {p: Deletion(t, h, _vector(v)) for p, t, h, v in cursor}

    def update(
        self,
        rows: Iterable[IndexRow] = (),
        removed: Iterable[str] = (),
        tombstones: Iterable[tuple[str, Deletion]] = (),
        untombstoned: Iterable[str] = (),
    ) -> None:
        """Write rows, drop paths, add and drop tombstones: all in one transaction."""
        with self._lock:
            db = self._db
            db.execute("BEGIN")
            try:
                db.executemany(
                    "INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", [_values(r) for r in rows]
                )
                db.executemany("DELETE FROM files WHERE path=?", [(p,) for p in removed])
                db.executemany(
                    "INSERT OR REPLACE INTO tombstones VALUES (?,?,?,?)",
                    [(p, d.time, d.sha256, _vector_text(d.vector)) for p, d in tombstones],
                )
                db.executemany("DELETE FROM tombstones WHERE path=?", [(p,) for p in untombstoned])
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # ------------------------------------------------------------ chunk lists

    def chunk_list(self, sha256: str) -> bytes | None:
        """The encoded chunk list (protocol/chunks.py) of the version `sha256`, if cut before."""
        with self._lock:
            found = self._db.execute("SELECT chunks FROM chunk_lists WHERE sha256=?", (sha256,)).fetchone()
        return None if found is None else bytes(found[0])

    def put_chunk_list(self, sha256: str, list_id: str, chunks: bytes) -> None:
        with self._lock, contextlib.suppress(sqlite3.OperationalError):  # read-only: kept to itself
            self._db.execute("INSERT OR REPLACE INTO chunk_lists VALUES (?, ?, ?)", (sha256, list_id, chunks))

    def list_ids(self) -> dict[str, str]:
        """The id of every chunk list kept, by the version's sha256."""
        with self._lock:
            return dict(self._db.execute("SELECT sha256, list_id FROM chunk_lists").fetchall())

    def keep_chunk_lists(self, wanted: set[str]) -> int:
        """Forget the chunk lists of versions not in `wanted`; how many."""
        with self._lock:
            stale = [(h,) for (h,) in self._db.execute("SELECT sha256 FROM chunk_lists") if h not in wanted]
            self._db.executemany("DELETE FROM chunk_lists WHERE sha256=?", stale)
        return len(stale)

    # ------------------------------------------------------------ the trash

    def trashed(self) -> dict[str, tuple[tuple[int, int, int], str]]:
        """Large files in the trash whose chunk lists are kept: by path in the trash,
        (their (size, mtime_ns, inode) when trashed, their sha256)."""
        with self._lock:
            cursor = self._db.execute("SELECT path, size, mtime_ns, inode, sha256 FROM trashed")
            return {p: ((n, m, i), h) for p, n, m, i, h in cursor}

    def put_trashed(self, path: str, key: tuple[int, int, int], sha256: str) -> None:
        with self._lock, contextlib.suppress(sqlite3.OperationalError):  # read-only: kept to itself
            self._db.execute("INSERT OR REPLACE INTO trashed VALUES (?, ?, ?, ?, ?)", (path, *key, sha256))

    def drop_trashed(self, paths: Iterable[str]) -> None:
        with self._lock:
            self._db.executemany("DELETE FROM trashed WHERE path=?", [(p,) for p in paths])

    def expire_tombstones(self, older_than: int) -> int:
        """Forget own deletions from before `older_than` (unix seconds); how many."""
        with self._lock:
            return self._db.execute("DELETE FROM tombstones WHERE time < ?", (older_than,)).rowcount


def _row(r: tuple[object, ...]) -> IndexRow:
    path, size, mtime_ns, mode, inode, sha256, vector, b_mtime, b_size, b_sha, b_vector, b_mode = r
    base = (
        None
        if b_mtime is None
        else Version(
            int(b_mtime),  # type: ignore[call-overload]
            None if b_size is None else int(b_size),  # type: ignore[call-overload]
            str(b_sha),
            None if b_mode is None else int(b_mode),  # type: ignore[call-overload]
            _vector(str(b_vector)),
        )
    )
    return IndexRow(str(path), int(size), int(mtime_ns), int(mode), int(inode), str(sha256), _vector(str(vector)), base)  # type: ignore[call-overload]


def _values(r: IndexRow) -> tuple[object, ...]:
    b = r.base
    return (
        r.path,
        r.size,
        r.mtime_ns,
        r.mode,
        r.inode,
        r.sha256,
        _vector_text(r.vector),
        None if b is None else b.mtime,
        None if b is None else b.size,
        None if b is None else b.sha256,
        None if b is None else _vector_text(b.vector),
        None if b is None else b.mode,
    )
