"""Which paths of a folder sync: the defaults, the classic rule, and `.p2psyncignore`.

Strategy: one object answers "does this path sync" for scanning, serving,
fetching and watching alike, so the rule is never written twice. Every path
first passes the path rule (`paths.safe_path`); then either the classic rule
(one flat folder, never `*.py`, `*.so`, `*.dll`: a classic peer runs from its
own folder) or the tree rule: every file except p2psync's own state and the
editor and OS litter in `DEFAULT_PATTERNS`, then the folder's own
`.p2psyncignore` (gitignore syntax, matched by `pathspec`). The defaults are
checked by hand, since every scan asks for every file; `pathspec` only runs
when the folder has patterns of its own.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pathspec

from .errors import ConfigError, UnsafeName
from .paths import CLASSIC_IGNORED_SUFFIXES, PART_SUFFIX, safe_path

__all__ = ["DEFAULT_PATTERNS", "IGNORE_FILE", "STATE_DIR", "IgnoreRules"]

STATE_DIR = ".p2psync"  # the folder's private state: never scanned, served or a wire name
IGNORE_FILE = ".p2psyncignore"  # the folder's own patterns; stays local, never synced
DEFAULT_PATTERNS = (f"{STATE_DIR}/", f"/{IGNORE_FILE}", "*.part", "*.swp", "*~", ".#*", ".DS_Store", "Thumbs.db")
_LITTER_SUFFIXES = (PART_SUFFIX, ".swp", "~")
_LITTER_NAMES = (".DS_Store", "Thumbs.db")
_CLASSIC_LEFT_OUT = (*CLASSIC_IGNORED_SUFFIXES, PART_SUFFIX)
_SYNCED_MAX = 1 << 18  # remembered paths: a tree of 100,000 files fits twice over


class IgnoreRules:
    """Whether a relative path syncs. Build with `classic()`, `tree()` or `for_folder()`."""

    def __init__(self, classic: bool, patterns: Iterable[str] = ()) -> None:
        self.classic = classic
        self.patterns = tuple(patterns)
        self._spec: pathspec.GitIgnoreSpec | None = None
        # Paths found to sync: every round asks again for every path (scanning,
        # deciding, installing), and the answer never changes for one set of rules.
        self._synced: set[str] = set()
        if self.patterns:
            import pathspec  # only for a folder with patterns of its own: a quicker start for the rest

            try:
                self._spec = pathspec.GitIgnoreSpec.from_lines(self.patterns)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"bad ignore pattern: {exc}") from None

    @classmethod
    def classic_rules(cls) -> IgnoreRules:
        """The classic rule: files directly in the folder, not `*.py`, `*.so`, `*.dll`
        (nor p2psync's `*.part` downloads in progress)."""
        return cls(classic=True)

    @classmethod
    def tree(cls, patterns: Iterable[str] = ()) -> IgnoreRules:
        """The whole tree but the defaults, and `patterns` (gitignore syntax)."""
        return cls(classic=False, patterns=patterns)

    @classmethod
    def for_folder(cls, root: str | os.PathLike[str]) -> IgnoreRules:
        """The tree rule with the patterns of `root/.p2psyncignore`, if it exists.
        Raises `ConfigError` naming the file and line of a bad pattern."""
        path = os.path.join(root, IGNORE_FILE)
        try:
            with open(path, encoding="utf-8") as file:
                lines = file.read().splitlines()
        except FileNotFoundError:
            return cls.tree()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from None
        import pathspec

        for number, line in enumerate(lines, 1):
            try:
                pathspec.GitIgnoreSpec.from_lines([line])
            except (ValueError, TypeError):
                raise ConfigError(f"{path}, line {number}: bad ignore pattern {line!r}") from None
        return cls.tree(lines)

    def syncs(self, path: str) -> bool:
        """Whether the file at relative `path` syncs (an unsafe path never does)."""
        return self.why_not(path) is None

    def why_not(self, path: str) -> str | None:
        """Why the file at `path` does not sync, or None when it does."""
        if type(path) is str and path in self._synced:  # (an unhashable non-path gets its answer below)
            return None
        why = self._why_not(path)
        if why is None:
            if len(self._synced) >= _SYNCED_MAX:
                self._synced.clear()  # bounded: a stream of new names cannot grow it without end
            self._synced.add(path)
        return why

    def _why_not(self, path: str) -> str | None:
        try:
            safe_path(path)
        except UnsafeName as exc:
            return str(exc)
        if self.classic:
            if "/" in path:
                return "in a subfolder (the classic rule syncs one flat folder)"
            if path.endswith(_CLASSIC_LEFT_OUT):
                return "never synced by the classic rule (*.py, *.so, *.dll, *.part)"
            return None
        if path == IGNORE_FILE or _in_state_dir(path):
            return "p2psync's own state"
        name = path.rpartition("/")[2]
        if name.endswith(_LITTER_SUFFIXES) or name.startswith(".#") or name in _LITTER_NAMES:
            return "ignored by default (downloads in progress, editor and system litter)"
        if self._spec is not None and self._spec.match_file(path):
            return f"ignored by {IGNORE_FILE}"
        return None

    def descends(self, folder: str) -> bool:
        """Whether a scan looks inside the subfolder at relative `folder`."""
        if self.classic:
            return False
        if _in_state_dir(folder):
            return False
        return self._spec is None or not self._spec.match_file(folder + "/")


_STATE_COMPONENT = f"/{STATE_DIR}/"


def _in_state_dir(path: str) -> bool:
    """Whether `path` lies in a `.p2psync` folder: this folder's own, or that of a
    sync folder nested inside it, whose state (its peer id, index and trash) is
    as private to it as this one's is."""
    return _STATE_COMPONENT in f"/{path}/"
