"""A table's life after its appends: options, delete, update, upsert, retention, versions, time travel, vacuum.

Every change here is one manifest version (``storage/manifest.py``), made
the way a compaction is made, so that it is atomic under a crash and durable
when the call returns:

1. Under the table's lock, the block writer idle, the hot rows are frozen
   into a block first (``Table._freeze``): every acknowledged row is then in
   a block the manifest names, and the WAL holds nothing the change could
   miss. Appends wait for the change; readers do not.
2. The pruner plans which blocks the change touches (``prune.plan``): a
   block where no row can match is untouched and unread; a block where every
   row matches is replaced unread; only the others are read.
3. Replacement blocks are written (tmp file, fsync, rename): a block keeps
   the LSN range and part of the one it replaces, so the chain of LSNs the
   manifest checks stays whole; a block every row of which goes is replaced
   by an empty block (a run of them by one). Rows an operation adds after the
   last row (an upsert's new keys) form a block at the next LSN, as a large
   append's do.
4. One manifest version names the replacements and retires the originals:
   the **commit point**. Before it, the new files are leftovers no version
   names, which the next open removes (their LSNs lie in named blocks, or at
   the next LSN with no writer tag: never adopted); after it, the change
   happened, whatever follows.
5. The table's block list is swapped, the statistics cache rewritten.

A change that matches no row and adds none commits no version
(``Change.version == 0``). One whose rows equal the rows they replace still
commits a version, counting them as a database counts the rows an UPDATE
sets to their own values; its blocks are rewritten to the same content, so
under the same names, and the version changes no block.

Retired blocks are kept for time travel (``scan(as_of=)``) until ``vacuum``
deletes them, or until they are older than the table's ``keep_versions``.

Row order (what ``scan()`` returns after a change, and the rule the model
tests check): rows keep their places; deleted rows leave no gap. ``update``'s
rows take the place of the first row they replace (the first row, in table
order, whose time lies in the frame's time range) -- or, replacing none, of
the first row whose time is after the frame's last, else they go last. An
``upsert`` row whose key matches takes the place of the first row with that
key (later rows with that key go); rows with new keys go last, in the
frame's order.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import numbers
import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from bt_frames import prune
from bt_frames.errors import BtError, SchemaMismatchError, os_errors
from bt_frames.storage import blocks as blk
from bt_frames.storage import fs, layout
from bt_frames.storage import manifest as mf
from bt_frames.storage.snapshot import Snapshot

if TYPE_CHECKING:
    from bt_frames.storage.catalog import TableMeta
    from bt_frames.table import Table


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()  # an option not passed (None means "off" for retention and keep_versions)


def _seconds(value: object, option: str, table: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, dt.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise BtError(
            f"table {table!r}: {option} must be a datetime.timedelta (or seconds), or None to turn it off; "
            f"got {value!r}"
        )
    if not math.isfinite(seconds) or seconds < 0:
        raise BtError(f"table {table!r}: {option} must be >= 0 and finite, got {value!r}")
    try:
        dt.timedelta(seconds=seconds)
    except OverflowError:
        raise BtError(f"table {table!r}: {option}={value!r} is longer than a timedelta can be") from None
    return seconds


def seconds_of(value: object, option: str, table: str) -> float | None:
    """``value`` (a timedelta or seconds) as seconds, checked; a BtError naming ``option`` otherwise."""
    return _seconds(value, option, table)


def with_options(
    meta: TableMeta,
    *,
    table: str,
    max_block_rows: Any = UNSET,
    retention: Any = UNSET,
    keep_versions: Any = UNSET,
    auto_compact: Any = UNSET,
) -> TableMeta:
    """``meta`` with the options given (UNSET: unchanged), each checked; BtError naming the option otherwise."""
    changes: dict[str, Any] = {}
    if max_block_rows is not UNSET:
        if not isinstance(max_block_rows, int) or isinstance(max_block_rows, bool) or max_block_rows < 1:
            raise BtError(f"table {table!r}: max_block_rows must be a positive integer, not {max_block_rows!r}")
        changes["max_block_rows"] = max_block_rows
    if retention is not UNSET:
        if retention is not None and meta.time_column is None:
            raise BtError(
                f"table {table!r} has no time column, so it cannot have a retention (rows are kept while their "
                "time is within the retention of the newest time value). Create the table with time_column=..."
            )
        changes["retention_s"] = _seconds(retention, "retention", table)
    if keep_versions is not UNSET:
        changes["keep_versions_s"] = _seconds(keep_versions, "keep_versions", table)
    if auto_compact is not UNSET:
        if not isinstance(auto_compact, bool):
            raise BtError(f"table {table!r}: auto_compact must be True or False, not {auto_compact!r}")
        changes["auto_compact"] = auto_compact
    return replace(meta, **changes)


def options_of(meta: TableMeta) -> dict[str, Any]:
    """The options as ``set_options`` takes them (timedeltas), for ``info`` and the version history."""
    return {
        "max_block_rows": meta.max_block_rows,
        "retention": None if meta.retention_s is None else dt.timedelta(seconds=meta.retention_s),
        "keep_versions": None if meta.keep_versions_s is None else dt.timedelta(seconds=meta.keep_versions_s),
        "auto_compact": meta.auto_compact,
    }


def options_json(meta: TableMeta) -> dict[str, Any]:
    return {
        "max_block_rows": meta.max_block_rows,
        "retention_s": meta.retention_s,
        "keep_versions_s": meta.keep_versions_s,
        "auto_compact": meta.auto_compact,
    }


def check_options(options: Mapping[str, Any], table: str) -> None:
    known = {"max_block_rows", "retention", "keep_versions", "auto_compact"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise BtError(f"table {table!r}: unknown option(s) {unknown}; set_options takes {sorted(known)}")


@dataclass(frozen=True)
class Change:
    """What a lifecycle operation did (``table.last_change``): for the notebooks and the benchmarks."""

    operation: str
    version: int  # the manifest version it committed (0: it changed nothing and committed none)
    rows_added: int
    rows_removed: int
    blocks_read: int  # blocks opened to find the rows (the others were decided from statistics)
    blocks_replaced: int  # blocks retired (replaced by a rewritten or an empty block)
    bytes_written: int  # bytes of the new block files


# -- the engine: one manifest version replacing some blocks ------------------------------------------------


@dataclass
class Plan:
    """A change, decided: which blocks get which rows (by position in the snapshot), and what it reports."""

    replace: dict[int, pl.DataFrame | None] = field(default_factory=dict)  # None or empty: every row goes
    append: pl.DataFrame | None = None  # rows after the last row: a block at the next LSN
    rows_added: int = 0
    rows_removed: int = 0
    blocks_read: int = 0


def _read_block(snap: Snapshot, b: blk.BlockInfo) -> pl.DataFrame:
    from bt_frames import _scan

    blk.verify_block(b.path)
    return _scan._parquet(snap, [b]).collect()


def change(
    table: Table,
    operation: str,
    decide: Callable[[Snapshot], Plan],
    info: dict[str, Any] | None = None,
    *,
    freeze: bool = True,
) -> Change:
    """Run one change (steps 1-5 of the module docstring); raise with nothing changed if it cannot commit.

    ``freeze=False`` (retention in the background): the hot rows stay hot and only blocks change.
    """
    table._check_writable()
    with table._lock, os_errors(f"table {table.name!r}: {operation}"), table._compactor.hold():
        # hold(): a background merge never commits between our snapshot and our commit
        table._writer.wait_idle()
        table._check_writable()  # waiting released the lock: close() may have run
        if freeze:
            table._freeze()  # every acknowledged row in a named block (raises, nothing changed, if it cannot)
        snap = table._snapshot(pin=False)
        assert not (freeze and snap.hot), "the hot rows were just frozen"
        plan = decide(snap)
        written: list[blk.BlockInfo] = []
        try:
            removed = _write_replacements(table, snap, plan, written)
            appended = _write_appended(table, plan.append, written)
            if not removed and not appended and not (plan.rows_added or plan.rows_removed):
                for b in written:  # identical rewrites (same name): nothing changes, no version
                    if b.filename not in {x.filename for x in snap.blocks}:
                        fs.unlink(b.path, missing_ok=True)
                table.last_change = Change(operation, 0, 0, 0, plan.blocks_read, 0, 0)
                return table.last_change
            # rows replaced by equal rows leave every block as it was (same content, same name): the version
            # still records that the operation matched and replaced them, as a database counts rows an UPDATE
            # set to their own values
            new = [b for b in written if b.filename not in {x.filename for x in snap.blocks}]
            doc = {
                "rows_added": plan.rows_added,
                "rows_removed": plan.rows_removed,
                "lsn": table._next_lsn if appended else max((b.last_lsn for b in snap.blocks), default=0),
                **(info or {}),
            }
            state = table._commit(mf.Edit(operation, add=[mf.entry_of(b) for b in new], remove=removed, info=doc))
        except BaseException:
            live = {b.filename for b in snap.blocks}
            for b in written:  # named by no version: the change did not happen
                if b.filename not in live:
                    fs.unlink(b.path, missing_ok=True)
            raise
        if appended:
            table._next_lsn += 1
        by_name = {b.filename: b for b in (*snap.blocks, *written)}
        table._block_list()[:] = [by_name[e.block] for e in state.blocks]
        table._write_cache()
        table._purge_retired()
        result = Change(
            operation,
            state.version,
            plan.rows_added,
            plan.rows_removed,
            plan.blocks_read,
            len(removed),
            sum(b.bytes for b in new),
        )
        table.last_change = result
        return result


def _write_replacements(table: Table, snap: Snapshot, plan: Plan, written: list[blk.BlockInfo]) -> list[str]:
    """Write the replacement blocks (``written`` collects them as they are made); the names they retire."""
    blocks = snap.blocks
    removed: list[str] = []
    empties: list[int] = []
    for i in sorted(plan.replace):
        rows = plan.replace[i]
        if rows is None or rows.height == 0:
            empties.append(i)
            continue
        b = blocks[i]
        out = _write(table, rows, b.first_lsn, b.last_lsn, b.name.part, b.name.nparts)
        written.append(out)
        if out.filename != b.filename:  # the same rows write the same file: nothing to replace
            removed.append(b.filename)
    for run in _empty_runs(blocks, empties):
        first, last = blocks[run[0]], blocks[run[-1]]
        if len(run) == 1:
            out = _write(table, None, first.first_lsn, first.last_lsn, first.name.part, first.name.nparts)
        else:
            out = _write(table, None, first.first_lsn, last.last_lsn, 1, 1)
        written.append(out)
        removed += [blocks[i].filename for i in run if blocks[i].filename != out.filename]
    return removed


def _empty_runs(blocks: Sequence[blk.BlockInfo], indices: list[int]) -> list[list[int]]:
    """``indices`` (blocks left with no row) in runs that one empty block can replace.

    A run is consecutive blocks from the start of a set of parts to the end of
    a set (so the merged LSN range is whole sets); a part whose set is not
    wholly emptied stays a run of its own, keeping its part number.
    """
    runs: list[list[int]] = []
    consecutive: list[list[int]] = []
    for i in indices:
        if consecutive and consecutive[-1][-1] == i - 1:
            consecutive[-1].append(i)
        else:
            consecutive.append([i])
    for group in consecutive:
        starts = [k for k, i in enumerate(group) if blocks[i].name.part == 1]
        ends = [k for k, i in enumerate(group) if blocks[i].name.part == blocks[i].name.nparts]
        s = starts[0] if starts else None
        e = ends[-1] if ends else None
        if s is None or e is None or e < s:
            runs += [[i] for i in group]
            continue
        runs += [[i] for i in group[:s]]
        runs.append(group[s : e + 1])
        runs += [[i] for i in group[e + 1 :]]
    return runs


def _write(table: Table, rows: pl.DataFrame | None, first: int, last: int, part: int, nparts: int) -> blk.BlockInfo:
    df = rows if rows is not None else pl.DataFrame(schema=table.schema)
    return blk.write_block(
        table.path / layout.BLOCKS_DIR,
        df,
        first_lsn=first,
        last_lsn=last,
        part=part,
        nparts=nparts,
        row_group_rows=table._meta.row_group_rows,
    )


def _write_appended(table: Table, rows: pl.DataFrame | None, written: list[blk.BlockInfo]) -> bool:
    """Rows after the last row: parts at the next LSN (no writer tag: recovery never adopts them alone)."""
    if rows is None or rows.height == 0:
        return False
    size = table._meta.max_block_rows
    nparts = math.ceil(rows.height / size)
    lsn = table._next_lsn
    for i in range(nparts):
        written.append(_write(table, rows.slice(i * size, size), lsn, lsn, i + 1, nparts))
    return True


# -- the operations ----------------------------------------------------------------------------------------


def _verdicts(snap: Snapshot, table: Table, predicate: pl.Expr) -> list[tuple[str, int | None]]:
    """Per block of ``snap``: (verdict, exact matching rows or None), from statistics alone."""
    report = prune.plan(snap, table.schema, predicate, table=table.name)
    return list(zip(report.block_lists().verdicts, report.matching_list(), strict=True))


def _rows_matching(
    snap: Snapshot, table: Table, predicate: pl.Expr, plan: Plan
) -> Iterator[tuple[int, pl.DataFrame | None, pl.Series | None]]:
    """The blocks with rows that make ``predicate`` true, in order: (index, rows or None, mask or None).

    A block every row of which matches comes unread (rows and mask None); the others are read (counted
    in ``plan.blocks_read``) and come with the mask of their matching rows (null counts as false).
    """
    report = prune.plan(snap, table.schema, predicate, table=table.name)
    if report.not_understood:
        # Not understood by the pruner: perhaps not row by row (k == k.max(), is_first_distinct(), cum_sum,
        # int_range(len()) ...), whose value for a row depends on the other rows of the *table*. Evaluated
        # block by block it would pick other rows, so the mask is computed once over every block, in table
        # order, as Polars' filter over the whole table would (only the predicate's columns are read).
        yield from _rows_matching_whole(snap, table, predicate, plan)
        return
    verdicts = zip(report.block_lists().verdicts, report.matching_list(), strict=True)
    for i, (b, (verdict, exact)) in enumerate(zip(snap.blocks, verdicts, strict=True)):
        if b.rows == 0 or verdict == prune.NONE or exact == 0:
            continue
        if verdict == prune.ALL or exact == b.rows:
            yield i, None, None
            continue
        rows = _read_block(snap, b)
        plan.blocks_read += 1
        # with_columns, not select: a scalar predicate (pl.lit(True), which delete's error message suggests)
        # is broadcast to the block's rows instead of giving a mask of one value
        mask = _evaluate(table, rows.lazy(), predicate)
        if mask.any():
            yield i, rows, mask


def _evaluate(table: Table, rows: pl.LazyFrame, predicate: pl.Expr) -> pl.Series:
    """``predicate`` over ``rows`` as a mask (null: false); a failure (an overflowing cast, a raising
    function) is a BtError naming the table, raised before anything is written."""
    try:
        mask = _unused(_MASK, table.schema)
        return rows.with_columns(predicate.fill_null(False).alias(mask)).select(mask).collect().to_series()
    except Exception as e:
        raise BtError(
            f"table {table.name!r}: evaluating the filter {predicate} failed ({type(e).__name__}: {e}); "
            "nothing was changed. Fix the expression (or the values it meets) and retry."
        ) from e


def _rows_matching_whole(
    snap: Snapshot, table: Table, predicate: pl.Expr, plan: Plan
) -> Iterator[tuple[int, pl.DataFrame | None, pl.Series | None]]:
    """``_rows_matching`` for a predicate the pruner does not understand: one mask over the whole table."""
    if not snap.blocks:
        return
    from bt_frames import _scan

    for b in snap.blocks:
        blk.verify_block(b.path)
    mask = _evaluate(table, _scan._parquet(snap, snap.blocks), predicate)
    plan.blocks_read += len(snap.blocks)
    offset = 0
    for i, b in enumerate(snap.blocks):
        part = mask.slice(offset, b.rows)
        offset += b.rows
        if not part.any():
            continue
        if part.all():
            yield i, None, None
        else:
            yield i, _read_block(snap, b), part


def delete(table: Table, where: prune.Where) -> int:
    predicate = prune.to_expr(where, table.schema, table=table.name)
    if predicate is None:
        raise BtError(
            f"table {table.name!r}: delete needs a filter (a Polars expression or DNF tuples), got {where!r}; "
            "to delete every row, pass pl.lit(True)"
        )
    _evaluate(table, pl.LazyFrame(schema=table.schema), predicate)  # types checked before anything is frozen

    def decide(snap: Snapshot) -> Plan:
        plan = Plan()
        for i, rows, mask in _rows_matching(snap, table, predicate, plan):
            if rows is None or mask is None:
                plan.replace[i] = None
                plan.rows_removed += snap.blocks[i].rows
            else:
                plan.replace[i] = rows.filter(~mask)
                plan.rows_removed += int(mask.sum())
        return plan

    return change(table, "delete", decide, {"where": str(predicate)}).rows_removed


def _frame(table: Table, data: object, operation: str) -> pl.DataFrame:
    df = table.validate(data)
    if table._meta.time_column is not None and df.height and df.get_column(table._meta.time_column).has_nulls():
        raise BtError(f"table {table.name!r}: {operation} got nulls in the time column {table.time_column!r}")
    return df


def update(table: Table, data: object) -> Change:
    table._check_writable()  # before anything else: an empty frame on a read-only store is refused too
    tc = table._meta.time_column
    if tc is None:
        raise BtError(
            f"table {table.name!r} has no time column, so update() cannot tell which rows a frame replaces "
            "(the rows in its time range). Use upsert(df, on=[...]) to replace rows by key, or delete() then append()."
        )
    df = _frame(table, data, "update")
    if df.height == 0:
        table.last_change = Change("update", 0, 0, 0, 0, 0, 0)
        return table.last_change
    lo, hi = df.get_column(tc).min(), df.get_column(tc).max()
    col = pl.col(tc)
    in_range = (col >= pl.lit(lo, dtype=table.schema[tc])) & (col <= pl.lit(hi, dtype=table.schema[tc]))
    after = col > pl.lit(hi, dtype=table.schema[tc])

    def decide(snap: Snapshot) -> Plan:
        plan = Plan(rows_added=df.height)
        keep: dict[int, pl.DataFrame | None] = {}  # block -> rows left (None: none)
        where: tuple[int, int] | None = None  # (block, row) where the frame goes
        for i, rows, mask in _rows_matching(snap, table, in_range, plan):
            n = snap.blocks[i].rows if mask is None else int(mask.sum())
            plan.rows_removed += n
            if where is None:
                where = (i, 0 if mask is None else int(mask.arg_true()[0]))
            keep[i] = None if rows is None or mask is None else rows.filter(~mask)
            if where[0] == i and rows is not None and mask is not None:
                k = where[1]
                keep[i] = pl.concat([rows.slice(0, k), df, rows.slice(k).filter(~mask.slice(k))])
        if where is None:  # nothing replaced: before the first row after the frame's time range
            for i, rows, mask in _rows_matching(snap, table, after, plan):
                if rows is None or mask is None:
                    rows = _read_block(snap, snap.blocks[i])
                    plan.blocks_read += 1
                    k = 0
                else:
                    k = int(mask.arg_true()[0])
                keep[i] = pl.concat([rows.slice(0, k), df, rows.slice(k)])
                where = (i, k)
                break
        elif where is not None and keep.get(where[0]) is None:  # every row of that block was replaced
            keep[where[0]] = df
        if where is None:
            plan.append = df
        plan.replace = keep
        return plan

    return change(table, "update", decide, {"range": [str(lo), str(hi)]})


def upsert(table: Table, data: object, on: Sequence[str]) -> Change:
    table._check_writable()
    if not (isinstance(on, str) or (isinstance(on, Sequence) and all(isinstance(k, str) for k in on))):
        raise BtError(f"table {table.name!r}: upsert(on=...) takes a column name or a list of column names, got {on!r}")
    keys = [on] if isinstance(on, str) else list(on)
    missing = [k for k in keys if k not in table.schema]
    if not keys or missing:
        raise SchemaMismatchError(
            f"table {table.name!r}: upsert keys must be columns of the table; "
            + (f"{missing} are not" if missing else "on=[] names none")
            + f" (columns: {', '.join(table.schema.names())})",
            table=table.name,
            columns=missing,
        )
    if len(set(keys)) != len(keys):
        raise BtError(f"table {table.name!r}: upsert keys {keys} name a column twice")
    df = _frame(table, data, "upsert")
    src_col, pos_col = _unused(_SRC, table.schema), _unused(_POS, table.schema)  # helper columns
    if df.height == 0:
        table.last_change = Change("upsert", 0, 0, 0, 0, 0, 0)
        return table.last_change
    matchable = df.with_row_index(src_col).filter(pl.all_horizontal([pl.col(k).is_not_null() for k in keys]))
    dup = matchable.select(keys).is_duplicated()
    if dup.any():
        first = matchable.select(keys).filter(dup).row(0, named=True)
        raise BtError(
            f"table {table.name!r}: the frame given to upsert has {int(dup.sum())} rows whose key {keys} is "
            f"repeated (e.g. {first}); each key may appear once (which of them should win?). "
            "Deduplicate the frame first, e.g. df.unique(subset=on, keep='last', maintain_order=True)"
        )
    targets = matchable.select(src_col, *keys)
    # a plain conjunction: the pruner sees through `&`, not through pl.all_horizontal (every block was read)
    candidates = (
        functools.reduce(operator.and_, [pl.col(k).is_in(targets.get_column(k).unique().implode()) for k in keys])
        if targets.height
        else pl.lit(False)
    )

    def decide(snap: Snapshot) -> Plan:
        plan = Plan(rows_added=df.height)
        placed: set[int] = set()
        for i, rows, _mask in _rows_matching(snap, table, candidates, plan):
            if rows is None:
                rows = _read_block(snap, snap.blocks[i])
                plan.blocks_read += 1
            src = (
                rows.select(keys)
                .join(targets, on=keys, how="left", maintain_order="left", nulls_equal=False)
                .get_column(src_col)
            )
            matched = src.is_not_null()
            if not matched.any():
                continue
            first = matched & src.is_first_distinct() & ~src.is_in(pl.Series(list(placed), dtype=src.dtype).implode())
            plan.rows_removed += int(matched.sum())
            placed.update(src.filter(first).to_list())
            pos = pl.int_range(rows.height, eager=True).alias(pos_col)
            kept = rows.with_columns(pos).filter(~matched)
            new = (
                pl.DataFrame({pos_col: pos.filter(first), src_col: src.filter(first)})
                .join(df.with_row_index(src_col), on=src_col, how="left", maintain_order="left")
                .drop(src_col)
            )
            plan.replace[i] = pl.concat([kept, new.select(kept.columns)]).sort(pos_col).drop(pos_col)
        rest = df.filter(
            ~pl.int_range(df.height, dtype=pl.Int64).is_in(pl.Series(list(placed), dtype=pl.Int64).implode())
        )
        plan.append = rest if rest.height else None
        return plan

    return change(table, "upsert", decide, {"on": keys})


def _unused(name: str, schema: pl.Schema) -> str:
    """``name``, or ``name`` with underscores added until no column of ``schema`` has it."""
    while name in schema:
        name += "_"
    return name


_SRC = "__bt_frames_source_row"
_MASK = "__bt_frames_mask"
_POS = "__bt_frames_position"


# -- retention -------------------------------------------------------------------------------------------


def retention_cutoff(table: Table, seconds: float | None = None) -> Any:
    """The oldest time value retention keeps (rows before it go), or None (no retention, or no rows).
    ``seconds``: this retention instead of the table's."""
    tc = table._meta.time_column
    seconds = table._meta.retention_s if seconds is None else seconds
    if tc is None or seconds is None:
        return None
    span = table.time_range()
    if span is None:
        return None
    newest = span[1]
    dtype = table.schema[tc]
    if dtype.is_integer():  # an integer time column has no unit: the retention counts its own units
        return newest - int(seconds)
    if isinstance(newest, dt.date):  # a datetime too
        try:
            return newest - dt.timedelta(seconds=seconds)
        except OverflowError:  # a cutoff before year 1: no row is older
            return None
    return None


def retain(table: Table, *, whole_blocks: bool, freeze: bool = True, seconds: float | None = None) -> Change | None:
    """Drop the rows older than the retention (``whole_blocks``: only blocks every row of which is older,
    unread); None when the table has no retention or nothing to drop. ``seconds``: this retention
    instead of the table's (``enforce_retention(retention=...)``)."""
    table._check_writable()  # a read-only store refuses it even when there is nothing to drop
    cutoff = retention_cutoff(table, seconds)
    if cutoff is None:
        return None
    tc = table._meta.time_column
    assert tc is not None
    old = pl.col(tc) < pl.lit(cutoff, dtype=table.schema[tc])

    def decide(snap: Snapshot) -> Plan:
        plan = Plan()
        for i, (b, (verdict, exact)) in enumerate(zip(snap.blocks, _verdicts(snap, table, old), strict=True)):
            if b.rows and (verdict == prune.ALL or exact == b.rows):
                plan.replace[i] = None
                plan.rows_removed += b.rows
        if not whole_blocks:
            for i, rows, mask in _rows_matching(snap, table, old, plan):
                if rows is not None and mask is not None:
                    plan.replace[i] = rows.filter(~mask)
                    plan.rows_removed += int(mask.sum())
        return plan

    got = change(table, "retention", decide, {"cutoff": str(cutoff)}, freeze=freeze)
    return got if got.version else None


# -- versions, time travel, vacuum -----------------------------------------------------------------------

_ADDS_ROWS = {"create", "upgrade", "publish", "append", "adopt"}  # versions whose new blocks hold new rows

VERSIONS_SCHEMA = pl.Schema(
    {  # type: ignore[arg-type]
        "version": pl.Int64,
        "lsn": pl.Int64,
        "time": pl.Datetime("us", "UTC"),
        "operation": pl.String,
        "rows_added": pl.Int64,
        "rows_removed": pl.Int64,
        "rows": pl.Int64,
        "blocks": pl.Int64,
        "bytes": pl.Int64,
        "detail": pl.String,
    }
)


def versions(table: Table) -> pl.DataFrame:
    """One row per manifest version (see ``Table.versions``)."""
    rows = []
    for edit, state in mf.history(table.path):
        info = edit.info
        added = sum(b.rows for b in edit.add) if edit.operation in _ADDS_ROWS else 0
        detail = {k: v for k, v in info.items() if k not in ("rows_added", "rows_removed", "lsn", "previous_schema")}
        rows.append(
            (
                state.version,
                int(info.get("lsn", state.block_lsn)),
                dt.datetime.fromisoformat(state.time),
                edit.operation,
                int(info.get("rows_added", added)),
                int(info.get("rows_removed", 0)),
                sum(b.rows for b in state.blocks),
                len(state.blocks),
                sum(b.bytes for b in state.blocks),
                ", ".join(f"{k}={v}" for k, v in detail.items()) or None,
            )
        )
    return pl.DataFrame(rows, schema=VERSIONS_SCHEMA, orient="row")


def resolve_version(table: Table, as_of: int | dt.datetime | dt.date | str) -> int:
    """The manifest version ``as_of`` names: a version number, or the newest version made at or before a
    time (a naive datetime is UTC; a string is ISO 8601)."""
    newest = (mf.list_versions(table.path) or [0])[-1]
    if isinstance(as_of, numbers.Integral) and not isinstance(as_of, bool):
        as_of = int(as_of)  # numpy integers too
    if isinstance(as_of, bool) or not isinstance(as_of, (int, dt.datetime, dt.date, str)):
        raise BtError(
            f"table {table.name!r}: as_of must be a version number (see table.versions) or a datetime, got {as_of!r}"
        )
    if isinstance(as_of, int):
        if not 1 <= as_of <= newest:
            raise BtError(f"table {table.name!r} has versions 1 to {newest} (see table.versions), not {as_of}")
        return as_of
    when = _as_datetime(as_of, table.name)
    best = 0
    for edit, state in mf.history(table.path):
        del edit
        if dt.datetime.fromisoformat(state.time) <= when:
            best = state.version
        else:
            break
    if best == 0:
        raise BtError(
            f"table {table.name!r} did not exist yet at {when.isoformat()} (its first version is later; "
            "see table.versions)"
        )
    return best


def _as_datetime(value: dt.datetime | dt.date | str, table: str) -> dt.datetime:
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            raise BtError(f"table {table!r}: as_of={value!r} is not an ISO 8601 time") from None
    if not isinstance(value, dt.datetime):
        value = dt.datetime.combine(value, dt.time())
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def schema_at(table_dir: Path, version: int, current: pl.Schema) -> pl.Schema:
    """The table's schema as of ``version``: set by the newest schema change at or before it, else the one
    the first later change replaced (its ``previous_schema``), else today's."""
    from bt_frames.storage import catalog

    state = mf.load(table_dir, version)
    if state.schema is not None:
        return catalog.schema_from_b64(state.schema)
    mdir = mf.manifest_dir(table_dir)
    for v in range(version + 1, (mf.list_versions(table_dir) or [0])[-1] + 1):
        path = mdir / mf.version_name(v)
        edit, _time, _state = mf.decode(path, path.read_bytes(), v)
        if edit.schema is not None:
            previous = edit.info.get("previous_schema")
            return catalog.schema_from_b64(previous) if isinstance(previous, str) else current
    return current


def blocks_at(table: Table, version: int) -> tuple[blk.BlockInfo, ...]:
    """The blocks of ``version``, each checked to still exist (BtError naming the file if vacuumed)."""
    state = mf.load(table.path, version)
    live = {b.filename: b for b in table.snapshot().blocks}
    out = []
    for e in state.blocks:
        b = live.get(e.block)
        if b is None:
            path = table.path / layout.BLOCKS_DIR / e.block
            if not path.is_file():
                raise BtError(
                    f"table {table.name!r}: version {version} needs block {e.block}, which was deleted by vacuum "
                    "(or keep_versions); time travel reaches only versions whose retired blocks are kept. "
                    "See table.versions, and set_options(keep_versions=...) to keep them longer."
                )
            b = blk.read_block_info(path)  # its digest checked (a damaged file: CorruptionError naming it)
        out.append(b)
    return tuple(out)


def vacuum(table: Table, older_than: dt.timedelta | float) -> int:
    """Delete retired blocks retired at least ``older_than`` ago (and past the store's ``retired_grace``)
    that no running read pins; the bytes freed. One manifest version forgets them."""
    seconds = _seconds(older_than, "older_than", table.name)
    if seconds is None:
        raise BtError(f"table {table.name!r}: vacuum(older_than=...) takes a timedelta (or seconds), not None")
    cutoff = max(seconds, table.store.retired_grace)
    table._check_writable()
    with table._lock, os_errors(f"table {table.name!r}: vacuum"):
        table._writer.wait_idle()
        table._check_writable()
        m = table._manifest
        assert m is not None
        if not m.sync():
            raise BtError(f"table {table.name!r}: the manifest's folder cannot be synced; vacuum deletes nothing")
        live = {b.filename for b in table._blocks}
        now = dt.datetime.now(dt.UTC)
        freed = 0
        gone: list[str] = []
        for r in m.state.retired:
            if r.block in live or r.block in table._pending_forget or table._pins.holds(r.block):
                continue
            if r.age_s(now) < cutoff:
                continue
            path = table.path / layout.BLOCKS_DIR / r.block
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                size = 0
            fs.unlink(path, missing_ok=True)
            freed += size
            gone.append(r.block)
        if gone:
            table._pending_forget += gone
            table._commit(mf.Edit("vacuum", info={"files": len(gone), "bytes": freed}))
            table._link_cache()
        return freed
