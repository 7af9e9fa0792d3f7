"""Optional change watching: the folder tells the peer when it changed.

Strategy: with the `watch` extra (the `watchdog` package: inotify on Linux,
FSEvents on macOS), a `FolderWatcher` calls `on_change` for every event that
can change what the folder syncs: a file created, written and closed,
modified, moved or deleted directly in the folder. The peer then reports a
local change at once instead of at its next round, and a round with no event
skips the rescan (no `stat` per file). Events a peer causes by serving
(opening and reading files) are ignored. Without the package, `FolderWatcher`
raises `WatchingUnavailable` with the command that installs it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from p2psync.ignore import IgnoreRules

__all__ = ["FolderWatcher", "WatchingUnavailable", "require_watching"]

log = logging.getLogger(__name__)

# What can change the folder's list; opening or reading a file (serving it) cannot.
_CHANGES = frozenset({"created", "modified", "moved", "deleted", "closed", "attrib"})


class WatchingUnavailable(RuntimeError):
    """Change watching needs the `watchdog` package: pip install 'p2psync[watch]'."""


def require_watching() -> None:
    """Raise `WatchingUnavailable` unless change watching can work here."""
    try:
        import watchdog.observers  # noqa: F401
    except ImportError:
        raise WatchingUnavailable(
            "watching the folder for changes needs the watch extra: pip install 'p2psync[watch]'"
        ) from None


class FolderWatcher:
    """Calls `on_change()` (from the watcher's thread) whenever `root` may have changed."""

    def __init__(self, root: str, on_change: Callable[[], None], rules: IgnoreRules | None = None) -> None:
        require_watching()
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        self.root = root
        self.rules = rules or IgnoreRules.classic_rules()
        self._on_change = on_change

        watcher = self

        class _Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                watcher._event(event)

        self._observer: Any = Observer()
        self._observer.schedule(_Handler(), root, recursive=not self.rules.classic)

    def start(self) -> None:
        self._observer.start()
        log.info("watching %s for changes", self.root)

    def stop(self) -> None:
        if self._observer.is_alive():
            self._observer.stop()
            self._observer.join(1.0)

    @property
    def alive(self) -> bool:
        """False once the watcher has died: the peer then rescans every round again."""
        return bool(self._observer.is_alive())

    def _event(self, event: Any) -> None:
        if event.event_type not in _CHANGES:
            return
        names = [os.fsdecode(event.src_path), os.fsdecode(getattr(event, "dest_path", "") or "")]
        if any(path and self._matters(path) for path in names):
            self._on_change()

    def _matters(self, path: str) -> bool:
        """Whether an event on `path` can change what the folder syncs."""
        if path == self.root:
            return True  # the folder itself (an overflow, a rescan request): assume anything
        relative = os.path.relpath(path, self.root)
        if relative.startswith(".."):
            return False
        relative = relative.replace(os.sep, "/")
        # A folder's own event (created, moved, deleted) may change every file below it.
        return self.rules.syncs(relative) or (not self.rules.classic and self.rules.descends(relative))
