"""scan(): a Polars IO source that plans with the pruner and reads survivors with Polars."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import polars as pl
from polars.io.plugins import register_io_source

from bt_frames import prune as _prune
from bt_frames.errors import BtError, SchemaMismatchError
from bt_frames.storage import blocks as blk

if TYPE_CHECKING:
    from bt_frames.table import Snapshot, Table

log = logging.getLogger("bt_frames")

EAGER_ROWS = 1 << 20  # survivors with fewer rows are read in one collect() (less overhead than streaming)
GROUP_ROWS = 4 << 20  # larger reads go a group of blocks at a time, each group verified just before it is read


@dataclass
class ReadStats:
    """What the last ``collect()`` of a scan actually did (``table.last_read``).

    ``columns`` and ``n_rows`` are what Polars pushed down (None: all
    columns / no limit); the counters grow while the read runs, so a
    ``head()`` that stops early shows fewer rows read than the table holds.
    """

    columns: list[str] | None
    n_rows: int | None
    predicate: str | None
    blocks: int
    block_rows: int = 0
    hot_rows: int = 0
    batches: int = 0


def scan(table: Table, where: _prune.Where | None, *, prune: bool = True) -> pl.LazyFrame:
    schema = table.schema
    where_expr = _prune.to_expr(where, schema, table=table.name)

    def source(
        with_columns: list[str] | None, predicate: pl.Expr | None, n_rows: int | None, batch_size: int | None
    ) -> Iterator[pl.DataFrame]:
        return _start(table, predicate, with_columns, n_rows, batch_size, prune=prune)

    lf = register_io_source(
        source,
        schema=schema,
        explain_name="bt_frames",
        explain_detail=f"table {table.name!r} at {table.path}",
    )
    if where_expr is not None:
        lf = lf.filter(where_expr)
    return lf


def _start(
    table: Table,
    predicate: pl.Expr | None,
    columns: list[str] | None,
    n_rows: int | None,
    batch_size: int | None,
    *,
    prune: bool = True,
) -> _Pinned:
    """One read: a snapshot (one consistent state), its plan (recorded and logged), its blocks pinned."""
    snap = table.snapshot()
    report = _prune.plan(snap, table.schema, predicate if prune else None, table=table.name)
    stats = ReadStats(columns, n_rows, str(predicate) if predicate is not None else None, len(report.survivors))
    table._record_scan(report, stats)
    log.debug("%s", report.summary())
    return _Pinned(table, report.survivors, read(snap, report.survivors, columns, predicate, n_rows, batch_size, stats))


class _Pinned(Iterator[pl.DataFrame]):
    """Iterates a read while its blocks are pinned: a compaction running meanwhile
    retires them but deletes the files only when the last reader lets go."""

    def __init__(self, table: Table, blocks: Sequence[blk.BlockInfo], it: Iterator[pl.DataFrame]) -> None:
        self._table = table
        self._paths = [b.path for b in blocks]
        self._it: Iterator[pl.DataFrame] | None = it
        table._pin(self._paths)

    def __next__(self) -> pl.DataFrame:
        if self._it is None:
            raise StopIteration
        try:
            return next(self._it)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        it, self._it = self._it, None
        if it is not None:
            try:
                close = getattr(it, "close", None)
                if close is not None:
                    close()
            finally:
                self._table._unpin(self._paths)

    def __del__(self) -> None:
        self.close()


def read(
    snap: Snapshot,
    survivors: Sequence[blk.BlockInfo],
    with_columns: list[str] | None,
    predicate: pl.Expr | None,
    n_rows: int | None,
    batch_size: int | None,
    stats: ReadStats | None = None,
) -> Iterator[pl.DataFrame]:
    """Blocks in LSN order (read by Polars), then the hot rows."""
    stats = stats if stats is not None else ReadStats(with_columns, n_rows, None, len(survivors))
    remaining = n_rows
    if remaining is not None and remaining <= 0:
        return
    eager = sum(b.rows for b in survivors) <= EAGER_ROWS
    for group in _groups(survivors, GROUP_ROWS):
        for b in group:  # verified just before their first read, not all up front: head() stops early
            blk.verify_block(b.path)
        lf = _apply(pl.scan_parquet([b.file for b in group], glob=False), predicate, with_columns, remaining)
        frames: Iterable[pl.DataFrame] = (
            [lf.collect()] if eager else lf.collect_batches(chunk_size=batch_size, maintain_order=True)
        )
        for df in frames:
            if df.height == 0:
                continue
            if remaining is not None:
                if df.height > remaining:
                    df = df.head(remaining)
                remaining -= df.height
            stats.block_rows += df.height
            stats.batches += 1
            yield df
            if remaining is not None and remaining <= 0:
                return
    if snap.hot:
        hot = _apply(pl.concat([c.lazy() for c in snap.hot]), predicate, with_columns, remaining).collect()
        if hot.height:
            stats.hot_rows += hot.height
            stats.batches += 1
            yield hot


def _groups(blocks: Sequence[blk.BlockInfo], rows: int) -> Iterator[list[blk.BlockInfo]]:
    """Consecutive runs of blocks of about ``rows`` rows (at least one block each)."""
    group: list[blk.BlockInfo] = []
    n = 0
    for b in blocks:
        if group and n + b.rows > rows:
            yield group
            group, n = [], 0
        group.append(b)
        n += b.rows
    if group:
        yield group


def _apply(
    lf: pl.LazyFrame, predicate: pl.Expr | None, with_columns: list[str] | None, n_rows: int | None
) -> pl.LazyFrame:
    if predicate is not None:
        lf = lf.filter(predicate)
    if with_columns is not None:
        lf = lf.select(with_columns)
    if n_rows is not None:
        lf = lf.head(n_rows)
    return lf


def iter_batches(
    table: Table, where: _prune.Where | None, *, columns: Sequence[str] | None, batch_size: int
) -> Iterator[pl.DataFrame]:
    """Like ``scan(where).select(columns)``, streamed without Polars' engine in between, so
    that a consumer who stops early releases the snapshot's blocks at once."""
    if batch_size < 1:
        raise BtError(f"table {table.name!r}: batch_size must be >= 1, got {batch_size}")
    schema = table.schema
    predicate = _prune.to_expr(where, schema, table=table.name)
    cols = list(columns) if columns is not None else None
    if cols is not None:
        missing = [c for c in cols if c not in schema]
        if missing:
            raise SchemaMismatchError(
                f"table {table.name!r} has no column(s) {missing}; columns: {', '.join(schema.names())}",
                table=table.name,
                columns=missing,
            )
    pinned = _start(table, predicate, cols, None, batch_size)
    try:
        for df in pinned:
            for offset in range(0, df.height, batch_size):
                yield df.slice(offset, batch_size)
    finally:
        pinned.close()
