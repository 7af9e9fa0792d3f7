"""`p2psync status`: is this folder in sync, and if not, what differs and why.

The answer is one JSON-able document (schema below, `SCHEMA_VERSION`), which
the terminal shows as tables and scripts read with `--json`. It is built from
three sources, none of which is changed by looking:

- the folder itself, scanned read-only beside a running sync (`Folder(read_only=True)`);
- the note the engine leaves after each round (`.p2psync/status.json`: what
  that round left behind, and the brake);
- with `--tracker`, the tracker's directory, run through the same decision the
  engine makes (`sync.decide`), so "behind" means what the next round would do.

Document (version 1):
    {"schema": 1, "folder": str, "in_sync": bool, "checked": "tracker" | "last round" | "never synced",
     "files": int,                                  synced files in the folder
     "behind":     [{"path", "from", "why"}],       the network has something newer (from: HOST:PORT, or "")
     "only_local": [{"path", "why"}],               here, not (yet) on the other peers
     "conflicts":  [str],                           conflict copies in the folder
     "not_synced": [{"path", "why"}],               here, but never synced: symlinks, unsafe names, unreadable
     "held_back":  int,                             deletions the brake is holding back
     "trash":      [str],                           what is in .p2psync/trash/
     "last_round": {"time": float, "in_sync": bool, "held_back": int,
                    "behind": [{"path", "from", "why"}], "tracker": "HOST:PORT"} | null,
     "tracker":    {"address": str, "kind": "p2psync" | "classic",
                    "files": [{"path", "size", "mtime", "sha256", "holders": [str]}],
                    "deleted": [{"path", "time", "sha256"}]} | null}
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from p2psync.config import DeleteLimit
from p2psync.events import Behind, RoundOutcome
from p2psync.ignore import IgnoreRules
from p2psync.local import Folder, LocalFile
from p2psync.protocol import DirectoryEntry, Listing
from p2psync.sync import Action, Version, decide, is_conflict_copy

__all__ = ["NOTE", "SCHEMA_VERSION", "exit_code", "folder_status", "outcome_note", "read_outcome", "schema_keys"]

SCHEMA_VERSION = 1
NOTE = "status.json"  # in .p2psync/: the engine's note of its last round


def outcome_note(outcome: RoundOutcome, tracker: str) -> bytes:
    """The engine's note of a round, for `status` to read."""
    return json.dumps(
        {
            "time": outcome.time,
            "in_sync": outcome.in_sync,
            "held_back": outcome.held_back,
            "behind": [_behind(b) for b in outcome.behind],
            "tracker": tracker,
        },
        indent=1,
    ).encode()


def read_outcome(data: bytes | None) -> dict[str, Any] | None:
    """The engine's last note, or None when there is none or it is unreadable."""
    if data is None:
        return None
    try:
        note = json.loads(data)
    except ValueError:
        return None
    return note if isinstance(note, dict) and isinstance(note.get("behind"), list) else None


def folder_status(
    root: str,
    rules: IgnoreRules,
    listing: Listing | None = None,
    tracker: str | None = None,
    max_delete: DeleteLimit | None = None,
) -> dict[str, Any]:
    """The status document of the folder `root` (see the module docstring);
    with `listing` (the directory of `tracker`), checked against the network."""
    folder = Folder(root, rules, state=True, read_only=True)
    try:
        local = folder.scan()
        not_synced = [{"path": path, "why": why} for path, why in folder.not_synced]
        bases = {path: folder.base(path) for path in local}
        last = read_outcome(folder.read_note(NOTE))
        trash = folder.trash_paths()
        if listing is not None:
            checked = _against(local, folder.base, listing, max_delete or DeleteLimit(), rules)
        else:
            checked = _from_note(local, bases, last)
    finally:
        folder.close()
    behind, only_local, held_back, how = checked
    doc: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "folder": root,
        "in_sync": not behind and not only_local and not held_back and how != "never synced",
        "checked": how,
        "files": len(local),
        "behind": behind,
        "only_local": only_local,
        "conflicts": sorted(p for p in local if is_conflict_copy(p)),
        "not_synced": not_synced,
        "held_back": held_back,
        "trash": trash,
        "last_round": last,
        "tracker": _tracker_view(listing, tracker) if listing is not None else None,
    }
    return doc


def _behind(b: Behind) -> dict[str, str]:
    return {"path": b.path, "from": b.holder, "why": b.why}


Checked = tuple[list[dict[str, str]], list[dict[str, str]], int, str]


def _from_note(local: Mapping[str, LocalFile], bases: Mapping[str, Version | None], last: Any) -> Checked:
    """Without a tracker: what the last round left behind, and what changed here since."""
    only_local = []
    for path, mine in sorted(local.items()):
        base = bases[path]
        if base is None or not mine.version().same_content(base):
            only_local.append({"path": path, "why": "changed here since the last agreement with the network"})
    if last is None:
        return [], only_local, 0, "never synced"
    behind = [b for b in last["behind"] if isinstance(b, dict)]
    return behind, only_local, int(last.get("held_back") or 0), "last round"


def _against(
    local: Mapping[str, LocalFile],
    base: Callable[[str], Version | None],
    listing: Listing,
    limit: DeleteLimit,
    rules: IgnoreRules,
) -> Checked:
    """With the tracker's directory: what the next round would do, path by path."""
    remote = {p: e for p, e in listing.files.items() if rules.syncs(p)}  # as the engine: ignored paths stay out
    ours = {p: f.version() for p, f in local.items()}
    theirs = {p: e.version() for p, e in remote.items()}
    behind: list[dict[str, str]] = []
    only_local: list[dict[str, str]] = []
    trash: list[str] = []
    for path, action in decide(ours, theirs, listing.deleted, base, listing.extended):
        entry = remote.get(path)
        holder = f"{entry.ip}:{entry.port}" if entry is not None else ""
        if action in (Action.FETCH, Action.STAMP):
            why = "newer on the network" if path in local else "not here yet"
            behind.append({"path": path, "from": holder, "why": why if action is Action.FETCH else "newer mtime"})
        elif action is Action.CONFLICT:
            behind.append({"path": path, "from": holder, "why": "changed here and elsewhere: a conflict copy is due"})
        elif action is Action.TRASH:
            trash.append(path)
        elif action in (Action.ASIDE, Action.KEEP_FOLDER):
            behind.append({"path": path, "from": holder, "why": "a file here, a folder elsewhere (or the reverse)"})
        elif path in local and (path not in theirs or not ours[path].same_content(theirs[path])):
            only_local.append({"path": path, "why": _why_only_local(path, theirs, ours)})
    held = 0 if limit.allows(len(trash), len(local)) else len(trash)
    behind += [
        {"path": p, "from": "", "why": "deleted elsewhere" + (": held back by the brake" if held else "")}
        for p in trash
    ]
    return sorted(behind, key=lambda b: b["path"]), only_local, held, "tracker"


def _why_only_local(path: str, theirs: Mapping[str, Version], ours: Mapping[str, Version]) -> str:
    if path not in theirs:
        return "not on the tracker yet"
    return "newer here: goes out with the next report"


def _tracker_view(listing: Listing, address: str | None) -> dict[str, Any]:
    return {
        "address": address or "",
        "kind": "p2psync" if listing.extended else "classic",
        "files": [_entry_json(path, e) for path, e in sorted(listing.files.items())],
        "deleted": [
            {"path": path, "time": d.time, "sha256": d.sha256}
            for path, ds in sorted(listing.deleted.items())
            for d in ds
        ],
    }


def _entry_json(path: str, e: DirectoryEntry) -> dict[str, Any]:
    return {
        "path": path,
        "size": e.size,
        "mtime": e.mtime,
        "sha256": e.sha256,
        "holders": [f"{ip}:{port}" for ip, port in e.holders()],
    }


def exit_code(doc: Mapping[str, Any]) -> int:
    """0 in sync, 1 not."""
    return 0 if doc["in_sync"] else 1


def schema_keys() -> Sequence[str]:
    """The top-level keys every status document has (tests check documents against them)."""
    return (
        "schema",
        "folder",
        "in_sync",
        "checked",
        "files",
        "behind",
        "only_local",
        "conflicts",
        "not_synced",
        "held_back",
        "trash",
        "last_round",
        "tracker",
    )
