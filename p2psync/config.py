"""Settings: frozen objects holding every tunable of a peer, passed in, never patched.

Strategy: the classic adapter and the `p2psync` command differ only in their
settings (`PeerSettings.classic`): the classic rule and an index in memory
for code written against the assignment, the whole tree and an index on disk
for the command. Values are checked where they are built (`DeleteLimit.parse`
raises `ConfigError`), so a bad one is one clear line for the user.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import ConfigError

__all__ = ["DAY_S", "DeleteLimit", "PeerSettings"]

DAY_S = 86400.0


@dataclass(frozen=True)
class DeleteLimit:
    """The brake: the most deletions from the network one round applies. A round
    that would delete more than `count` files, or more than `percent` % of the
    folder's files when `count` is None (and more than `floor` files), deletes
    none of them."""

    count: int | None = None
    percent: float = 50.0
    floor: int = 10

    @classmethod
    def parse(cls, text: str) -> DeleteLimit:
        """`N` (a count) or `N%` (of the folder's files; `100%` turns the brake off)."""
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(%?)\s*", text)
        if match is None:
            raise ConfigError(f"max-delete: expected a count like 50 or a share like 20%, got {text!r}")
        value, percent = match.groups()
        if percent:
            share = float(value)
            if share > 100:
                raise ConfigError(f"max-delete: {text!r} is over 100%")
            return cls(None, share, 0)
        if "." in value:
            raise ConfigError(f"max-delete: a count is a whole number, got {text!r}")
        return cls(int(value), 100.0, 0)

    def allows(self, deletions: int, files: int) -> bool:
        """Whether a round may delete `deletions` of a folder's `files` files."""
        if self.count is not None:
            return deletions <= self.count
        if self.percent >= 100:
            return True
        return deletions <= self.floor or deletions * 100 <= files * self.percent

    def __str__(self) -> str:
        if self.count is not None:
            return str(self.count)
        return f"{self.percent:g}% of the folder" + (f", once more than {self.floor} files" if self.floor else "")


@dataclass(frozen=True)
class PeerSettings:
    """Everything a peer can be told; the defaults are the classic peer's."""

    interval: float = 5.0  # seconds between rounds: the classic round
    first_delay: float = 2.0  # the classic first round, after start(); the command starts at once
    max_backoff: float = 60.0  # longest wait between tries to reach a tracker that is down
    max_file_size: int | None = None  # refuse larger downloads (default: the free disk space)
    watch: bool = False  # watch the folder instead of rescanning it every round
    classic: bool = True  # the classic rule, an index in memory, features declared after the first round
    max_delete: DeleteLimit = field(default_factory=DeleteLimit)
    trash_days: float = 30.0  # trash and own deletions older than this are let go
    max_rate: float | None = None  # bytes per second, each way (uploads; downloads); None: no limit
    group_key: bytes | None = field(default=None, repr=False)  # members only (never shown: repr=False)
    tls: bool = False  # members only, encrypted: TLS with the swarm's certificate (needs group_key)
