"""Names of conflict copies: `NAME.sync-conflict-YYYYMMDD-HHMMSS-PEER.EXT`, as Syncthing names them."""

from __future__ import annotations

import re
from datetime import datetime, timezone

__all__ = ["conflict_name", "is_conflict_copy"]

_MARK = re.compile(r"\.sync-conflict-\d{8}-\d{6}-[0-9A-Za-z]+(\.|$)")


def conflict_name(path: str, mtime: int, peer_id: str) -> str:
    """The name the losing version of `path` is kept under: its mtime (UTC) and
    the short id of the peer that made it go between the name and its extension
    (`docs/a.txt` -> `docs/a.sync-conflict-20261202-103000-ABC1234.txt`)."""
    folder, slash, name = path.rpartition("/")
    stem, dot, ext = name.rpartition(".")
    if not stem:  # no extension, or a dot file such as `.bashrc`
        stem, dot, ext = name, "", ""
    stamp = datetime.fromtimestamp(max(0, mtime), timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{folder}{slash}{stem}.sync-conflict-{stamp}-{peer_id}{dot}{ext}"


def is_conflict_copy(path: str) -> bool:
    """Whether `path` names a conflict copy."""
    return _MARK.search(path.rpartition("/")[2]) is not None
