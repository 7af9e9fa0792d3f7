"""Which bytes of a wanted version a receiver has already (issue 14): the plan
of a delta transfer, from the wanted version's chunk list and the lists of
what the folder holds. Pure: no socket, file or clock.

Each chunk of the new version is taken from the first place that holds a
chunk with its id, else fetched. Neighbouring chunks taken from one place,
back to back there too, make one copy; neighbouring chunks to fetch make one
run (a request for a range of bytes), cut at `RUN_MAX_BYTES` so a run is
held in memory, checked chunk by chunk, before it is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from p2psync.protocol.chunks import ChunkList

__all__ = ["RUN_MAX_BYTES", "Step", "plan_delta"]

RUN_MAX_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Step:
    """`length` bytes of the new version, from `offset` in it: copied from `source`
    (an index into the lists the plan was given) at `source_offset`, or fetched
    (`source` None) as chunks `first` to `first + count - 1` of the new list."""

    offset: int
    length: int
    source: int | None
    source_offset: int
    first: int
    count: int


def plan_delta(wanted: ChunkList, held: Sequence[ChunkList]) -> list[Step]:
    """The steps that build `wanted`, in order, from the chunks in `held` and fetched runs."""
    where: dict[bytes, tuple[int, int]] = {}
    for k, chunks in enumerate(held):
        for digest, place in zip(chunks.digests, chunks.offsets(), strict=True):
            where.setdefault(digest, (k, place))
    steps: list[Step] = []
    # The step being grown, as plain locals: a 1 GiB version is ~16,000 chunks,
    # mostly merged into a few steps, and a new frozen Step per chunk cost ~40 ms.
    start = length = at = first = count = 0
    source: int | None = None
    offset = 0
    for i, (size, digest) in enumerate(zip(wanted.lengths, wanted.digests, strict=True)):
        found = where.get(digest)
        if count and (
            (found is not None and source == found[0] and at + length == found[1])
            or (found is None and source is None and length + size <= RUN_MAX_BYTES)
        ):
            length += size
            count += 1
        else:
            if count:
                steps.append(Step(start, length, source, at, first, count))
            source, at = (None, 0) if found is None else found
            start, length, first, count = offset, size, i, 1
        offset += size
    if count:
        steps.append(Step(start, length, source, at, first, count))
    return steps
