"""scan(): a Polars IO source that plans with the pruner and reads survivors with Polars.

What the source promises Polars, for the arguments Polars 2.1 pushes down:

- ``with_columns``: exactly those columns, in that order; an empty list still
  yields (zero-width) frames of the right heights, since row counts matter.
- ``predicate`` alone: only matching rows; blocks are pruned by it first.
- ``n_rows`` alone: the first ``n_rows`` rows of the table, then stop.
- both: Polars only pushes a limit from *below* a filter (``head(n).filter(p)``),
  so the first ``n_rows`` rows are taken and *then* filtered; the pruner is not
  given the predicate then (a pruned block would shift which rows are first).

Rows come in table order: blocks in LSN order, then the hot rows.

Housekeeping never breaks a reader. In the writer's process a read pins its
snapshot's blocks before the table's lock is released, so a compaction
retires them but deletes the files only when the last read lets go. A
read-only table (another process) cannot pin: the writer keeps retired files
for its ``retired_grace``, and if a block was deleted anyway before this read
returned a row, the read refreshes the table and restarts on the new
snapshot (:func:`_refreshing`); the same block missing after the refresh
raises ``CorruptionError``. A read that has already returned rows cannot
restart without repeating them: it raises ``BtError`` asking to retry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl
from polars.io.plugins import register_io_source

from bt_frames import prune as _prune
from bt_frames.errors import BtError, CorruptionError, SchemaMismatchError
from bt_frames.storage import blocks as blk
from bt_frames.storage import layout

if TYPE_CHECKING:
    from bt_frames._views import ScanSource as Table
    from bt_frames.storage.snapshot import Snapshot

log = logging.getLogger("bt_frames")

EAGER_ROWS = 1 << 20  # survivors with fewer rows are read in one collect() (less overhead than streaming)
GROUP_ROWS = 4 << 20  # larger reads go a group of blocks at a time, each group verified just before it is read
MAX_RESTARTS = 5  # a read-only read restarts at most this often when the writer deletes its blocks (_refreshing)


@dataclass
class ReadStats:
    """What the last ``collect()`` of a scan actually did (``table.last_read``).

    ``columns`` and ``n_rows`` are what Polars pushed down (None: all
    columns / no limit); the counters grow while the read runs, so a
    ``head()`` that stops early shows fewer rows read than the table holds.
    The row counters count rows the reader produced: after the predicate,
    except under ``head(n).filter(p)``, where they count the ``n`` rows the
    predicate then narrows.
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
) -> Iterator[pl.DataFrame]:
    """One read (see :func:`_open`); on a read-only table, restarted once if a block file vanished first."""

    def open_read() -> _Pinned:
        return _open(table, predicate, columns, n_rows, batch_size, prune=prune)

    if not table.read_only:  # pinned: a compaction here never deletes what the read needs
        return open_read()
    return _refreshing(table, open_read)


def _open(
    table: Table,
    predicate: pl.Expr | None,
    columns: list[str] | None,
    n_rows: int | None,
    batch_size: int | None,
    *,
    prune: bool = True,
) -> _Pinned:
    """One read: a snapshot (one consistent state), its plan (recorded and logged), its blocks pinned.

    The snapshot's blocks are pinned before the table's lock is released, so a
    compaction between the snapshot and the read cannot delete them; the
    blocks the plan prunes are unpinned at once, the survivors when the read ends.
    """
    snap = table._snapshot(pin=True)
    # with a limit, the predicate applies to the limited rows (see read()): pruning by it would drop rows
    # that count toward the limit
    prune_by = predicate if prune and n_rows is None else None
    try:
        report = _prune.plan(snap, table.schema, prune_by, table=table.name)
    except BaseException:
        table._unpin(snap.blocks)
        raise
    survivors = set(map(id, report.survivors))
    table._unpin([b for b in snap.blocks if id(b) not in survivors])
    stats = ReadStats(columns, n_rows, str(predicate) if predicate is not None else None, len(report.survivors))
    table._record_scan(report, stats)
    log.debug("%s", report.summary())
    if columns is not None and not columns:
        # Polars wants the rows but no column (e.g. with_row_index().select("index")); a zero-width select
        # loses the row count, so read one column and drop it, keeping the height
        one = [table.time_column or table.schema.names()[0]]
        frames = _heights(read(snap, report.survivors, one, predicate, n_rows, batch_size, stats))
    else:
        frames = read(snap, report.survivors, columns, predicate, n_rows, batch_size, stats)
    return _Pinned(table, report.survivors, frames)


def _refreshing(table: Table, open_read: Callable[[], _Pinned]) -> Iterator[pl.DataFrame]:
    """A read-only table's read that survives the writer deleting retired blocks under it.

    The snapshot came from the manifest version this process last loaded; the
    writer may since have compacted its blocks away and, past its
    ``retired_grace``, deleted them. If a block file turns out missing before
    any frame was returned, the table is refreshed and the read starts again
    on the new snapshot (the same rows, and any appended since).

    Each restart is owed to a block the refresh dropped. If the *same* block is
    missing again after the refresh, the refresh did not explain it: that is
    ``CorruptionError``. A *different* block missing means the writer deleted
    the new snapshot's blocks too (possible with ``retired_grace=0``): the read
    restarts again, at most ``MAX_RESTARTS`` times in all. A miss after frames
    were returned raises ``BtError``, since restarting would return rows twice.
    """
    read = open_read()
    gone: list[Path] = []
    yielded = False
    try:
        while True:
            try:
                df = next(read)
            except StopIteration:
                return
            except Exception as e:
                missing = _missing_block(table, e)
                if missing is None:
                    raise
                read.close()
                if yielded:
                    raise BtError(
                        f"table {table.name!r}: block file {missing.name} was deleted while this read-only read "
                        "was running, after it had returned rows (the writer compacted the table and its "
                        "retired_grace passed); the read cannot resume without repeating rows. Retry the read: "
                        "it refreshes to the new blocks. To avoid this, open the writer with a retired_grace "
                        "longer than your longest read."
                    ) from e
                if missing in gone or len(gone) >= MAX_RESTARTS:
                    if missing not in gone:
                        log.warning("table %r: gave up after %d restarts: the writer deleted the blocks of every "
                                    "refreshed snapshot (its retired_grace is too short for this read)",
                                    table.name, len(gone))  # fmt: skip
                    if isinstance(e, CorruptionError):
                        raise
                    raise CorruptionError.at(missing, None, "block file is missing, even after a refresh()") from e
                gone.append(missing)
                log.info("table %r: block %s is gone (compacted away by the writer); refreshing and "
                         "reading again", table.name, missing.name)  # fmt: skip
                table.refresh()
                read = open_read()
                continue
            yielded = True
            yield df
    finally:
        read.close()


def _missing_block(table: Table, e: BaseException) -> Path | None:
    """The block file of ``table`` whose absence ``e`` reports (``None``: ``e`` is about something else).

    ``e`` is ``blk.verify_block``'s CorruptionError ("block file is missing"), the FileNotFoundError of
    hashing it, or Polars failing to open it ("No such file or directory (os error 2): PATH").
    """
    if isinstance(e, CorruptionError):
        text = e.path.name
    elif isinstance(e, FileNotFoundError):
        text = e.filename if isinstance(e.filename, str) else str(e)
    elif isinstance(e, pl.exceptions.PolarsError) and "(os error 2)" in str(e):
        text = str(e)
    else:
        return None
    found = layout._BLOCK_NAME.search(text)
    if found is None:
        return None
    path = table.path / layout.BLOCKS_DIR / found.group(0)
    return None if path.exists() else path


def _heights(frames: Iterator[pl.DataFrame]) -> Iterator[pl.DataFrame]:
    """Zero-width frames as tall as ``frames``' (closing ``frames`` when closed)."""
    try:
        for df in frames:
            yield pl.DataFrame(height=df.height)
    finally:
        close = getattr(frames, "close", None)
        if close is not None:
            close()


class _Pinned(Iterator[pl.DataFrame]):
    """Iterates a read while its blocks are pinned: a compaction running meanwhile
    retires them but deletes the files only when the last reader lets go."""

    def __init__(self, table: Table, blocks: Sequence[blk.BlockInfo], it: Iterator[pl.DataFrame]) -> None:
        self._table = table
        self._blocks = list(blocks)  # pinned by _start
        self._it: Iterator[pl.DataFrame] | None = it

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
                self._table._unpin(self._blocks)

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
    """Blocks in LSN order (read by Polars), then the hot rows: the first ``n_rows`` rows, then the predicate.

    Polars pushes a limit into the source only from below every filter: ``head(n).filter(p)`` arrives as
    ``n_rows=n, predicate=p`` (n source rows, then filtered), while ``filter(p).head(n)`` arrives as
    ``predicate=p`` alone with Polars applying the head itself. So when both arrive the limit counts the
    rows *before* the predicate, and ``survivors`` must not have been pruned by it.
    """
    stats = stats if stats is not None else ReadStats(with_columns, n_rows, None, len(survivors))
    if n_rows is not None and n_rows <= 0:
        return
    if predicate is None or n_rows is None:
        yield from _read(snap, survivors, with_columns, predicate, n_rows, batch_size, stats)
        return
    columns = None
    if with_columns is not None:  # the predicate may need columns the projection drops
        columns = list(dict.fromkeys([*with_columns, *predicate.meta.root_names()]))
    for df in _read(snap, survivors, columns, None, n_rows, batch_size, stats):
        df = df.filter(predicate)
        if with_columns is not None:
            df = df.select(with_columns)
        if df.height:
            yield df


def _read(
    snap: Snapshot,
    survivors: Sequence[blk.BlockInfo],
    with_columns: list[str] | None,
    predicate: pl.Expr | None,
    n_rows: int | None,
    batch_size: int | None,
    stats: ReadStats,
) -> Iterator[pl.DataFrame]:
    """The first ``n_rows`` rows matching ``predicate`` (filter, then limit), counted into ``stats``."""
    remaining = n_rows
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
    frames = _start(table, predicate, cols, None, batch_size)
    try:
        for df in frames:
            for offset in range(0, df.height, batch_size):
                yield df.slice(offset, batch_size)
    finally:
        close = getattr(frames, "close", None)
        if close is not None:
            close()
