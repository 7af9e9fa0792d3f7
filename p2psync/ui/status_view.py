"""`p2psync status` on a terminal: the status document (`p2psync.status`) as tables."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from p2psync.events import count_text, size_text

__all__ = ["show_status"]

SHOWN_ROWS = 50  # per table; the JSON has everything


def show_status(doc: Mapping[str, Any], console: Console) -> None:
    state = "[green]in sync[/]" if doc["in_sync"] else "[red]not in sync[/]"
    how = {"tracker": "checked against the tracker now", "last round": "as the last round left it"}.get(
        doc["checked"], "never synced"
    )
    console.print(f"[bold]{doc['folder']}[/]: {state} ({how}); {count_text(doc['files'], 'file')}")
    last = doc.get("last_round")
    if last:
        when = datetime.datetime.fromtimestamp(last["time"]).strftime("%Y-%m-%d %H:%M:%S")
        console.print(f"last round's state since {when}, tracker {last.get('tracker', '?')}", style="dim")
    _table(console, "Behind", ("path", "from", "why"), [(b["path"], b["from"], b["why"]) for b in doc["behind"]])
    _table(console, "Only here", ("path", "why"), [(b["path"], b["why"]) for b in doc["only_local"]])
    _table(console, "Conflict copies", ("path",), [(p,) for p in doc["conflicts"]])
    _table(console, "Not synced", ("path", "why"), [(n["path"], n["why"]) for n in doc["not_synced"]])
    if doc["held_back"]:
        console.print(
            f"[yellow]the brake holds back {count_text(doc['held_back'], 'deletion')}[/]: "
            "run `p2psync sync DIR --max-delete 100%` once to let them go"
        )
    _table(console, "Trash (.p2psync/trash/)", ("path",), [(p,) for p in doc["trash"]])
    tracker = doc.get("tracker")
    if tracker:
        rows = [(f["path"], _size(f["size"]), _when(f["mtime"]), ", ".join(f["holders"])) for f in tracker["files"]]
        _table(console, f"Tracker {tracker['address']} ({tracker['kind']})", ("path", "size", "mtime", "holders"), rows)
        deleted = [(d["path"], _when(d["time"])) for d in tracker["deleted"]]
        _table(console, "Deleted on the network", ("path", "deleted at"), deleted)


def _size(size: int | None) -> str:
    return "?" if size is None else size_text(size)


def _when(seconds: int) -> str:
    return datetime.datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M")


def _table(console: Console, title: str, columns: Sequence[str], rows: Sequence[tuple[str, ...]]) -> None:
    if not rows:
        return
    # The heading is a line of its own: as the table's title it would be wrapped to
    # the table's width, and a one-column table of short paths is narrow.
    console.print(f"[bold]{title}: {len(rows)}[/]")
    table = Table(show_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows[:SHOWN_ROWS]:
        table.add_row(*row)
    console.print(table)
    if len(rows) > SHOWN_ROWS:
        console.print(f"... and {len(rows) - SHOWN_ROWS} more (--json lists all)", style="dim")
