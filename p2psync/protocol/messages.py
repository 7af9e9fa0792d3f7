"""Peer <-> tracker: the newline-delimited JSON of the classic protocol (Init,
KeepAlive, the directory) and p2psync's negotiated extensions on it (features,
tree paths, versions, tombstones, long polls). Every encoder produces the exact
bytes a classic program produces (`json.dumps` default separators); every
decoder checks types and ranges and raises `ProtocolError` saying what was wrong."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from p2psync.errors import ProtocolError
from p2psync.records import quick_frozen
from p2psync.sync.versions import MAX_VECTOR, Deletion, Vector, Version

from .common import _SHA256_HEX, _shown

MAX_FILES_PER_MESSAGE = 1_000_000  # a bound on what one message may make us hold
MAX_WAIT_S = 60  # longest a tracker may hold a long-poll KeepAlive's reply (well under the 180 s liveness rule)
# What a p2psync program can do beyond the classic protocol; a peer declares the
# ones it knows in its Init, a p2psync tracker answers in the extended shape with
# those both know. "tree": paths with `/` and names the classic rule leaves out;
# "deleted": tombstones; "wait": long polls; "delta": replies with only what
# changed since the generation a peer last saw.
FEATURES = ("tree", "deleted", "wait", "delta")
EXTENDED_MARK = "p2psync"  # the key of an extended reply: never a classic entry (its value is a number)
_PEER_ID = re.compile(r"^[0-9A-Za-z]{1,16}$")
_GENERATION = re.compile(r"^[0-9A-Za-z.:_-]{1,64}$")  # opaque to peers: a tracker's epoch and counter
MAX_DELETIONS_PER_PATH = 8  # deletions of different versions of one path the tracker lists


@quick_frozen
@dataclass(frozen=True)
class FileInfo:
    """One file as a peer reports it: classic `name` and `mtime`, plus extensions."""

    name: str
    mtime: int
    size: int | None = None
    sha256: str | None = None
    mode: int | None = None  # permission bits (p2psync peers)
    vector: Vector = ()  # version vector (p2psync peers), see sync.versions
    chunks: str | None = None  # large files: the id of the version's chunk list (protocol/chunks.py)

    def to_json(self) -> dict[str, Any]:
        """The JSON object for this file; classic keys first, as classic peers order them."""
        obj: dict[str, Any] = {"name": self.name, "mtime": self.mtime}
        _put_version(obj, self.size, self.sha256, self.mode, self.vector)
        if self.chunks is not None:
            obj["chunks"] = self.chunks
        return obj

    def version(self) -> Version:
        return Version(self.mtime, self.size, self.sha256, self.mode, self.vector)


def _put_version(obj: dict[str, Any], size: int | None, sha256: str | None, mode: int | None, vector: Vector) -> None:
    if size is not None:
        obj["size"] = size
    if sha256 is not None:
        obj["sha256"] = sha256
    if mode is not None:
        obj["mode"] = mode
    if vector:
        obj["vector"] = [[peer, n] for peer, n in vector]


@dataclass(frozen=True)
class PeerMessage:
    """Init (`files` is a list) or KeepAlive (`files` is None) from a peer.

    `wait` (a p2psync extension, KeepAlive only): the peer lets the tracker hold
    the reply up to this many seconds, until the directory changes. Classic
    trackers ignore the key and answer at once."""

    port: int
    files: tuple[FileInfo, ...] | None
    wait: float = 0.0
    features: tuple[str, ...] = ()  # what this p2psync peer can do (none: a classic peer)
    deleted: tuple[tuple[str, Deletion], ...] = ()  # its tombstones, with `files`
    since: str | None = None  # the directory generation it holds: a delta reply will do


@quick_frozen
@dataclass(frozen=True)
class DirectoryEntry:
    """Where the newest version of one file lives, as the tracker tells it."""

    ip: str
    port: int
    mtime: int
    size: int | None = None
    sha256: str | None = None
    sources: tuple[tuple[str, int], ...] = ()  # every live holder of this version
    mode: int | None = None
    vector: Vector = ()
    chunks: str | None = None  # the id of the version's chunk list, when its holder cut it

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"ip": self.ip, "port": self.port, "mtime": self.mtime}
        _put_version(obj, self.size, self.sha256, None, ())
        if self.sources:
            obj["sources"] = [[ip, port] for ip, port in self.sources]
        if self.mode is not None:
            obj["mode"] = self.mode
        if self.vector:
            obj["vector"] = [[peer, n] for peer, n in self.vector]
        if self.chunks is not None:
            obj["chunks"] = self.chunks
        return obj

    def version(self) -> Version:
        return Version(self.mtime, self.size, self.sha256, self.mode, self.vector)

    def holders(self) -> list[tuple[str, int]]:
        """Every known holder of this version, the primary one first."""
        first = (self.ip, self.port)
        return [first, *(s for s in self.sources if s != first)]


# ---------------------------------------------------------------- helpers


def _line(obj: Any) -> bytes:
    # Default separators on purpose: byte-for-byte what classic programs send.
    return json.dumps(obj).encode("utf-8") + b"\n"


def _load_object(line: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ProtocolError(f"{what} is not valid JSON ({exc}): {_shown(line)}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what} must be a JSON object, not {type(obj).__name__}: {_shown(line)}")
    return obj


def _int(obj: Mapping[str, Any], key: str, what: str, lo: int = 0, hi: int | None = None) -> int:
    value = obj.get(key)
    # bool is an int in Python but never a number on the wire.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(f"{what}: {key!r} must be a number, got {_shown(json.dumps(value))}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ProtocolError(f"{what}: {key!r} must be finite, got {value}")
        value = math.floor(value)  # classic mtimes are whole seconds, rounded down
    if value < lo or (hi is not None and value > hi):
        raise ProtocolError(f"{what}: {key!r} = {value} is out of range")
    return value


def _port(obj: Mapping[str, Any], what: str) -> int:
    return _int(obj, "port", what, 1, 65535)


def _optional_size(obj: Mapping[str, Any], what: str) -> int | None:
    return None if obj.get("size") is None else _int(obj, "size", what)


def _optional_sha256(obj: Mapping[str, Any], what: str, key: str = "sha256") -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not _SHA256_HEX.match(value):
        raise ProtocolError(f"{what}: '{key}' must be 64 lowercase hex digits, got {_shown(str(value))}")
    return value


def _optional_mode(obj: Mapping[str, Any], what: str) -> int | None:
    return None if obj.get("mode") is None else _int(obj, "mode", what, 0, 0o7777) & 0o777


def _vector(raw: Any, what: str) -> Vector:
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > MAX_VECTOR:
        raise ProtocolError(f"{what}: 'vector' must be a list of at most {MAX_VECTOR} [peer, counter] pairs")
    pairs = {}
    for item in raw:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not isinstance(item[0], str)
            or not _PEER_ID.match(item[0])
            or isinstance(item[1], bool)
            or not isinstance(item[1], int)
            or not 0 <= item[1] < 2**63
        ):
            raise ProtocolError(f"{what}: each vector entry must be [peer id, counter], got {_shown(json.dumps(item))}")
        pairs[item[0]] = item[1]
    return tuple(sorted(pairs.items()))


def _name(obj: Mapping[str, Any], what: str) -> str:
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        raise ProtocolError(f"{what}: 'name' must be a non-empty string")
    return name


# ---------------------------------------------------------------- peer -> tracker


def encode_init(
    port: int,
    files: Iterable[FileInfo],
    features: Iterable[str] = (),
    deleted: Iterable[tuple[str, Deletion]] = (),
    since: str | None = None,
) -> bytes:
    """Init: the peer's serving port and its full file list, exactly as a classic
    peer (p2psync peers add what they can do, and their tombstones)."""
    obj: dict[str, Any] = {"port": port, "files": [f.to_json() for f in files]}
    features = list(features)
    if features:
        obj["features"] = features
    tombstones = [_deletion_json(name, d) for name, d in deleted]
    if tombstones:
        obj["deleted"] = tombstones
    if since is not None:
        obj["since"] = since
    return _line(obj)


def _deletion_json(name: str, d: Deletion) -> dict[str, Any]:
    obj: dict[str, Any] = {"name": name, "mtime": d.time}
    if d.sha256 is not None:
        obj["sha256"] = d.sha256
    if d.vector:
        obj["vector"] = [[peer, n] for peer, n in d.vector]
    return obj


def _decode_deletion(item: Any, what: str) -> Deletion:
    if not isinstance(item, dict):
        raise ProtocolError(f"{what} must be an object, not {type(item).__name__}")
    return Deletion(_int(item, "mtime", what), _optional_sha256(item, what), _vector(item.get("vector"), what))


def _features(obj: Mapping[str, Any], what: str) -> tuple[str, ...]:
    raw = obj.get("features")
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > 64 or not all(isinstance(f, str) and len(f) <= 64 for f in raw):
        raise ProtocolError(f"{what}: 'features' must be a list of short strings")
    return tuple(f for f in FEATURES if f in raw)  # ours that it knows, in our order


def encode_keepalive(
    port: int, wait: float | None = None, features: Iterable[str] = (), since: str | None = None
) -> bytes:
    """KeepAlive: `{"port": N}`; with `wait`, `{"port": N, "wait": S}`: a long poll,
    answered when the directory changes or after S seconds (p2psync trackers).
    With `features`, a first message that holds nothing but asks for the
    extended directory (`p2psync status --tracker`)."""
    obj: dict[str, Any] = {"port": port}
    if wait is not None:
        if not 0 < wait <= MAX_WAIT_S:
            raise ValueError(f"wait must be in (0, {MAX_WAIT_S}] seconds, got {wait}")
        obj["wait"] = wait
    features = list(features)
    if features:
        obj["features"] = features
    if since is not None:
        obj["since"] = since
    return _line(obj)


def _wait(obj: Mapping[str, Any]) -> float:
    value = obj.get("wait")
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= MAX_WAIT_S:
        raise ProtocolError(f"peer message: 'wait' must be 0 to {MAX_WAIT_S} seconds, got {_shown(json.dumps(value))}")
    return float(value)


def _since(obj: Mapping[str, Any], what: str) -> str | None:
    value = obj.get("since")
    if value is None:
        return None
    if not isinstance(value, str) or not _GENERATION.match(value):
        raise ProtocolError(f"{what}: 'since' must be a generation a tracker sent, got {_shown(json.dumps(value))}")
    return value


def decode_peer_message(line: bytes) -> PeerMessage:
    """Parse one line from a peer. Raises `ProtocolError` on anything malformed.

    File names are returned as sent; whether they are safe is the caller's
    decision (a tracker skips unsafe ones rather than dropping the peer).
    """
    obj = _load_object(line, "peer message")
    port = _port(obj, "peer message")
    features = _features(obj, "peer message")
    since = _since(obj, "peer message")
    if "files" not in obj or obj["files"] is None:
        return PeerMessage(port, None, _wait(obj), features, since=since)
    raw = obj["files"]
    if not isinstance(raw, list):
        raise ProtocolError(f"peer message: 'files' must be a list, not {type(raw).__name__}")
    if len(raw) > MAX_FILES_PER_MESSAGE:
        raise ProtocolError(f"peer message lists {len(raw)} files (limit {MAX_FILES_PER_MESSAGE})")
    files = []
    for i, item in enumerate(raw):
        what = f"peer message: files[{i}]"
        if not isinstance(item, dict):
            raise ProtocolError(f"{what} must be an object, not {type(item).__name__}")
        files.append(
            FileInfo(
                name=_name(item, what),
                mtime=_int(item, "mtime", what),
                size=_optional_size(item, what),
                sha256=_optional_sha256(item, what),
                mode=_optional_mode(item, what),
                vector=_vector(item.get("vector"), what),
                chunks=_optional_sha256(item, what, "chunks"),
            )
        )
    raw_deleted = obj.get("deleted") or []
    if not isinstance(raw_deleted, list) or len(raw_deleted) > MAX_FILES_PER_MESSAGE:
        raise ProtocolError("peer message: 'deleted' must be a list")
    deleted = []
    for i, item in enumerate(raw_deleted):
        what = f"peer message: deleted[{i}]"
        deleted.append((_name(item if isinstance(item, dict) else {}, what), _decode_deletion(item, what)))
    return PeerMessage(port, tuple(files), 0.0, features, tuple(deleted), since)


# ---------------------------------------------------------------- tracker -> peer


def encode_directory(entries: Mapping[str, DirectoryEntry]) -> bytes:
    """The directory reply: one JSON object mapping name -> entry, one line."""
    return _line({name: entry.to_json() for name, entry in entries.items()})


def _decode_sources(raw: Any, what: str) -> tuple[tuple[str, int], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ProtocolError(f"{what}: 'sources' must be a list")
    sources = []
    for item in raw:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not isinstance(item[0], str)
            or isinstance(item[1], bool)
            or not isinstance(item[1], int)
            or not 1 <= item[1] <= 65535
        ):
            raise ProtocolError(f"{what}: each source must be [ip, port], got {_shown(json.dumps(item))}")
        sources.append((item[0], item[1]))
    return tuple(sources)


@dataclass(frozen=True)
class Listing:
    """A tracker's reply as a p2psync peer reads it: the entries it could use,
    what it skipped and why, the deletions (extended replies only), and
    whether the tracker is a p2psync one that answered in the extended shape."""

    files: dict[str, DirectoryEntry]
    deleted: dict[str, tuple[Deletion, ...]]
    extended: bool
    features: tuple[str, ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()  # (name, why): one bad entry poisons nothing
    generation: str | None = None  # the tracker's generation of this directory (extended replies)
    since: str | None = None  # a delta: only what changed since this generation (see `apply_delta`)
    removed: tuple[str, ...] = ()  # a delta: paths no longer listed


def apply_delta(base: Listing, delta: Listing) -> Listing:
    """The whole directory: `base` (the listing of generation `delta.since`) with
    `delta` applied. In a delta, every path whose deletions changed carries its
    whole list of deletions, an empty one when they are gone; what the tracker
    can do is as the whole directory said."""
    if delta.since is None:
        return delta
    if not (delta.files or delta.removed or delta.deleted):  # nothing changed: share the base's maps
        return Listing(base.files, base.deleted, delta.extended, base.features, delta.skipped, delta.generation)
    files = {name: entry for name, entry in base.files.items() if name not in delta.removed}
    files.update(delta.files)
    deleted = dict(base.deleted)
    for name, ds in delta.deleted.items():
        if ds:
            deleted[name] = ds
        else:
            deleted.pop(name, None)
    return Listing(files, deleted, delta.extended, base.features, delta.skipped, delta.generation)


def encode_listing(
    entries: Mapping[str, DirectoryEntry],
    deleted: Mapping[str, Iterable[Deletion]],
    features: Iterable[str],
    generation: str | None = None,
    since: str | None = None,
    removed: Iterable[str] = (),
) -> bytes:
    """The extended reply, for peers that declared features: one JSON object, one
    line. With `since`, a delta (see `apply_delta`): `entries` and `deleted` hold
    only the paths changed since that generation, and `removed` the paths gone."""
    obj: dict[str, Any] = {EXTENDED_MARK: 1}
    files = {name: entry.to_json() for name, entry in entries.items()}
    tombstones = {
        name: [_deletion_json(name, d) for d in ds]
        for name, ds in ((n, list(ds)) for n, ds in deleted.items())
        if ds or since is not None
    }
    if since is None:
        obj.update(features=list(features), files=files, deleted=tombstones)
    else:  # a delta says only what changed: an idle peer's reply is a few dozen bytes
        obj.update({k: v for k, v in (("files", files), ("deleted", tombstones), ("removed", list(removed))) if v})
        obj["since"] = since
    if generation is not None:
        obj["generation"] = generation
    return _line(obj)


def decode_listing(line: bytes) -> Listing:
    """Parse a tracker's reply, classic or extended, keeping every good entry.

    Raises `ProtocolError` only when the line as a whole is not a reply (not
    JSON, not an object, too many entries); a malformed entry is left out and
    named in `skipped`, so one hostile holder cannot stop a whole round.
    """
    obj = _load_object(line, "directory")
    extended = obj.get(EXTENDED_MARK) == 1 and (isinstance(obj.get("files"), dict) or "since" in obj)
    raw_files = obj.get("files", {}) if extended else obj
    if not isinstance(raw_files, dict):
        raise ProtocolError("directory: 'files' must be an object")
    if len(raw_files) > MAX_FILES_PER_MESSAGE:
        raise ProtocolError(f"directory lists {len(raw_files)} files (limit {MAX_FILES_PER_MESSAGE})")
    files: dict[str, DirectoryEntry] = {}
    skipped: list[tuple[str, str]] = []
    for name, item in raw_files.items():
        try:
            files[name] = decode_entry(name, item)
        except ProtocolError as exc:
            skipped.append((name, str(exc)))
    deleted: dict[str, tuple[Deletion, ...]] = {}
    features: tuple[str, ...] = ()
    generation = since = None
    removed: tuple[str, ...] = ()
    if extended:
        generation, since, removed = _delta_fields(obj)
        try:
            features = _features(obj, "directory")
        except ProtocolError as exc:
            skipped.append(("features", str(exc)))
        raw_deleted = obj.get("deleted")
        for name, items in (raw_deleted if isinstance(raw_deleted, dict) else {}).items():
            try:
                if not isinstance(items, list) or len(items) > MAX_DELETIONS_PER_PATH:
                    raise ProtocolError(
                        f"deletions of {_shown(name)} must be a list of at most {MAX_DELETIONS_PER_PATH}"
                    )
                deleted[name] = tuple(_decode_deletion(d, f"deletion of {_shown(name)}") for d in items)
            except ProtocolError as exc:
                skipped.append((name, str(exc)))
    return Listing(files, deleted, extended, features, tuple(skipped), generation, since, removed)


def _delta_fields(obj: Mapping[str, Any]) -> tuple[str | None, str | None, tuple[str, ...]]:
    """(generation, since, removed) of an extended reply. A delta that cannot be
    read is an error (applying half of one would leave a wrong directory)."""
    generation = obj.get("generation")
    if generation is not None and (not isinstance(generation, str) or not _GENERATION.match(generation)):
        raise ProtocolError(f"directory: bad 'generation' {_shown(json.dumps(generation))}")
    since = _since(obj, "directory")
    if since is None:
        return generation, None, ()
    removed = obj.get("removed", [])
    if generation is None or not isinstance(removed, list) or not all(isinstance(n, str) for n in removed):
        raise ProtocolError("directory: a delta needs a 'generation' and a 'removed' list of paths")
    if len(removed) > MAX_FILES_PER_MESSAGE:
        raise ProtocolError(f"directory removes {len(removed)} files (limit {MAX_FILES_PER_MESSAGE})")
    return generation, since, tuple(removed)


def decode_directory(line: bytes) -> dict[str, DirectoryEntry]:
    """Parse the tracker's directory reply. Raises `ProtocolError` if malformed.

    Names are returned as sent; the peer checks each with `safe_name` and skips
    the unsafe ones, so one bad entry cannot stop a whole round.
    """
    obj = _load_object(line, "directory")
    if len(obj) > MAX_FILES_PER_MESSAGE:
        raise ProtocolError(f"directory lists {len(obj)} files (limit {MAX_FILES_PER_MESSAGE})")
    return {name: decode_entry(name, item) for name, item in obj.items()}


def decode_entry(name: str, item: Any) -> DirectoryEntry:
    """One directory entry from its JSON value. Raises `ProtocolError` if malformed."""
    # Every peer decodes every entry every round: the well-formed case is
    # checked in a few type tests; anything else takes the path that explains.
    return (type(item) is dict and _plain_entry(item)) or _checked_entry(name, item)


def _plain_entry(item: dict[str, Any]) -> DirectoryEntry | None:
    """`item` as an entry if it is plainly well-formed (exact types, in range), else None."""
    ip, port, mtime = item.get("ip"), item.get("port"), item.get("mtime")
    size, digest, listed = item.get("size"), item.get("sha256"), item.get("sources")
    if not (type(ip) is str and ip and type(port) is int and 0 < port < 65536 and type(mtime) is int and mtime >= 0):
        return None
    if (size is not None and not (type(size) is int and size >= 0)) or (
        digest is not None and not (type(digest) is str and _SHA256_HEX.match(digest))
    ):
        return None
    mode, raw_vector, chunks = item.get("mode"), item.get("vector"), item.get("chunks")
    if mode is not None and not (type(mode) is int and 0 <= mode <= 0o7777):
        return None
    if chunks is not None and not (type(chunks) is str and _SHA256_HEX.match(chunks)):
        return None
    vector: Vector = ()
    if raw_vector is not None:
        if type(raw_vector) is not list or len(raw_vector) > MAX_VECTOR:
            return None
        for pair in raw_vector:
            if not (type(pair) is list and len(pair) == 2 and type(pair[0]) is str and type(pair[1]) is int):
                return None
            peer = pair[0]
            if not (0 <= pair[1] < 2**63 and 0 < len(peer) <= 16 and peer.isascii() and peer.isalnum()):
                return None
        if len(raw_vector) == 1:  # the usual case: one peer ever changed the file
            vector = ((raw_vector[0][0], raw_vector[0][1]),)
        else:
            vector = tuple(sorted(dict((p[0], p[1]) for p in raw_vector).items()))
    if mode is not None:
        mode &= 0o777
    if listed is None:
        return DirectoryEntry(ip, port, mtime, size, digest, (), mode, vector, chunks)
    if type(listed) is not list:
        return None
    pairs = []
    for pair in listed:
        if not (type(pair) is list and len(pair) == 2 and type(pair[0]) is str and type(pair[1]) is int):
            return None
        if not 0 < pair[1] < 65536:
            return None
        pairs.append((pair[0], pair[1]))
    return DirectoryEntry(ip, port, mtime, size, digest, tuple(pairs), mode, vector, chunks)


def _checked_entry(name: str, item: Any) -> DirectoryEntry:
    """`decode_entry` the slow way: every rule checked in turn, the first broken one raised."""
    what = f"directory entry {_shown(name)}"
    if not isinstance(item, dict):
        raise ProtocolError(f"{what} must be an object, not {type(item).__name__}")
    ip = item.get("ip")
    if not isinstance(ip, str) or not ip:
        raise ProtocolError(f"{what}: 'ip' must be a non-empty string")
    return DirectoryEntry(
        ip=ip,
        port=_port(item, what),
        mtime=_int(item, "mtime", what),
        size=_optional_size(item, what),
        sha256=_optional_sha256(item, what),
        sources=_decode_sources(item.get("sources"), what),
        mode=_optional_mode(item, what),
        vector=_vector(item.get("vector"), what),
        chunks=_optional_sha256(item, what, "chunks"),
    )
