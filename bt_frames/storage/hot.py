"""The hot buffer: rows acknowledged in the WAL and not yet in a block.

In-memory contract:

- ``HotBuffer`` holds the rows of consecutive WAL records ``first_lsn ..
  last_lsn`` in LSN order, as a few Polars frames. A frame added is owned by
  the buffer: the caller passes one decoded from the WAL payload (or a deep
  copy), never a frame that may share memory with the user's arrays.
- Chunks are consolidated as they arrive, like a tiered LSM: when the last
  ``FANOUT`` chunks are of the same level they are concatenated into one
  chunk of the next level. So ``n`` one-row appends leave
  ``O(FANOUT * log_FANOUT n)`` chunks, each row is copied
  ``O(log_FANOUT n)`` times, and a scan's cost is linear in the hot rows.
- ``take()`` hands every row over to the block writer (``Frozen``) and
  leaves the buffer empty; a frozen run stays visible to scans until its
  block is published.
- ``merged(chunks, levels, df)`` is the consolidation as a pure function (new
  lists, nothing changed), so that it can run in another thread while the
  record's fsync waits for the disk; ``add_merged`` then installs its result.
  Whoever calls it must keep the buffer unchanged in between (the table holds
  its lock across the append).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

FANOUT = 16


@dataclass(eq=False)
class Frozen:
    """Hot rows handed to the block writer. Still hot -- in the WAL, seen by scans -- until their block is durable."""

    first: int
    last: int
    chunks: list[pl.DataFrame]
    rows: int
    records: int  # WAL records / bytes holding these rows
    bytes: int
    error: BaseException | None = None

    def frame(self) -> pl.DataFrame:
        return pl.concat(self.chunks, rechunk=True) if len(self.chunks) != 1 else self.chunks[0]


@dataclass
class HotBuffer:
    chunks: list[pl.DataFrame] = field(default_factory=list)
    levels: list[int] = field(default_factory=list)
    rows: int = 0
    first_lsn: int = -1
    last_lsn: int = -1
    records: int = 0  # WAL records / bytes holding these rows
    bytes: int = 0

    def __bool__(self) -> bool:
        return bool(self.chunks)

    def add(self, lsn: int, df: pl.DataFrame, record_bytes: int) -> None:
        """Add the rows of WAL record ``lsn`` (the next one after ``last_lsn``)."""
        chunks, levels = self.merged(self.chunks, self.levels, df)
        self.add_merged(lsn, df.height, record_bytes, chunks, levels)

    def add_merged(self, lsn: int, rows: int, record_bytes: int, chunks: list[pl.DataFrame], levels: list[int]) -> None:
        """Add WAL record ``lsn`` of ``rows`` rows, given ``merged(self.chunks, self.levels, its rows)``."""
        self.chunks[:] = chunks  # in place: the list object stays the one a later take() hands over
        self.levels[:] = levels
        self.rows += rows
        if self.first_lsn < 0:
            self.first_lsn = lsn
        self.last_lsn = lsn
        self.records += 1
        self.bytes += record_bytes

    @staticmethod
    def merged(chunks: list[pl.DataFrame], levels: list[int], df: pl.DataFrame) -> tuple[list[pl.DataFrame], list[int]]:
        """(chunks, levels) after adding ``df`` and consolidating; the lists passed in are not changed."""
        chunks, levels = [*chunks, df], [*levels, 0]
        while len(levels) >= FANOUT and len(set(levels[-FANOUT:])) == 1:
            level = levels[-1]
            chunks = [*chunks[:-FANOUT], pl.concat(chunks[-FANOUT:], rechunk=True)]
            levels = [*levels[:-FANOUT], level + 1]
        return chunks, levels

    def take(self) -> Frozen:
        out = Frozen(self.first_lsn, self.last_lsn, self.chunks, self.rows, self.records, self.bytes)
        self.chunks, self.levels = [], []
        self.rows = self.records = self.bytes = 0
        self.first_lsn = self.last_lsn = -1
        return out
