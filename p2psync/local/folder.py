"""The sync folder on disk: scanning, hashing, serving, atomic installs, trash.

Strategy: every path is opened relative to a descriptor of the folder itself,
one component at a time with `O_NOFOLLOW`, after the path rule and the
folder's `IgnoreRules` have refused anything that is not a synced path; so
nothing read or written can leave the folder, whatever a peer asks for or a
tracker lists, and a symlink anywhere in a path is never followed. Downloads
are written where no one sees them (an anonymous `O_TMPFILE`, or
`name.part`) and appear under their name in one step (a link, or a rename
over the older file), with the source's mtime and mode already set, and only
if the file there is still the one the decision looked at (compare and swap):
a reader sees the old file or the new one, never half of either, and a local
edit racing a download is never overwritten. Nothing is ever deleted: a
deletion from the network moves the file into `.p2psync/trash/`, a conflict
keeps the losing version beside the winner. The index (`index`) is the
scan's hash cache and remembers versions and this peer's own deletions. This
module never parses a message. `fileops` holds the descriptor-level helpers,
`partial` a download in progress, `lock` the one-p2psync-per-folder rule.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import stat
import threading
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, TypeVar

from p2psync._core import link_new_files
from p2psync.chunking import DELTA_MIN_BYTES
from p2psync.errors import ConfigError, FolderGone, ProtocolError, TransferError, UnsafeName
from p2psync.ignore import STATE_DIR, IgnoreRules
from p2psync.paths import MAX_DEPTH, safe_name, safe_path
from p2psync.protocol import FileInfo
from p2psync.protocol.chunks import ChunkList, decode_chunk_list
from p2psync.records import quick_frozen
from p2psync.sync.versions import Deletion, Vector, Version, bump, merge

from .chunks import chunk_fd, hash_and_cut
from .fileops import (
    ANY,
    DEFAULT_MODE,
    DIR_FLAGS,
    MODE_BITS,
    O_CLOEXEC,
    O_NOFOLLOW,
    O_TMPFILE,
    Key,
    copy_range,
    file_key,
    hash_fd,
    sync_mode,
    write_all,
)
from .index import Index, IndexRow
from .lock import lock_folder
from .partial import PARTIAL_SUFFIX, PartialFile

__all__ = [
    "ANY",
    "DEFAULT_MODE",
    "STATE_DIR",
    "TRASH_DIR",
    "Folder",
    "Install",
    "LocalFile",
    "OpenFolders",
    "PartialFile",
    "get_file_info",
    "sync_mode",
]

log = logging.getLogger(__name__)

TRASH_DIR = "trash"  # in STATE_DIR: files the network deleted, under their relative path
CHUNK_SOURCES = 4  # other files a delta may copy chunks from
CHUNK_CANDIDATES = 256  # large files whose lists are read to find them (each list: ~36 bytes a chunk)


@quick_frozen
@dataclass(frozen=True)
class LocalFile:
    """A regular file of the folder as one scan saw it; `name` is its relative path."""

    name: str
    mtime: int  # whole seconds, rounded down: the classic protocol's unit
    size: int
    sha256: str
    mtime_ns: int
    inode: int
    mode: int = 0o644
    vector: Vector = ()

    @property
    def key(self) -> Key:
        return self.size, self.mtime_ns, self.inode

    def info(self) -> FileInfo:
        return FileInfo(self.name, self.mtime, self.size, self.sha256, self.mode, self.vector)

    def version(self) -> Version:
        return Version(self.mtime, self.size, self.sha256, self.mode, self.vector)


_Read = TypeVar("_Read")  # what a `read_to_serve` reader returns


@dataclass
class _Walk:
    """What one walk of the folder found."""

    files: list[tuple[str, os.stat_result]] = field(default_factory=list)  # regular files the rules let through
    unreadable: list[str] = field(default_factory=list)  # folders that could not be listed: what they hold is not gone
    passed_over: list[tuple[str, str]] = field(default_factory=list)  # (path, what it is): symlinks, special, too deep
    refused: list[tuple[str, str]] = field(default_factory=list)  # (path, why): unsafe names, unreadable files

    def not_synced(self) -> list[tuple[str, str]]:
        """(path, why) of everything here the rules would sync but the scan could not."""
        left = [(path, _PASSED_OVER[kind].why) for path, kind in self.passed_over]
        left += [(path, "cannot be listed") for path in self.unreadable if path]
        return sorted(left + self.refused)


class Install(NamedTuple):
    """One small download held in memory, verified, to install (see `Folder.install_many`)."""

    name: str
    data: bytes
    mtime: int
    sha256: str | None = None
    mode: int | None = None
    expect: Any = ANY  # ANY, None (the name must be free) or the Key of the file it may replace
    vector: Vector = ()


class OpenFolders:
    """Descriptors of a folder's subfolders, kept open while a burst of requests
    is served (each opened component by component, never through a symlink, as
    `Folder._parent` does), so a hundred files of one subfolder cost one walk
    instead of a hundred. Closed when the burst ends: a folder moved or
    replaced meanwhile is seen as it is by the next burst."""

    MAX_OPEN = 64  # past it, all are closed and opened again as asked for

    def __init__(self, folder: Folder) -> None:
        self._folder = folder
        self._fds: dict[str, int] = {}

    def get(self, subfolder: str, path: str) -> int:
        """The descriptor of `subfolder` (where `path`, a checked path, lives)."""
        fd = self._fds.get(subfolder)
        if fd is None:
            if len(self._fds) >= self.MAX_OPEN:
                self.close()
            fd = self._fds[subfolder] = self._folder._open_folder(subfolder, False, path)
        return fd

    def close(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)


def get_file_info() -> list[dict[str, Any]]:
    """The classic helper: files of the current directory as `[{"name", "mtime"}]`.

    Subfolders and `*.py`, `*.so`, `*.dll` are left out, mtime is rounded down
    (the classic rule, kept exactly for code written against it).
    """
    files = []
    with os.scandir(".") as entries:
        for entry in entries:
            if entry.is_file() and not entry.name.endswith((".py", ".so", ".dll")):
                files.append({"name": entry.name, "mtime": int(entry.stat().st_mtime)})
    return files


def _took_agreed_mode(row: IndexRow, mode: int) -> bool:
    """Whether the file of `row` now has the mode of the version agreed on with the
    network (a stamp took it from there): not an edit made here."""
    base = row.base
    return base is not None and base.sha256 == row.sha256 and base.mode == mode


def _local_file(row: IndexRow) -> LocalFile:
    """The file an index row describes, as a scan would have seen it."""
    return LocalFile(
        row.path, row.mtime_ns // 1_000_000_000, row.size, row.sha256, row.mtime_ns, row.inode, row.mode, row.vector
    )


class Folder:
    """One sync folder: what it holds, what it may serve, where downloads land.

    `state`: keep the index in `DIR/.p2psync/` (the p2psync command); without
    it the index lives in memory and nothing is written into the folder but
    synced files (the classic adapter, which serves a classic program's folder).
    `read_only`: look, change nothing (`p2psync status`, beside a running sync):
    no lock, the index read as it is, and scans write nothing down.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        rules: IgnoreRules | None = None,
        *,
        state: bool = False,
        read_only: bool = False,
    ) -> None:
        self.root = os.path.realpath(root)
        self.rules = rules or IgnoreRules.classic_rules()  # which paths sync
        self._dir_fd = os.open(self.root, DIR_FLAGS)
        self._marker: tuple[int, int] | None = None  # the state folder's identity, when it has one
        self._lock = threading.Lock()
        self._warned: set[str] = set()
        self._lock_fd = -1
        self.read_only = read_only
        try:
            if read_only:
                state_path = os.path.join(self.root, STATE_DIR)
                self.index = Index.read_only(state_path) if os.path.isdir(state_path) else Index(None)
            elif state:
                state_path = self._state_path(create=True)
                self.index = Index(state_path)  # before the lock file exists on a first start: see Index
                self._lock_fd = lock_folder(state_path, self.root)
                self._marker = _identity(os.stat(state_path, follow_symlinks=False))
            else:
                self.index = Index(None)
        except (OSError, ConfigError):
            os.close(self._dir_fd)
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
            raise
        if self._marker is not None:
            self._settle_place(self._marker)
        self.peer_id = self.index.peer_id()
        self._rows: dict[str, IndexRow] = self.index.rows()
        self._own_deletions: dict[str, Deletion] = self.index.tombstones()
        # (size, mtime_ns, inode) -> sha256: an unchanged file is never re-read, across restarts too.
        self._hashes: dict[Key, str] = {row.key: row.sha256 for row in self._rows.values()}
        self._list_ids: dict[str, str] = self.index.list_ids()  # sha256 -> its chunk list's id (large files)
        self._cuts_large = state and not read_only  # the engine's folders cut large files at the scan
        self._normalizes = state and not read_only  # ... and rename names in another form than NFC to it
        self._last: dict[str, LocalFile] = self._from_rows()  # the previous scan (first: the index's)
        self._unwritten: list[IndexRow] = []  # installed rows not yet in the index (see flush)
        self.generation = 0
        self.not_synced: list[tuple[str, str]] = []  # (path, why), as the last scan found them
        self.unsettled = False  # the last scan left a file that changed while it was read for the next one
        # Whether downloads can start as anonymous files here: None until tried.
        self._anonymous_ok: bool | None = None if O_TMPFILE else False

    def close(self) -> None:
        """Close the index and the folder's descriptor; a second call does nothing."""
        with contextlib.suppress(sqlite3.Error):
            self.flush()
        self.index.close()
        for name in ("_dir_fd", "_lock_fd"):
            fd = getattr(self, name)
            setattr(self, name, -1)
            if fd >= 0:
                os.close(fd)  # the lock goes with its descriptor

    # ------------------------------------------------------------ paths

    @contextlib.contextmanager
    def _parent(self, path: str, create: bool = False) -> Iterator[tuple[int, str]]:
        """`(fd of the folder holding path, its last component)`, opened one
        component at a time, never through a symlink; with `create`, missing
        folders are made. Raises `UnsafeName` where a component is not a folder
        (a file, or a symlink), `FileNotFoundError` where one is missing."""
        folder, _, leaf = path.rpartition("/")
        if not folder:
            yield self._dir_fd, leaf
            return
        fd = self._open_folder(folder, create, path)
        try:
            yield fd, leaf
        finally:
            os.close(fd)

    def _open_folder(self, folder: str, create: bool, path: str) -> int:
        """A new descriptor of the subfolder `folder` (of `path`), opened one component at a time."""
        parts = folder.split("/")
        fd = self._step(self._dir_fd, parts[0], create, path)
        try:
            for part in parts[1:]:
                sub = self._step(fd, part, create, path)
                os.close(fd)
                fd = sub
        except BaseException:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def _step(fd: int, part: str, create: bool, path: str) -> int:
        """A new descriptor of the subfolder `part` of folder `fd`, never through a symlink."""
        try:
            try:
                return os.open(part, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o777, dir_fd=fd)
                return os.open(part, DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                raise UnsafeName(f"{path!r}: {part!r} is not a folder here (a file or a symbolic link)") from None
            raise

    def _state_path(self, create: bool) -> str:
        path = os.path.join(self.root, STATE_DIR)
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, 0o700)
        if os.path.islink(path) or not os.path.isdir(path):
            raise OSError(errno.ENOTDIR, f"{path} is not a folder")
        return path

    # ------------------------------------------------------------ scanning

    def check_present(self) -> None:
        """Raise `FolderGone` unless the folder is still the one opened: not deleted
        (its descriptor would list nothing), and with state, its `.p2psync`
        still the same folder. Syncthing's folder marker, for the same reason:
        a folder deleted whole, emptied or unmounted is not its files deleted."""
        if os.fstat(self._dir_fd).st_nlink == 0:
            raise FolderGone(f"{self.root} was deleted")
        if self._marker is None:
            return
        try:
            marker = _identity(os.stat(STATE_DIR, dir_fd=self._dir_fd, follow_symlinks=False))
        except FileNotFoundError:
            raise FolderGone(f"{self.root}/{STATE_DIR} was removed (the folder emptied, or unmounted?)") from None
        if marker != self._marker:
            raise FolderGone(f"{self.root}/{STATE_DIR} is not the one this peer opened (another drive mounted?)")

    def scan(self) -> dict[str, LocalFile]:
        """Every file the folder syncs, by relative path: regular files only (no
        symlinks, never followed), safe paths the rules let through.

        Costs one stat per file when nothing changed: a file whose size, mtime
        and inode match the last scan keeps its entry (and hash) as it was.
        A file that changed gets a new version (its vector bumped for this
        peer); one that is gone since the last scan becomes a tombstone of this
        peer's. `generation` goes up whenever the result differs from the last one.
        """
        walked = _Walk()
        unsettled = False  # a file changed while it was read: the next scan should come soon
        self._walk(self._dir_fd, "", 0, walked)
        self.check_present()  # after the walk: gone before it or during it, what it missed is not deleted
        self._say_passed_over(walked.passed_over)
        unreadable = walked.unreadable
        found: dict[str, LocalFile] = {}
        last, rows = self._last, self._rows
        new_rows: list[IndexRow] = []
        now = int(time.time())
        for path, st in walked.files:
            old = last.get(path)
            if old is not None and old.key == file_key(st) and old.mode == st.st_mode & MODE_BITS:
                found[path] = old
                continue
            try:
                digest = self._hashes.get(file_key(st)) or self._hash(path, file_key(st))
            except (OSError, UnsafeName) as exc:  # changed, vanished or unreadable while hashed
                reason = self._cannot_read(path, exc)
                if reason is not None:
                    walked.refused.append((path, f"cannot be read: {reason}"))
                else:
                    unsettled = True
                if old is not None:
                    found[path] = old  # still here as far as anyone knows: never a deletion; the next scan looks again
                continue
            row = rows.get(path)
            mode = st.st_mode & MODE_BITS
            if row is not None and row.sha256 == digest and (row.mode == mode or _took_agreed_mode(row, mode)):
                vector = row.vector  # touched, not changed; or stamped with the network's mode
            else:
                since = row.vector if row is not None else self._own_deletions.get(path, Deletion(0)).vector
                vector = bump(since, self.peer_id, now)
            base = row.base if row is not None else None
            new = IndexRow(path, st.st_size, st.st_mtime_ns, mode, st.st_ino, digest, vector, base)
            new_rows.append(new)
            found[path] = _local_file(new)
        missing = [path for path in rows if path not in found]
        gone = [p for p in missing if self.rules.syncs(p) and not any(p.startswith(u) for u in unreadable)]
        ignored = [p for p in missing if not self.rules.syncs(p)]  # newly ignored: local now, not deleted
        self._record_scan(new_rows, gone, ignored, found, now)
        cut = self._cuts_large and self._cut_large(found)
        if new_rows or gone or cut or len(found) != len(self._last):
            self.generation += 1
            keys = {f.key for f in found.values()}
            with self._lock:  # forget hashes of files that are gone, so the cache stays bounded
                self._hashes = {k: v for k, v in self._hashes.items() if k in keys}
        self._last = found
        self.not_synced = walked.not_synced()
        self.unsettled = unsettled
        return found

    def _settle_place(self, marker: tuple[int, int]) -> None:
        """A state folder copied from another folder (`Index.settle_place`: another
        inode, and another machine or path) gets a peer id of its own, said in one line."""
        was = self.index.peer_id()
        if self.index.settle_place(marker[1], os.uname().nodename, self.root):
            log.info(
                "%s: its %s was copied from another folder (or restored): this folder is peer %s now, not %s, "
                "so its edits are never taken for the original's",
                self.root,
                STATE_DIR,
                self.index.peer_id(),
                was,
            )

    def _from_rows(self) -> dict[str, LocalFile]:
        """The first scan's "last scan": the index, so a restart rehashes nothing."""
        return {p: _local_file(r) for p, r in self._rows.items()}

    def _record_scan(
        self, rows: list[IndexRow], gone: list[str], ignored: list[str], found: dict[str, LocalFile], now: int
    ) -> None:
        """Write what the scan changed: new rows, tombstones for what is gone, and
        no row (but no tombstone either) for what the rules now leave out."""
        for path in ignored:
            self._rows.pop(path, None)
        tombstones = []
        for path in gone:
            row = self._rows.pop(path)
            deletion = Deletion(now, row.sha256, bump(row.vector, self.peer_id, now))
            self._own_deletions[path] = deletion
            tombstones.append((path, deletion))
            if not self.read_only:
                log.info("%s was deleted here; the other peers will move it to their trash", path)
        back = [p for p in found if p in self._own_deletions]
        for path in back:
            del self._own_deletions[path]
        for row in rows:
            self._rows[row.path] = row
        if (rows or gone or back or ignored) and not self.read_only:
            self.index.update(rows, gone + ignored, tombstones, back)

    def _walk(self, dir_fd: int, prefix: str, depth: int, walked: _Walk) -> None:
        try:
            entries = list(os.scandir(dir_fd))
        except OSError as exc:
            self._say_once(
                prefix, logging.WARNING, "cannot read the folder %s: %s", os.path.join(self.root, prefix), exc
            )
            walked.unreadable.append(prefix)
            return
        for entry in entries:
            name = entry.name
            if self._normalizes and not name.isascii():
                name = self._to_nfc(dir_fd, prefix, entry)
            path = prefix + name
            try:
                if entry.is_dir(follow_symlinks=False):
                    if not (self._allowed(path, walked) and self.rules.descends(path)):
                        continue
                    if depth + 1 < MAX_DEPTH:
                        self._walk_into(dir_fd, name, path, depth + 1, walked)
                    else:
                        walked.passed_over.append((path + "/", "folder too deep"))
                elif entry.is_file(follow_symlinks=False):
                    if self._allowed(path, walked) and self.rules.syncs(path):
                        renamed = name != entry.name  # the entry would stat the old name, now gone
                        st = (
                            os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                            if renamed
                            else entry.stat(follow_symlinks=False)
                        )
                        walked.files.append((path, st))
                elif self.rules.syncs(path) and self._allowed(path, walked):
                    walked.passed_over.append((path, _special_kind(entry)))
            except OSError:  # vanished since listed
                continue

    def _to_nfc(self, dir_fd: int, prefix: str, entry: os.DirEntry[str]) -> str:
        """The name `entry` goes by from now on: its NFC form if it had another
        and could be renamed to it (names travel in NFC, so a name written in
        another form, as macOS writes them, could never sync), else its own (also
        when the rules leave it out: what they leave out is not touched).

        A file is linked to its new name and then unlinked, so nothing of that
        name is ever replaced (a kill -9 between the two leaves two names of one
        file, and the next scan finishes the rename); a folder is renamed, which
        can only replace an empty one. Said in one log line; a name whose NFC form is taken stays
        as it is, and the scan's warning names it."""
        name = entry.name
        nfc = unicodedata.normalize("NFC", name)
        if nfc == name:
            return name
        try:
            safe_name(nfc)
            is_dir = entry.is_dir(follow_symlinks=False)
            if not (is_dir or entry.is_file(follow_symlinks=False)):
                return name  # a symlink or a special file: not synced either way
            if not (self.rules.descends(prefix + nfc) if is_dir else self.rules.syncs(prefix + nfc)):
                return name  # what the rules leave out is left as it is
            if is_dir:
                os.rename(name, nfc, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            else:
                with contextlib.suppress(FileExistsError):  # taken: by this file itself if a kill -9 came in between
                    os.link(name, nfc, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
                if not _same_file(dir_fd, name, dir_fd, nfc):  # another file's, or this one saved anew meanwhile
                    raise FileExistsError(errno.EEXIST, f"{nfc!r} is another file")
                os.unlink(name, dir_fd=dir_fd)
        except (OSError, UnsafeName) as exc:
            log.debug("cannot rename %s%s to its NFC form: %s", prefix, name, exc)
            return name
        log.info(
            "renamed %s%s (%s on disk) to the NFC form of its name, the form names travel in",
            prefix,
            nfc,
            ascii(name),
        )
        return nfc

    def _cannot_read(self, path: str, exc: OSError | UnsafeName) -> str | None:
        """A file the scan could not hash: why, with a warning said once, when it
        cannot be read at all (permissions, a bad disk: the user's to fix); None
        when it changed or went while being read, and the next scan takes it."""
        if isinstance(exc, OSError) and exc.errno not in _PASSING_ERRNOS:
            reason = exc.strerror or str(exc)
            self._say_once(
                path, logging.WARNING, "cannot read %s in %s, so it is not synced: %s", path, self.root, reason
            )
            return reason
        log.debug("skipping %s for now: %s", path, exc)
        return None

    def _say_passed_over(self, passed_over: list[tuple[str, str]]) -> None:
        """One line for what a scan left out that a user may expect to sync
        (symlinks, special files, folders too deep), each path said once."""
        new = [(path, kind) for path, kind in passed_over if path not in self._warned]
        if not new or self.read_only:  # `status` shows them in a table of their own
            return
        self._warned.update(path for path, _ in new)
        kinds = Counter(kind for _, kind in new)
        counted = ", ".join(f"{n} {kind if n == 1 else _PASSED_OVER[kind].many}" for kind, n in sorted(kinds.items()))
        shown = ", ".join(path for path, _ in new[:_PASSED_OVER_SHOWN])
        more = f" and {len(new) - _PASSED_OVER_SHOWN} more" if len(new) > _PASSED_OVER_SHOWN else ""
        rule = "only regular files and folders sync" + (
            f", at most {MAX_DEPTH} deep" if "folder too deep" in kinds else ""
        )
        log.info("not syncing %s in %s (%s): %s%s", counted, self.root, rule, shown, more)

    def _walk_into(self, dir_fd: int, name: str, path: str, depth: int, walked: _Walk) -> None:
        try:
            sub = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            return  # removed since listed
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):  # a symlink now: not followed, and not gone
                where = os.path.join(self.root, path)
                self._say_once(path + "/", logging.WARNING, "cannot read the folder %s: %s", where, exc)
            walked.unreadable.append(path + "/")
            return
        try:
            self._walk(sub, path + "/", depth, walked)
        finally:
            os.close(sub)

    def _say_once(self, key: str, level: int, message: str, *args: object) -> None:
        """Log `message` the first time `key` comes up in this folder; never for a
        read-only look (`status` shows what scans leave out as a table instead)."""
        if self.read_only or key in self._warned:
            return
        self._warned.add(key)
        log.log(level, message, *args)

    def _allowed(self, path: str, walked: _Walk) -> bool:
        try:
            safe_path(path)
        except UnsafeName as exc:
            walked.refused.append((path, str(exc)))
            self._say_once(path, logging.WARNING, "not syncing in %s: %s", self.root, exc)
            return False
        return True

    def _hash(self, path: str, key: Key) -> str:
        fd = self._open(path, os.O_RDONLY)
        try:
            if file_key(os.fstat(fd)) != key:
                raise OSError(errno.EAGAIN, "changed while being hashed")
            if key[0] >= DELTA_MIN_BYTES and self._cuts_large:  # one read: its hash and its chunk list
                digest, chunks = hash_and_cut(fd, key[0])
                if file_key(os.fstat(fd)) != key:
                    raise OSError(errno.EAGAIN, "changed while being hashed")
                self.keep_chunk_list(digest, chunks)
            else:
                digest = hash_fd(fd)
        except TransferError as exc:  # it shrank or grew while read
            raise OSError(errno.EAGAIN, str(exc)) from None
        finally:
            os.close(fd)
        with self._lock:
            self._hashes[key] = digest
        return digest

    def _open(self, path: str, flags: int, mode: int = 0o666, create: bool = False) -> int:
        with self._parent(path, create) as (dir_fd, leaf):
            return os.open(leaf, flags | O_NOFOLLOW | O_CLOEXEC, mode, dir_fd=dir_fd)

    def stat(self, path: str) -> os.stat_result | None:
        """The file's stat without following a symlink, or None if it is absent."""
        try:
            with self._parent(safe_path(path)) as (dir_fd, leaf):
                return os.stat(leaf, dir_fd=dir_fd, follow_symlinks=False)
        except (FileNotFoundError, UnsafeName):
            return None

    # ------------------------------------------------------------ what the index knows

    def own_deletions(self) -> dict[str, Deletion]:
        """The tombstones this peer reports: its own deletions (and those it applied)."""
        return dict(self._own_deletions)

    def base(self, path: str) -> Version | None:
        """The version of `path` last agreed on with the network, or None."""
        row = self._rows.get(path)
        return None if row is None else row.base

    def agree(self, agreed: Iterable[tuple[str, Version]]) -> None:
        """Record that the network has these versions of these paths, as this folder
        does: each becomes the path's base, and the local version takes on the
        vector of both (so the next report carries what the network knows).

        A path agreed on for the first time takes the network's vector as it is:
        the same bytes made here apart (a copy placed on two peers) have no
        lineage of their own worth keeping, and a merged vector would make the
        next edit elsewhere, made from the network's version, look made apart
        from ours: a needless conflict copy."""
        rows = []
        for path, version in agreed:
            row = self._rows.get(path)
            if row is None:
                continue
            agreed_before = row.base
            if (
                agreed_before is not None
                and agreed_before == version
                and row.vector == version.vector == agreed_before.vector
            ):
                continue  # this very version, agreed before, nothing since: most paths of most rounds
            first = row.base is None and bool(version.vector)
            vector = version.vector if first else merge(row.vector, version.vector)
            base = Version(version.mtime, version.size, version.sha256, version.mode, vector)
            if row.base == base and row.base.vector == vector and row.vector == vector:
                continue
            rows.append(replace(row, vector=vector, base=base))
            last = self._last.get(path)
            if last is not None and last.vector != vector:
                self._last[path] = replace(last, vector=vector)
                self.generation += 1
        if rows:
            for row in rows:
                self._rows[row.path] = row
            self.index.update(rows)

    def expire(self, max_age_s: float, now: float | None = None) -> None:
        """Forget own deletions, empty the trash of what is older than `max_age_s`
        (a file's age in the trash: since it was moved there, its ctime), and
        forget the chunk lists of versions neither here nor in the trash."""
        cutoff = int((time.time() if now is None else now) - max_age_s)
        if self.index.expire_tombstones(cutoff):
            self._own_deletions = self.index.tombstones()
        trash = os.path.join(self.root, STATE_DIR, TRASH_DIR)
        if os.path.isdir(trash) and not os.path.islink(trash):
            for _, dirs, files, fd in os.fwalk(trash, topdown=False):
                for name in files:
                    with contextlib.suppress(OSError):
                        if os.stat(name, dir_fd=fd, follow_symlinks=False).st_ctime < cutoff:  # ctime: when trashed
                            os.unlink(name, dir_fd=fd)
                            log.info("emptied %s from the trash (older than %g days)", name, max_age_s / 86400)
                for name in dirs:
                    with contextlib.suppress(OSError):
                        os.rmdir(name, dir_fd=fd)
        trashed = self.index.trashed()
        gone = [path for path, (key, _) in trashed.items() if self._trash_key(path) != key]
        self.index.drop_trashed(gone)
        kept = {row.sha256 for row in self._rows.values()} | {sha for p, (_, sha) in trashed.items() if p not in gone}
        if self.index.keep_chunk_lists(kept):
            with self._lock:
                self._list_ids = self.index.list_ids()

    def _trash_key(self, path: str) -> Key | None:
        """(size, mtime_ns, inode) of the file at `path` in the trash, or None if it is not there."""
        st = self.stat(f"{STATE_DIR}/{TRASH_DIR}/{path}")
        return file_key(st) if st is not None and stat.S_ISREG(st.st_mode) else None

    def chunk_list(self, fd: int, st: os.stat_result) -> ChunkList:
        """The chunk list of the open file `fd` (`st`: its stat when opened), from the
        index when that version was cut before, else cut now and kept there.
        Raises `TransferError` if the file changes while it is cut."""
        sha256 = self.digest(fd, st)
        cached = self.cached_chunk_list(sha256, st.st_size)
        if cached is not None:
            return cached
        chunks = chunk_fd(fd, st.st_size)
        if file_key(os.fstat(fd)) != file_key(st):
            raise TransferError("the file changed while it was cut into chunks")
        self.keep_chunk_list(sha256, chunks)
        return chunks

    def cached_chunk_list(self, sha256: str, size: int) -> ChunkList | None:
        """The chunk list of the version `sha256` if it was cut (or received) before."""
        cached = self.index.chunk_list(sha256)
        if cached is not None:
            with contextlib.suppress(ProtocolError):  # a bad row is cut again, not trusted
                return decode_chunk_list(cached, size)
        return None

    def keep_chunk_list(self, sha256: str, chunks: ChunkList) -> None:
        """Remember the chunk list of the version `sha256` (cut here, or received and
        checked against the id the directory gave): that version is never cut again."""
        list_id = chunks.list_id()
        self.index.put_chunk_list(sha256, list_id, chunks.encode())
        with self._lock:
            self._list_ids[sha256] = list_id

    def list_id(self, sha256: str) -> str | None:
        """The id of the chunk list of the version `sha256`, if it has one here."""
        with self._lock:
            return self._list_ids.get(sha256)

    def chunk_sources(self, wanted: ChunkList, exclude: str, limit: int = CHUNK_SOURCES) -> list[tuple[int, ChunkList]]:
        """Other large files here that hold chunks of `wanted`, open (the caller closes
        them), with their lists: the `limit` sharing the most, of the first
        `CHUNK_CANDIDATES` files with a kept list, in the folder or in the trash.
        A copy or an edited clone of a file, a renamed and then changed one, one
        deleted and then brought back edited: each is a source of a delta."""
        ids = set(wanted.digests)
        with self._lock:
            listed = set(self._list_ids)
        candidates = [
            (path, f.key, f.sha256)
            for path, f in list(self._last.items())
            if path != exclude and f.size >= DELTA_MIN_BYTES and f.sha256 in listed
        ]
        trash = f"{STATE_DIR}/{TRASH_DIR}/"
        candidates += [(trash + path, key, sha) for path, (key, sha) in self.index.trashed().items() if sha in listed]
        scored = []
        for path, key, sha256 in candidates[:CHUNK_CANDIDATES]:
            chunks = self.cached_chunk_list(sha256, key[0])
            shared = sum(digest in ids for digest in chunks.digests) if chunks is not None else 0
            if chunks is not None and shared:
                scored.append((shared, path, key, chunks))
        scored.sort(key=lambda item: -item[0])
        opened: list[tuple[int, ChunkList]] = []
        for _, path, key, chunks in scored[:limit]:
            try:
                fd = self._open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            except (OSError, UnsafeName):
                continue
            if file_key(os.fstat(fd)) != key:  # changed since its scan: its list is not its content
                os.close(fd)
                continue
            opened.append((fd, chunks))
        return opened

    def _cut_large(self, found: dict[str, LocalFile]) -> bool:
        """Give every large file its chunk list (once per version, kept in the index),
        so it can be reported with its list's id and sent or received as a delta;
        whether any was cut. A file that changes meanwhile waits for the next scan."""
        cut = False
        for path, f in found.items():
            if f.size < DELTA_MIN_BYTES or self.list_id(f.sha256) is not None:
                continue
            try:
                fd = self._open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            except (OSError, UnsafeName):
                continue
            try:
                st = os.fstat(fd)
                if file_key(st) != f.key:
                    continue
                self.chunk_list(fd, st)
                cut = True
            except (OSError, TransferError) as exc:
                log.debug("not cutting %s now: %s", path, exc)
            finally:
                os.close(fd)
        return cut

    def in_trash(self, path: str, size: int | None) -> str | None:
        """The trashed copy of `path` (as a path of the folder), if one of that size is
        there: a file deleted and then brought back is copied from it, not fetched."""
        trashed = f"{STATE_DIR}/{TRASH_DIR}/{path}"
        st = self.stat(trashed) if size is not None else None
        return trashed if st is not None and stat.S_ISREG(st.st_mode) and st.st_size == size else None

    def trash_paths(self) -> list[str]:
        """What is in the trash, as relative paths of the folder (with any `.N` suffix)."""
        trash = os.path.join(self.root, STATE_DIR, TRASH_DIR)
        found = []
        if os.path.isdir(trash) and not os.path.islink(trash):
            for top, _, files in os.walk(trash):
                rel = os.path.relpath(top, trash)
                found += [name if rel == "." else f"{rel}/{name}" for name in files]
        return sorted(found)

    def write_note(self, name: str, data: bytes) -> None:
        """Replace the state folder's file `name` with `data` in one step (a reader
        sees the old or the new one): what the engine leaves for `p2psync status`."""
        fd = self._state_dir(create=True)
        if fd is None or self.read_only:
            if fd is not None:
                os.close(fd)
            return
        try:
            part = f"{name}.part"
            out = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0o600, dir_fd=fd)
            try:
                write_all(out, data)
            finally:
                os.close(out)
            os.replace(part, name, src_dir_fd=fd, dst_dir_fd=fd)
        except OSError as exc:
            self._say_once(name, logging.WARNING, "cannot write %s/%s: %s", STATE_DIR, name, exc)
        finally:
            os.close(fd)

    def read_note(self, name: str) -> bytes | None:
        """The state folder's file `name`, or None."""
        fd = self._state_dir(create=False)
        if fd is None:
            return None
        try:
            src = os.open(name, os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC, dir_fd=fd)
            with open(src, "rb") as file:
                return file.read(16 << 20)
        except OSError:
            return None
        finally:
            os.close(fd)

    # ------------------------------------------------------------ changing the folder for the network

    def set_mtime(self, path: str, mtime: int, mode: int | None = None, expect: Any = ANY) -> bool:
        """Stamp an existing file with `mtime` (and `mode`): its content already
        matches. Only if it is still the file the decision saw (`expect`)."""
        with self._parent(safe_path(path)) as (dir_fd, leaf):
            try:
                fd = os.open(leaf, os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC | getattr(os, "O_NONBLOCK", 0), dir_fd=dir_fd)
            except OSError:
                return False
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or (expect is not ANY and file_key(st) != expect):
                    return False
                if mode is not None:
                    os.fchmod(fd, sync_mode(mode))
                os.utime(fd, (mtime, mtime))
            finally:
                os.close(fd)
        return True

    def move_to_trash(self, path: str, expect: Key, deletion: Deletion) -> bool:
        """Move the file at `path` into `.p2psync/trash/` under its relative path
        (`.1`, `.2`, ... when an earlier copy is there: never overwritten), if it
        is still the file the decision saw. Folders it emptied are removed."""
        try:
            with self._parent(safe_path(path)) as (dir_fd, leaf):
                st = os.stat(leaf, dir_fd=dir_fd, follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode) or file_key(st) != expect:
                    return False
                with self._trash_parent(path) as (trash_fd, trash_leaf):
                    taken = self._free_name(trash_fd, trash_leaf)
                    os.rename(leaf, taken, src_dir_fd=dir_fd, dst_dir_fd=trash_fd)
        except (OSError, UnsafeName) as exc:
            log.warning("cannot move %s to the trash: %s; leaving it", path, exc)
            return False
        seen = self._last.get(path)
        if seen is not None and seen.key == expect and self.list_id(seen.sha256) is not None:
            # Its chunks stay a delta source (a file deleted, then brought back edited).
            self.index.put_trashed(f"{path.rpartition('/')[0]}/{taken}".lstrip("/"), expect, seen.sha256)
        self._forget(path, deletion)
        self._remove_empty_parents(path)
        return True

    @contextlib.contextmanager
    def _trash_parent(self, path: str) -> Iterator[tuple[int, str]]:
        with self._parent(f"{STATE_DIR}/{TRASH_DIR}/{path}", create=True) as found:
            yield found

    @staticmethod
    def _free_name(dir_fd: int, leaf: str) -> str:
        """`leaf`, or `leaf.1`, `leaf.2`, ...: the first that names nothing in `dir_fd`."""
        for n in range(100_000):
            name = leaf if n == 0 else f"{leaf}.{n}"
            try:
                os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                return name
        raise OSError(errno.EEXIST, f"no free name for {leaf}")

    def keep_aside(self, path: str, aside: Callable[[int], str]) -> str | None:
        """Rename the file at `path` to a conflict copy, never replacing anything:
        `aside(0)`, or `aside(1)`, `aside(2)`, ... while those are taken. It then
        syncs as a new file. The name it got, or None (logged) if it could not move."""
        try:
            for n in range(1000):
                name = safe_path(aside(n))
                with self._parent(safe_path(path)) as (dir_fd, leaf), self._parent(name, True) as (to_fd, to):
                    try:
                        os.link(leaf, to, src_dir_fd=dir_fd, dst_dir_fd=to_fd, follow_symlinks=False)
                    except FileExistsError:
                        if not _same_file(dir_fd, leaf, to_fd, to):
                            continue
                        # This very file: a kill -9 came between the link and the unlink. Finish.
                    os.unlink(leaf, dir_fd=dir_fd)  # a rename that cannot replace: link, then unlink
                self._forget(path, None)
                return name
            raise OSError(errno.EEXIST, "every conflict name is taken")
        except (OSError, UnsafeName) as exc:
            log.warning("cannot keep %s aside as a conflict copy: %s", path, exc)
            return None

    def _forget(self, path: str, deletion: Deletion | None) -> None:
        """`path` left the folder on the network's behalf: no tombstone of ours
        for it (or `deletion`, the one applied, which this peer then reports too)."""
        self._rows.pop(path, None)
        self._last.pop(path, None)
        self.generation += 1
        tombstones = []
        if deletion is not None:
            self._own_deletions[path] = deletion
            tombstones.append((path, deletion))
        self.index.update(removed=[path], tombstones=tombstones)

    def _remove_empty_parents(self, path: str) -> None:
        while "/" in path:
            path = path.rpartition("/")[0]
            try:
                with self._parent(path) as (dir_fd, leaf):
                    os.rmdir(leaf, dir_fd=dir_fd)
            except OSError:
                return  # not empty (or not ours to remove): stop here

    def copy_local(self, source: str, path: str, version: Version, expect: Any) -> bool:
        """Install `version` of `path` from the bytes of another file of this folder
        (`source`, with the same hash): a rename or a copy made elsewhere is not
        fetched again. The copy is made with `copy_file_range` (a reflink where
        the filesystem has one) and verified before it is installed."""
        try:
            src = self._open(source, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        except (OSError, UnsafeName):
            return False
        try:
            st = os.fstat(src)
            if not stat.S_ISREG(st.st_mode) or st.st_size != version.size:
                return False
            with self.partial(path, version.sha256, expect=expect) as part:
                copy_range(src, part.fd, st.st_size)
                os.lseek(part.fd, 0, os.SEEK_SET)
                if hash_fd(part.fd) != version.sha256:  # changed since it was hashed: fetch it instead
                    return False
                return part.commit(version.mtime, version.mode, version.vector)
        except (OSError, UnsafeName) as exc:
            log.debug("copying %s to %s here failed: %s", source, path, exc)
            return False
        finally:
            os.close(src)

    # ------------------------------------------------------------ serving

    def open_for_serving(self, name: str, folders: OpenFolders | None = None) -> tuple[int, os.stat_result]:
        """Open a file to serve: `(fd, stat)`. The caller closes the fd.
        `folders`: subfolder descriptors to reuse and keep (a burst of requests).

        Raises `UnsafeName` for a path that is not a servable file of this
        folder (unsafe, ignored, through or at a symlink, not a regular file)
        and `FileNotFoundError` when there is no such file.
        """
        self._check_synced(name)
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
        try:
            if folders is None or "/" not in name:
                fd = self._open(name, flags)
            else:
                folder, _, leaf = name.rpartition("/")
                fd = os.open(leaf, flags | O_NOFOLLOW | O_CLOEXEC, dir_fd=folders.get(folder, name))
        except OSError as exc:
            raise _symlink_refused(name, exc) from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise UnsafeName(f"{name!r} is not a regular file")
        return fd, st

    def read_to_serve(
        self, name: str, folders: OpenFolders, read: Callable[[int, bytes], tuple[_Read, int, int, int] | None]
    ) -> tuple[_Read, str | None] | None:
        """`read(dir_fd, leaf)` of the file `name` (the core reading a small file where
        it lives, never through a symlink), and the file's SHA-256 when the scan's
        cache knows that version; None when `read` says the file needs the slower
        way. Raises `UnsafeName` as `open_for_serving` does, and what `read` raises."""
        self._check_synced(name)
        folder, _, leaf = name.rpartition("/")
        try:
            got = read(folders.get(folder, name) if folder else self._dir_fd, os.fsencode(leaf))
        except OSError as exc:
            raise _symlink_refused(name, exc) from None
        if got is None:
            return None
        what, size, mtime_ns, inode = got
        with self._lock:
            return what, self._hashes.get((size, mtime_ns, inode))

    # ------------------------------------------------------------ receiving

    def free_bytes(self) -> int:
        """Bytes free for an unprivileged writer on the folder's filesystem."""
        vfs = os.statvfs(self._dir_fd)
        return vfs.f_bavail * vfs.f_frsize

    def prune_partials(self, wanted: set[str]) -> None:
        """Delete kept partial downloads of versions no longer wanted (by sha256)."""
        state = self._state_dir(create=False)
        if state is None:
            return
        try:
            for entry in os.scandir(state):
                digest = entry.name.removesuffix(PARTIAL_SUFFIX)
                if entry.name.endswith(PARTIAL_SUFFIX) and digest not in wanted:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.name, dir_fd=state)
        finally:
            os.close(state)

    def _state_dir(self, create: bool) -> int | None:
        """A descriptor of the hidden `.p2psync` folder (never a symlink), or None."""
        try:
            return os.open(STATE_DIR, DIR_FLAGS, dir_fd=self._dir_fd)
        except FileNotFoundError:
            if not create:
                return None
        except OSError as exc:
            log.warning("%s/%s is unusable (%s); downloads will not be resumable", self.root, STATE_DIR, exc)
            return None
        try:
            os.mkdir(STATE_DIR, 0o700, dir_fd=self._dir_fd)
            return os.open(STATE_DIR, DIR_FLAGS, dir_fd=self._dir_fd)
        except OSError as exc:
            log.warning("cannot create %s/%s (%s); downloads will not be resumable", self.root, STATE_DIR, exc)
            return None

    def digest(self, fd: int, st: os.stat_result) -> str:
        """The SHA-256 of an open file, from the scan's cache when unchanged."""
        with self._lock:
            cached = self._hashes.get(file_key(st))
        return cached or hash_fd(fd)

    @contextlib.contextmanager
    def partial(
        self, name: str, sha256: str | None = None, resumable: bool = False, expect: Any = ANY
    ) -> Iterator[PartialFile]:
        """A partial download of `name` to write into; removed unless committed
        (see `open_partial`)."""
        part = self.open_partial(name, sha256, resumable, expect)
        try:
            yield part
        finally:
            part.close()

    def open_partial(
        self, name: str, sha256: str | None = None, resumable: bool = False, expect: Any = ANY
    ) -> PartialFile:
        """A partial download of `name` (the version `sha256`, if known); the caller closes it.

        `resumable` (with `sha256`): the partial lives in the hidden `.p2psync`
        folder, is kept when the transfer fails, and `offset` says how much of it
        a later attempt can resume from. Otherwise it is an anonymous file, or
        `name.part`, removed on failure. `expect`: what `commit` may replace (see
        `Install`). Raises `UnsafeName` for a name that may not be written here.
        """
        self._check_synced(name)
        state = self._state_dir(create=True) if resumable and sha256 is not None else None
        try:
            return PartialFile(self, name, state, sha256, expect)
        except BaseException:
            if state is not None:
                os.close(state)
            raise

    def install_many(self, downloads: Sequence[Install | tuple[Any, ...]]) -> list[bool]:
        """Install small downloads held whole in memory (`Install`s, verified by
        the caller); for each, whether it was installed.

        Each with the guarantees of a partial download's `commit` (atomic, only
        over the file the decision saw, symlinks replaced not followed), in the
        fewest system calls: paths new here are created complete in one batch per
        folder by the core (`link_new_files`, without the GIL in the extension);
        a path that is taken goes the way of a partial download. Raises
        `UnsafeName` for a path that may not be written here, before writing anything.
        """
        items = [d if type(d) is Install else Install(*d) for d in downloads]
        by_folder: dict[str, list[int]] = {}  # paths that must be free, per folder: created in one batch each
        for i, item in enumerate(items):  # every path checked before anything is written
            self._check_synced(item.name)
            if item.expect is ANY or item.expect is None:
                by_folder.setdefault(item.name.rpartition("/")[0], []).append(i)
        done = [False] * len(items)
        if by_folder and self._anonymous_supported():
            for indexes in by_folder.values():
                self._link_batch(items, indexes, done)
        for i, item in enumerate(items):
            if not done[i]:  # taken, failed, not tried after a failure, or a replacement
                with self.partial(item.name, item.sha256, expect=item.expect) as part:  # raises what was wrong
                    write_all(part.fd, item.data)
                    done[i] = part.commit(item.mtime, item.mode, item.vector)
        return done

    def _link_batch(self, items: Sequence[Install], indexes: list[int], done: list[bool]) -> None:
        """Create `items[i]` for each of `indexes` (all in one folder) with one call
        of the core; mark in `done` those it created."""
        batch = [items[i] for i in indexes]
        try:
            with self._parent(batch[0].name, create=True) as (dir_fd, _):
                tried = link_new_files(
                    dir_fd,
                    [(os.fsencode(it.name.rpartition("/")[2]), it.data, it.mtime, sync_mode(it.mode)) for it in batch],
                )
        except (OSError, UnsafeName):
            return  # the one by one way meets the trouble and says what it is
        installed = []
        for item, i, inode in zip(batch, indexes, tried, strict=False):
            if inode > 0:
                done[i] = True
                key = (len(item.data), item.mtime * 1_000_000_000, inode)
                installed.append((item.name, key, sync_mode(item.mode), item.sha256, item.mtime, item.vector))
        self._installed(installed)

    def _installed(self, installed: Iterable[tuple[str, Key, int, str | None, int, Vector]]) -> None:
        """Verified downloads `(path, key, mode, sha256, mtime, vector)` are in place:
        their hashes are known (never read again) and, from p2psync sources, they
        are the versions agreed on with the network."""
        rows, hashes = [], {}
        last, own_rows, own_deletions = self._last, self._rows, self._own_deletions
        for path, key, mode, sha256, mtime, vector in installed:
            if sha256 is None:
                continue
            size, mtime_ns, inode = key
            hashes[key] = sha256
            row = IndexRow(
                path, size, mtime_ns, mode, inode, sha256, vector, Version(mtime, size, sha256, mode, vector)
            )
            rows.append(row)
            own_rows[path] = row
            last[path] = LocalFile(path, mtime_ns // 1_000_000_000, size, sha256, mtime_ns, inode, mode, vector)
            if own_deletions:
                own_deletions.pop(path, None)
        if rows:
            with self._lock:  # once for the batch
                self._hashes.update(hashes)
                self.generation += 1
                self._unwritten += rows

    def flush(self) -> None:
        """Write what downloads installed to the index, in one transaction. Until
        then a kill loses only the index's note of them: the next scan finds the
        files, and the same bytes as the network's are never a conflict."""
        with self._lock:
            rows, self._unwritten = self._unwritten, []
        if rows:
            self.index.update(rows, untombstoned=[row.path for row in rows])

    def _check_synced(self, name: str) -> None:
        """Raise `UnsafeName` unless `name` is a path this folder syncs."""
        why = self.rules.why_not(name)
        if why is not None:
            raise UnsafeName(f"{name!r} is not a synced file: {why}")

    def _anonymous_supported(self) -> bool:
        """Whether downloads can start as anonymous files here (`O_TMPFILE`, and
        /proc to name them by); found out once per folder."""
        if self._anonymous_ok is None:
            fd = self._new_anonymous(self._dir_fd)
            self._anonymous_ok = fd >= 0 and os.path.exists(f"/proc/self/fd/{fd}")
            if fd >= 0:
                os.close(fd)
        return self._anonymous_ok

    def _open_anonymous(self, dir_fd: int) -> int:
        """A new file with no name in the folder `dir_fd` (Linux `O_TMPFILE`), or -1
        where there is none. Installing it later costs one link instead of a
        create plus a rename, and a download that fails leaves nothing behind at
        all. Measured: 10,000 x 4 KiB installs 1.45x faster than through `name.part`."""
        return self._new_anonymous(dir_fd) if self._anonymous_supported() else -1

    @staticmethod
    def _new_anonymous(dir_fd: int) -> int:
        try:
            return os.open(".", os.O_RDWR | O_TMPFILE | O_CLOEXEC, 0o666, dir_fd=dir_fd)
        except OSError:  # this filesystem cannot (EOPNOTSUPP; EISDIR on old kernels), or the
            return -1  # trouble is general, and the named way will meet it and say what it is


def _symlink_refused(name: str, exc: OSError) -> Exception:
    """What to raise when opening `name` to serve it failed with `exc`: `UnsafeName`
    when it met a symlink where the file should be (`O_NOFOLLOW`), else `exc`."""
    return UnsafeName(f"{name!r} is a symbolic link") if exc.errno == errno.ELOOP else exc


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _same_file(dir_a: int, name_a: str, dir_b: int, name_b: str) -> bool:
    """Whether two names are links of one file (neither followed if a symlink)."""
    a, b = (os.stat(n, dir_fd=d, follow_symlinks=False) for d, n in ((dir_a, name_a), (dir_b, name_b)))
    return _identity(a) == _identity(b)


class _Kind(NamedTuple):
    many: str  # the log line's plural
    why: str  # status's reason


# What a scan passes over: how its one log line counts it, and why status says it does not sync.
_PASSED_OVER = {
    "symlink": _Kind("symlinks", "a symlink: never followed or synced"),
    "FIFO": _Kind("FIFOs", "a FIFO: only regular files sync"),
    "socket": _Kind("sockets", "a socket: only regular files sync"),
    "device": _Kind("devices", "a device: only regular files sync"),
    "folder too deep": _Kind("folders too deep", f"a folder more than {MAX_DEPTH} deep"),
}
# A file that changed or went while it was hashed: the next scan takes it, no word.
_PASSING_ERRNOS = frozenset({errno.EAGAIN, errno.ENOENT, errno.ENOTDIR, errno.ELOOP})
_PASSED_OVER_SHOWN = 5  # paths named in that line; the rest are counted


def _special_kind(entry: os.DirEntry[str]) -> str:
    """What a directory entry that is neither a regular file nor a folder is."""
    if entry.is_symlink():
        return "symlink"
    st_mode = entry.stat(follow_symlinks=False).st_mode
    return "FIFO" if stat.S_ISFIFO(st_mode) else "socket" if stat.S_ISSOCK(st_mode) else "device"
