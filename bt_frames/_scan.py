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

Height-only reads. ``select(pl.len())`` needs no column, but Polars asks an
IO source for at least one: the first of its schema. So the source's schema
starts with a hidden, null-typed column (``HEIGHT``), which :func:`scan`
drops at once; Polars asks for it exactly when the query needs the rows'
count and no column of the table (tested in ``tests/test_scan.py``, so a
Polars that stops doing this is noticed; if it does stop, reads stay correct,
only slower). Columns listed next to it are the pushed-down predicate's. For
such a read, a block whose matching rows the plan knows from statistics
(:attr:`~bt_frames.prune.PruneReport.rows_matching`), and whose requested
columns hold one known value over those rows, is never opened: its rows are
built from the statistics. The values are the true ones, never stand-ins,
so the frame is exact whatever Polars does with it.

Blocks where every row matches (verdict "all") are read without evaluating
the predicate.

Blocks written before a schema change (``storage/evolve.py``) are read as
the current schema: columns they lack are null, narrower types are cast.

Eager readers (``table.read()``, ``to_pandas()``, :func:`collect`) skip the
IO plugin: one plan, then one Polars query over the surviving files and the
hot rows.

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

import itertools
import logging
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
from polars.io.plugins import register_io_source

from bt_frames import prune as _prune
from bt_frames.errors import BtError, CorruptionError, SchemaMismatchError
from bt_frames.storage import blocks as blk
from bt_frames.storage import evolve, layout

if TYPE_CHECKING:
    from bt_frames._views import ScanSource as Table
    from bt_frames.storage.snapshot import Snapshot

log = logging.getLogger("bt_frames")

EAGER_ROWS = 1 << 20  # survivors with fewer rows are read in one collect() (less overhead than streaming)
GROUP_ROWS = 4 << 20  # larger reads go a group of blocks at a time, each group verified just before it is read
MAX_RESTARTS = 5  # a read-only read restarts at most this often when the writer deletes its blocks (_refreshing)
HEIGHT = "__bt_frames_height__"  # the hidden first column of the IO source (see the module docstring)


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
    blocks_from_metadata: int = 0  # blocks answered from statistics, never opened
    rows_from_metadata: int = 0
    blocks_unfiltered: int = 0  # blocks read without evaluating the predicate (every row matches)


def scan(table: Table, where: _prune.Where | None, *, prune: bool = True, as_of: int | None = None) -> pl.LazyFrame:
    if as_of is None:
        schema = table.schema
    else:  # the columns the table had then
        from bt_frames import _lifecycle

        schema = _lifecycle.schema_at(table.path, as_of, table.schema)
    where_expr = _prune.to_expr(where, schema, table=table.name)
    hidden = HEIGHT not in schema  # a table with a column of that name just goes without the shortcut
    names = schema.names()

    def source(
        with_columns: list[str] | None, predicate: pl.Expr | None, n_rows: int | None, batch_size: int | None
    ) -> Iterator[pl.DataFrame]:
        if not hidden:
            return _start(table, predicate, with_columns, n_rows, batch_size, prune=prune, as_of=as_of)
        wanted = [HEIGHT, *names] if with_columns is None else with_columns
        if HEIGHT not in wanted:
            return _start(table, predicate, wanted, n_rows, batch_size, prune=prune, as_of=as_of)
        return _start(table, predicate, wanted, n_rows, batch_size, prune=prune, height=True, as_of=as_of)

    source_schema = pl.Schema({HEIGHT: pl.Null(), **schema}) if hidden else schema
    lf = register_io_source(
        source,
        schema=source_schema,
        explain_name="bt_frames",
        explain_detail=f"table {table.name!r} at {table.path}",
    )
    if hidden:
        lf = lf.drop(HEIGHT)
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
    height: bool = False,
    eager: bool = False,
    as_of: int | None = None,
) -> Iterator[pl.DataFrame]:
    """One read (see :func:`_open`); on a read-only table, restarted once if a block file vanished first."""

    def open_read() -> _Pinned:
        return _open(
            table, predicate, columns, n_rows, batch_size, prune=prune, height=height, eager=eager, as_of=as_of
        )

    if not table.read_only or as_of is not None:  # pinned: a compaction here never deletes what the read needs
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
    height: bool = False,
    eager: bool = False,
    as_of: int | None = None,
) -> _Pinned:
    """One read: a snapshot (one consistent state), its plan (recorded and logged), its blocks pinned.

    The snapshot's blocks are pinned before the table's lock is released, so a
    compaction between the snapshot and the read cannot delete them; the
    blocks the plan prunes are unpinned at once, the survivors when the read ends.

    ``height``: ``columns`` holds ``HEIGHT`` (see the module docstring): the
    frames carry it as a null column, and blocks known from statistics are not read.
    ``eager``: one frame, from one Polars query over every survivor and the hot rows.
    """
    snap = table._snapshot(pin=True, as_of=as_of)
    # with a limit, the predicate applies to the limited rows (see read()): pruning by it would drop rows
    # that count toward the limit
    prune_by = predicate if prune and n_rows is None else None
    try:
        report = _prune.plan(snap, table.schema, prune_by, table=table.name)
    except BaseException:
        table._unpin(snap.pin)
        raise
    assert snap.pin is not None
    pin = table._repin(snap.pin, report.survivors) if len(report.survivors) < len(snap.blocks) else snap.pin
    stats = ReadStats(columns, n_rows, str(predicate) if predicate is not None else None, len(report.survivors))
    table._record_scan(report, stats)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("%s", report.summary())
    real = [c for c in columns if c != HEIGHT] if columns is not None else None
    # the verdicts and counts hold for the predicate only if the plan was made with it (not with prune=False)
    planned = prune_by is predicate
    plan: _prune.PruneReport | _Plan = (
        report if planned else _Plan(report.survivors, [_prune.SOME] * len(report.survivors))
    )
    # A predicate the pruner does not understand may not be row by row (k == k.max(), rank(), cum_sum): its
    # value for a row depends on every row, so it is applied once, to all the rows read (see read()).
    whole = predicate is not None and bool(
        report.not_understood
        if planned
        else _prune.plan(snap, table.schema, predicate, table=table.name).not_understood
    )
    frames: Iterator[pl.DataFrame]
    if height and planned and n_rows is None and columns is not None and not whole:
        frames = _with_height(_counted(snap, report, predicate, real or [], batch_size, stats), columns)
    elif real is not None and not real:
        # Polars wants the rows but no column (e.g. with_row_index().select("index")); a zero-width select
        # loses the row count, so read one column and drop it, keeping the height
        one = [table.time_column or table.schema.names()[0]]
        frames = _heights(read(snap, plan, one, predicate, n_rows, batch_size, stats, whole=whole))
        if height:
            frames = _with_height(frames, [HEIGHT])
    else:
        frames = read(snap, plan, real, predicate, n_rows, batch_size, stats, eager=eager, whole=whole)
        if height and columns is not None:
            frames = _with_height(frames, columns)
    return _Pinned(table, pin, frames)


_NULLS = pl.Series(HEIGHT, [None], dtype=pl.Null)


def _with_height(frames: Iterator[pl.DataFrame], columns: list[str]) -> Iterator[pl.DataFrame]:
    """``frames`` with the hidden ``HEIGHT`` column added (all null), in the order of ``columns``."""
    try:
        for df in frames:
            got = {c: df.get_column(c) for c in df.columns}
            got[HEIGHT] = _NULLS.new_from_index(0, df.height) if df.height else _NULLS.clear()
            yield pl.DataFrame([got[c] for c in columns], height=df.height)
    finally:
        close = getattr(frames, "close", None)
        if close is not None:
            close()


def _counted(
    snap: Snapshot,
    report: _prune.PruneReport,
    predicate: pl.Expr | None,
    columns: list[str],
    batch_size: int | None,
    stats: ReadStats,
) -> Iterator[pl.DataFrame]:
    """A height-only read: the rows matching ``predicate`` with ``columns`` (the predicate's own, or
    none), table order. A block whose matching rows and their values of ``columns`` are known from
    statistics is built from them; the others are read (only ``columns``)."""
    survivors = report.survivors
    every = report.matching_list()
    counts = [every[i] for i in report.block_lists().scanned]
    known = [n is not None for n in counts]
    values: dict[str, list[tuple[bool, Any]]] = {}
    for c in columns:
        if not any(known):
            break
        values[c] = report.known_values(c)
        known = [k and v[0] for k, v in zip(known, values[c], strict=True)]
    schema = report._schema
    assert schema is not None
    i = 0
    while i < len(survivors):
        j = i
        while j < len(survivors) and known[j] == known[i]:
            j += 1
        if known[i]:
            # consecutive blocks whose rows hold the same values make one frame (often: all of them)
            ns = [n or 0 for n in counts[i:j]]  # known: never None here
            stats.blocks_from_metadata += j - i
            stats.rows_from_metadata += sum(ns)
            if not columns:
                if sum(ns):
                    yield _repeated(columns, (), sum(ns), schema, stats)
            else:
                rows = ((tuple(values[c][k][1] for c in columns), n) for k, n in enumerate(ns, i) if n)
                for key, run in itertools.groupby(rows, key=operator.itemgetter(0)):
                    yield _repeated(columns, key, sum(n for _k, n in run), schema, stats)
        else:
            sub = _Plan(survivors[i:j], report.verdicts[i:j])
            cols = columns or [schema.names()[0]]
            frames = _read(snap, sub, cols, predicate, None, batch_size, stats, hot=False)
            for df in frames:
                yield df if columns else pl.DataFrame(height=df.height)
        i = j
    if snap.hot:
        hot = pl.concat([c.lazy() for c in snap.hot])
        if predicate is not None:
            hot = hot.filter(predicate)
        df = hot.select(columns).collect() if columns else pl.DataFrame(height=hot.select(pl.len()).collect().item())
        if df.height:
            stats.hot_rows += df.height
            stats.batches += 1
            yield df


def _repeated(columns: list[str], values: tuple[Any, ...], n: int, schema: pl.Schema, stats: ReadStats) -> pl.DataFrame:
    """``n`` rows holding ``values`` in ``columns`` (zero-width if there are none)."""
    stats.batches += 1
    if not columns:
        return pl.DataFrame(height=n)
    return pl.DataFrame([_constant(c, v, schema[c], n) for c, v in zip(columns, values, strict=True)])


REPEAT_CHUNK = 1 << 16


def _constant(name: str, value: Any, dtype: pl.DataType, n: int) -> pl.Series:
    """``n`` copies of ``value``: chunks of ``REPEAT_CHUNK`` rows that share one buffer (Arrow arrays are
    immutable), so five million "ETH" cost a list of chunks, not 80 MB of string views."""
    if n <= REPEAT_CHUNK:
        return pl.Series(name, [value], dtype=dtype).new_from_index(0, n)
    chunk = pl.Series(name, [value], dtype=dtype).new_from_index(0, REPEAT_CHUNK)
    whole, rest = divmod(n, REPEAT_CHUNK)
    return pl.concat([chunk] * whole + ([chunk.slice(0, rest)] if rest else []), rechunk=False)


@dataclass(frozen=True)
class _Plan:
    """What a read reads: the surviving blocks and, per block, its verdict ("all": no predicate needed)."""

    survivors: Sequence[blk.BlockInfo]
    verdicts: Sequence[str]


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

    def __init__(self, table: Table, pin: int, it: Iterator[pl.DataFrame]) -> None:
        self._table = table
        self._pin = pin  # the pin of the blocks read (taken by _open)
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
                self._table._unpin(self._pin)

    def __del__(self) -> None:
        self.close()


def read(
    snap: Snapshot,
    plan: _prune.PruneReport | _Plan,
    with_columns: list[str] | None,
    predicate: pl.Expr | None,
    n_rows: int | None,
    batch_size: int | None,
    stats: ReadStats | None = None,
    *,
    eager: bool = False,
    whole: bool = False,
) -> Iterator[pl.DataFrame]:
    """Blocks in LSN order (read by Polars), then the hot rows: the first ``n_rows`` rows, then the predicate.

    Polars pushes a limit into the source only from below every filter: ``head(n).filter(p)`` arrives as
    ``n_rows=n, predicate=p`` (n source rows, then filtered), while ``filter(p).head(n)`` arrives as
    ``predicate=p`` alone with Polars applying the head itself. So when both arrive the limit counts the
    rows *before* the predicate, and ``plan`` must not have been pruned by it.

    ``whole``: the predicate may not be row by row (the pruner does not understand it), so it is applied
    once to every row read -- the survivors and the hot rows as one frame, as Polars' filter over the
    whole table would -- not to each block or batch (where ``k == k.max()`` would pick each one's maximum).
    """
    survivors = plan.survivors
    stats = stats if stats is not None else ReadStats(with_columns, n_rows, None, len(survivors))
    if n_rows is not None and n_rows <= 0:
        return
    if predicate is not None and whole:
        yield from _read_whole(snap, plan, with_columns, predicate, n_rows, batch_size, stats)
        return
    if predicate is None or n_rows is None:
        yield from _read(snap, plan, with_columns, predicate, n_rows, batch_size, stats, eager=eager)
        return
    columns = None
    if with_columns is not None:  # the predicate may need columns the projection drops
        columns = list(dict.fromkeys([*with_columns, *predicate.meta.root_names()]))
    unpruned = _Plan(survivors, [_prune.SOME] * len(survivors))  # the limit comes first: no verdict applies
    for df in _read(snap, unpruned, columns, None, n_rows, batch_size, stats):
        df = df.filter(predicate)
        if with_columns is not None:
            df = df.select(with_columns)
        if df.height:
            yield df


def _read_whole(
    snap: Snapshot,
    plan: _prune.PruneReport | _Plan,
    with_columns: list[str] | None,
    predicate: pl.Expr,
    n_rows: int | None,
    batch_size: int | None,
    stats: ReadStats,
) -> Iterator[pl.DataFrame]:
    """``read`` of a predicate that may not be row by row: every survivor and the hot rows (the first
    ``n_rows`` of them), read as one frame with the columns the predicate needs, filtered once."""
    columns = None
    if with_columns is not None:
        columns = list(dict.fromkeys([*with_columns, *predicate.meta.root_names()]))
    unpruned = _Plan(plan.survivors, [_prune.SOME] * len(plan.survivors))  # no verdict holds for a part
    frames = list(_read(snap, unpruned, columns, None, n_rows, None, stats, eager=n_rows is None))
    if not frames:
        return
    df = pl.concat(frames, how="vertical") if len(frames) > 1 else frames[0]
    df = df.filter(predicate)
    if with_columns is not None:
        df = df.select(with_columns)
    for offset in range(0, df.height, batch_size or max(df.height, 1)):
        yield df.slice(offset, batch_size or df.height)


def _read(
    snap: Snapshot,
    plan: _prune.PruneReport | _Plan,
    with_columns: list[str] | None,
    predicate: pl.Expr | None,
    n_rows: int | None,
    batch_size: int | None,
    stats: ReadStats,
    *,
    hot: bool = True,
    eager: bool = False,
) -> Iterator[pl.DataFrame]:
    """The first ``n_rows`` rows matching ``predicate`` (filter, then limit), counted into ``stats``.

    Consecutive blocks with the same verdict are read together; "all" blocks without the predicate.
    ``eager``: everything in one Polars query and one frame (no limit then).
    """
    survivors = plan.survivors
    verdicts = plan.verdicts if predicate is not None else [_prune.ALL] * len(survivors)
    if eager and n_rows is None:
        parts: list[pl.LazyFrame] = []
        for group, verdict in _groups(survivors, verdicts, None):
            if snap.fetch is not None:  # a store in a bucket: one GET per surviving block not yet fetched
                snap.fetch(group)
            for b in group:
                blk.verify_block(b.path)
            lf = _parquet(snap, group)
            if predicate is not None and verdict == _prune.ALL:
                stats.blocks_unfiltered += len(group)
            parts.append(_apply(lf, predicate if verdict != _prune.ALL else None, with_columns, None))
        if hot and snap.hot:
            parts.append(_apply(pl.concat([c.lazy() for c in snap.hot]), predicate, with_columns, None))
        if not parts:
            return
        df = pl.concat(parts, how="vertical").collect() if len(parts) > 1 else parts[0].collect()
        stats.block_rows += df.height
        stats.batches += 1
        yield df
        return
    remaining = n_rows
    eager = sum(b.rows for b in survivors) <= EAGER_ROWS
    for group, verdict in _groups(survivors, verdicts, GROUP_ROWS, unverified_only=True):
        if snap.fetch is not None:
            snap.fetch(group)
        for b in group:  # verified just before their first read, not all up front: head() stops early
            blk.verify_block(b.path)
        pred = predicate if verdict != _prune.ALL else None
        if predicate is not None and pred is None:
            stats.blocks_unfiltered += len(group)
        lf = _apply(_parquet(snap, group), pred, with_columns, remaining)
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
    if hot and snap.hot:
        frame = _apply(pl.concat([c.lazy() for c in snap.hot]), predicate, with_columns, remaining).collect()
        if frame.height:
            stats.hot_rows += frame.height
            stats.batches += 1
            yield frame


def _parquet(snap: Snapshot, blocks: Sequence[blk.BlockInfo]) -> pl.LazyFrame:
    """Polars' scan of ``blocks`` as the table's schema (``evolve.scan_blocks``). Until the schema first
    changes every block holds the table's columns, so the schema is given and Polars reads no footer to
    plan (a block that did not would fail the read, not change it); after a change, blocks written
    before it are read with missing columns null and narrower types widened."""
    assert snap.schema is not None
    if snap.fetch is not None:
        snap.fetch(blocks)
    return evolve.scan_blocks([b.file for b in blocks], snap.schema, evolved=snap.evolved)


def _groups(
    blocks: Sequence[blk.BlockInfo], verdicts: Sequence[str], rows: int | None, *, unverified_only: bool = False
) -> Iterator[tuple[list[blk.BlockInfo], str]]:
    """Consecutive runs of blocks with one verdict, of about ``rows`` rows (at least one block each).

    ``unverified_only``: count only the rows of blocks not yet verified in this process. Groups
    exist so that hashing a cold block is done just before it is read; blocks already verified
    cost nothing to start, and one Polars query over all of them reads fastest.
    """
    group: list[blk.BlockInfo] = []
    verdict = ""
    n = 0
    for b, v in zip(blocks, verdicts, strict=True):
        size = b.rows if not unverified_only or not blk.is_verified(b.file) else 0
        if group and (v != verdict or (rows is not None and n + size > rows)):
            yield group, verdict
            group, n = [], 0
        group.append(b)
        verdict = v
        n += size
    if group:
        yield group, verdict


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


def _columns(table: Table, columns: Sequence[str] | None) -> list[str] | None:
    """``columns`` checked against the table: a list, or None for all."""
    if columns is None:
        return None
    if isinstance(columns, str):
        columns = [columns]
    cols = list(columns)
    schema = table.schema
    missing = [c for c in cols if c not in schema]
    if missing:
        raise SchemaMismatchError(
            f"table {table.name!r} has no column(s) {missing}; columns: {', '.join(schema.names())}",
            table=table.name,
            columns=missing,
        )
    twice = sorted({c for c in cols if cols.count(c) > 1})
    if twice:
        raise BtError(f"table {table.name!r}: column(s) {twice} asked for more than once in columns={cols!r}")
    return cols


def collect(table: Table, where: _prune.Where | None, *, columns: Sequence[str] | None) -> pl.DataFrame:
    """``scan(where).select(columns).collect()`` without the IO plugin: the whole query is known, so
    it is planned once and read by one Polars query over the surviving files plus the hot rows."""
    predicate = _prune.to_expr(where, table.schema, table=table.name)
    cols = _columns(table, columns)
    if cols is not None and not cols:
        return pl.DataFrame()
    frames = _start(table, predicate, cols, None, None, eager=True)
    try:
        got = list(frames)
    finally:
        close = getattr(frames, "close", None)
        if close is not None:
            close()
    if not got:
        return pl.DataFrame(schema={c: table.schema[c] for c in cols} if cols is not None else table.schema)
    return got[0] if len(got) == 1 else pl.concat(got)


def iter_batches(
    table: Table, where: _prune.Where | None, *, columns: Sequence[str] | None, batch_size: int
) -> Iterator[pl.DataFrame]:
    """Like ``scan(where).select(columns)``, streamed without Polars' engine in between, so
    that a consumer who stops early releases the snapshot's blocks at once."""
    if batch_size < 1:
        raise BtError(f"table {table.name!r}: batch_size must be >= 1, got {batch_size}")
    predicate = _prune.to_expr(where, table.schema, table=table.name)
    cols = _columns(table, columns)
    frames = _start(table, predicate, cols, None, batch_size)
    try:
        for df in frames:
            for offset in range(0, df.height, batch_size):
                yield df.slice(offset, batch_size)
    finally:
        close = getattr(frames, "close", None)
        if close is not None:
            close()
