"""Which file names may cross the wire: one check for every name in or out.

Strategy: a synced name is a single path segment (the classic protocol syncs
one flat folder), so anything that could be read as a path, or that differs
between filesystems, is refused here before any file code sees it. Pure
function, no filesystem access: `files.py` adds the checks that need one
(symlinks, regular files, real paths).
"""

from __future__ import annotations

import re
import unicodedata

from .errors import UnsafeName

__all__ = ["MAX_NAME_BYTES", "PART_SUFFIX", "is_ignored", "safe_name"]

MAX_NAME_BYTES = 255  # NAME_MAX on Linux, macOS and Windows
PART_SUFFIX = ".part"  # a download in progress; never served or reported

# Control characters (C0, DEL, C1), and the characters Windows forbids in names.
_FORBIDDEN = re.compile(r'[\x00-\x1f\x7f-\x9f/\\:*?"<>|]')
# Device names Windows reserves whatever the extension ("NUL.txt" too).
_WINDOWS_RESERVED = re.compile(r"^(con|prn|aux|nul|com[0-9¹²³]|lpt[0-9¹²³])(\..*)?$", re.IGNORECASE)
# The classic rule: source and binaries of the program itself are never synced.
_CLASSIC_IGNORED_SUFFIXES = (".py", ".so", ".dll")
_KNOWN_SAFE: set[str] = set()
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
    if len(_KNOWN_SAFE) >= _KNOWN_SAFE_MAX:
        _KNOWN_SAFE.clear()  # bounded: a stream of new names cannot grow it without end
    _KNOWN_SAFE.add(name)
    return name


def is_ignored(name: str) -> bool:
    """Whether a name in the folder is left out of syncing by rule, not by danger.

    The classic rule leaves out `*.py`, `*.so` and `*.dll`; p2psync also leaves
    out its own `*.part` downloads in progress.
    """
    return name.endswith(_CLASSIC_IGNORED_SUFFIXES) or name.endswith(PART_SUFFIX)
