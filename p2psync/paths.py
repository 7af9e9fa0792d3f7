"""Which paths may cross the wire: the one rule (RelPath) every path in or out passes.

Strategy: a synced path is relative, `/`-separated and NFC, and each of its
components is a plain file name that means the same on every filesystem
(`safe_name`); so anything that could climb out of the folder, or name a
different file elsewhere, is refused here before any file code sees it. The
classic protocol syncs one flat folder: `is_classic_name` says which paths a
classic peer could have made itself. Pure functions, no filesystem access:
`local/` adds the checks that need one (symlinks, regular files).
"""

from __future__ import annotations

import re
import unicodedata

from .errors import UnsafeName

__all__ = [
    "CLASSIC_IGNORED_SUFFIXES",
    "MAX_DEPTH",
    "MAX_NAME_BYTES",
    "MAX_PATH_BYTES",
    "PART_SUFFIX",
    "is_classic_name",
    "safe_name",
    "safe_path",
]

MAX_NAME_BYTES = 255  # NAME_MAX on Linux, macOS and Windows: one component
MAX_PATH_BYTES = 4096  # PATH_MAX on Linux: a whole relative path
MAX_DEPTH = 64  # folders within folders; deeper trees are refused, not walked
PART_SUFFIX = ".part"  # a download in progress; never served or reported

# Control characters (C0, DEL, C1), and the characters Windows forbids in names.
_FORBIDDEN = re.compile(r'[\x00-\x1f\x7f-\x9f/\\:*?"<>|]')
# Device names Windows reserves whatever the extension ("NUL.txt" too).
_WINDOWS_RESERVED = re.compile(r"^(con|prn|aux|nul|com[0-9¹²³]|lpt[0-9¹²³])(\..*)?$", re.IGNORECASE)
# The classic rule: source and binaries of the program itself are never synced.
CLASSIC_IGNORED_SUFFIXES = (".py", ".so", ".dll")
_KNOWN_SAFE: set[str] = set()  # single names found safe
_KNOWN_SAFE_PATHS: set[str] = set()  # paths with a `/` found safe (never confused with names)
_KNOWN_SAFE_MAX = 1_000_000


def safe_name(name: str) -> str:
    """Return `name` if it is a safe single file name, else raise `UnsafeName`.

    Answers from a cache for names already found safe (a round checks each
    name several times; a folder's names repeat every round).

    Refused: empty, `.` and `..`, any path separator (`/`, `\\`), drive letters
    and other characters Windows forbids, control characters and NUL, Windows
    device names, trailing dots or spaces, names that change under NFC
    normalization, and names over 255 bytes of UTF-8.
    """
    if not isinstance(name, str):
        raise UnsafeName(f"file name must be a string, not {type(name).__name__}")
    if name in _KNOWN_SAFE:
        return name
    shown = repr(name[:100])
    if name in ("", ".", ".."):
        raise UnsafeName(f"file name {shown} is not a file")
    match = _FORBIDDEN.search(name)
    if match:
        raise UnsafeName(f"file name {shown} contains forbidden character {match.group()!r}")
    if _WINDOWS_RESERVED.match(name):
        raise UnsafeName(f"file name {shown} is a reserved device name")
    if name[-1] in ". ":
        raise UnsafeName(f"file name {shown} ends with a dot or space")
    if unicodedata.normalize("NFC", name) != name:
        raise UnsafeName(f"file name {shown} is not NFC-normalized")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsafeName(f"file name {shown} is not valid Unicode") from None
    if len(encoded) > MAX_NAME_BYTES:
        raise UnsafeName(f"file name {shown} is {len(encoded)} bytes (limit {MAX_NAME_BYTES})")
    _remember_safe(_KNOWN_SAFE, name)
    return name


def safe_path(path: str) -> str:
    """Return `path` if it is a safe relative path, else raise `UnsafeName`.

    A relative `/`-separated path of at most `MAX_DEPTH` components, each one
    a `safe_name` (so no empty component, no `.` or `..`, no leading `/`), at
    most `MAX_PATH_BYTES` bytes of UTF-8 in all.
    """
    if not isinstance(path, str):
        raise UnsafeName(f"path must be a string, not {type(path).__name__}")
    if path in _KNOWN_SAFE_PATHS:
        return path
    if "/" not in path:
        return safe_name(path)
    parts = path.split("/")
    if len(parts) > MAX_DEPTH:
        raise UnsafeName(f"path {path[:100]!r} is {len(parts)} levels deep (limit {MAX_DEPTH})")
    if len(path) > MAX_PATH_BYTES or len(path.encode("utf-8", "replace")) > MAX_PATH_BYTES:
        raise UnsafeName(f"path {path[:100]!r}... is over {MAX_PATH_BYTES} bytes")
    for part in parts:
        try:
            safe_name(part)
        except UnsafeName as exc:
            raise UnsafeName(f"path {path[:200]!r}: {exc}") from None
    _remember_safe(_KNOWN_SAFE_PATHS, path)
    return path


def _remember_safe(cache: set[str], text: str) -> None:
    if len(cache) >= _KNOWN_SAFE_MAX:
        cache.clear()  # bounded: a stream of new names cannot grow it without end
    cache.add(text)


def is_classic_name(path: str) -> bool:
    """Whether a classic peer could have made `path` itself: one name in its
    folder (no `/`), not its own program (`*.py`, `*.so`, `*.dll`)."""
    return "/" not in path and not path.endswith(CLASSIC_IGNORED_SUFFIXES)
