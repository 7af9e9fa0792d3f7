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
from dataclasses import dataclass, replace

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
    for source, chunks in enumerate(held):
        for digest, offset in zip(chunks.digests, chunks.offsets(), strict=True):
            where.setdefault(digest, (source, offset))
    steps: list[Step] = []
    offset = 0
    for i, (length, digest) in enumerate(zip(wanted.lengths, wanted.digests, strict=True)):
        found = where.get(digest)
        last = steps[-1] if steps else None
        if found is not None:
            source, at = found
            if last is not None and last.source == source and last.source_offset + last.length == at:
                steps[-1] = replace(last, length=last.length + length, count=last.count + 1)
            else:
                steps.append(Step(offset, length, source, at, i, 1))
        elif last is not None and last.source is None and last.length + length <= RUN_MAX_BYTES:
            steps[-1] = replace(last, length=last.length + length, count=last.count + 1)
        else:
            steps.append(Step(offset, length, None, 0, i, 1))
        offset += length
    return steps
