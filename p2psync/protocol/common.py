"""What both conversations share: the checks every decoder uses, and how a
bad message is quoted in an error. Sans-IO, like the rest of the package."""

from __future__ import annotations

import re

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_SHOWN_BYTES = 100  # how much of a bad message an error message quotes


def _shown(data: bytes | str) -> str:
    text = data if isinstance(data, str) else data.decode("utf-8", "replace")
    return repr(text[:_SHOWN_BYTES]) + ("..." if len(text) > _SHOWN_BYTES else "")
