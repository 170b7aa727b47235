"""``table.to_dask()`` and ``table.files()``: a table's snapshot for engines that read its block files.

Contract of :func:`to_dask` (``table.to_dask(where=None, columns=None)``):

- **One snapshot.** The blocks and hot rows current when ``to_dask`` is
  called, planned once by the pruner (``table.prune(where)``); later appends,
  compactions or deletes do not change the Dask frame.
- **Partitions.** One per surviving block that holds rows (in LSN order, the
  table's order), then one for the hot rows if the snapshot has any that
  match. A block partition is read on a worker by :class:`_ReadBlock`, a plain
  picklable function of the file path, the schema, the predicate and the
  columns: workers open no store, take no lock and need only ``bt_frames``
  importable and the file readable at the same path (a shared filesystem on
  a real cluster). Before its first read in a worker process a block's bytes
  are checked against the digest in its name, as every bt_frames read does.
  The hot rows are read and converted on the client and travel in the graph.
- **Rows.** Each block partition applies ``where`` to its rows (pruning is
  by whole block, so the predicate is always evaluated, except in blocks
  whose every row the statistics say matches). Blocks written before a
  schema change are read as the current schema (``storage/evolve.py``):
  columns they lack are null, narrower types are widened.
- **pandas.** Each partition is converted by bt_frames' own Polars->pandas
  conversion (``_pandas.to_pandas``: the index and dtypes of the table's
  first pandas append, else Polars' ``to_pandas``). ``meta`` -- and every
  partition, cast to it -- has the dtypes that conversion gives the whole
  table: a column the statistics say may hold nulls gets the dtype the
  conversion gives a column with nulls (``Int64`` for a pandas ``int64``
  column, ``float64`` for a Polars integer column). Categorical columns have
  Dask's *unknown* categories in ``meta`` (``ddf.cat.as_known()`` finds
  them): appends after the first may have brought new ones. So
  ``ddf.compute()`` equals ``table.to_pandas()``; with ``where`` it equals
  ``table.to_pandas(where)`` except that a default (range) index keeps each
  row's position in the whole table (as ``df[mask]`` does in pandas) instead
  of being renumbered, and a column that holds nulls in a surviving block
  keeps its nullable dtype even if the matching rows hold none. (Dask's own
  ``dataframe.convert-string``, on by default, then turns string columns
  into ``string[pyarrow]``; set it to False for ``to_pandas``' dtypes.)
- **Divisions.** Known (``ddf.known_divisions``) in two cases: a default
  (range) index, whose values are row positions, so block ``i`` starts at
  the rows of the blocks before it; and a one-level index on the table's time
  column, when the statistics show each surviving block's time range (no
  nulls) strictly after the previous one's, hot rows included. Such a frame
  supports ``loc`` slicing, time-aligned joins and ``map_overlap`` without a
  shuffle. Statistics do not say whether a block's rows are sorted; a block
  partition whose time index turns out unsorted raises ``BtError`` naming the
  block (``to_dask(..., divisions=False)`` reads such a table). Any other
  index: unknown divisions.
- **Files may go.** The frame names files; it cannot pin them as a scan
  does (it is computed later, elsewhere). A compaction or change retires
  them and keeps the files: until ``vacuum()`` deletes them (never within the
  store's ``retired_grace`` of their retirement), or, with the table's
  ``keep_versions`` set, until that has passed. Computing the frame after a
  file was deleted raises ``BtError`` naming the file (before any row of it
  is returned): call ``to_dask`` again for the current snapshot.
- **Errors.** Bad ``columns`` (``SchemaMismatchError``) and bad ``where``
  are raised by ``to_dask`` itself, before anything is read; without Dask,
  ``MissingOptionalDependencyError`` (``pip install 'bt_frames[dask]'``).

A reader of a store in a bucket fetches the surviving blocks into its
private folder first (one GET each, as a scan does): the partitions and
:func:`files` name those local copies, which last until the store closes.

:func:`files` is the same plan as a list of absolute block paths, for engines
that read Parquet themselves (Spark's ``spark.read.parquet(*files)``, DuckDB's
``read_parquet``). Those engines read a block as it was written: blocks from
before a schema change lack the new columns (use ``union_by_name``/
``mergeSchema``), ``where`` prunes whole blocks only and must be applied
again, and hot rows (not in any file yet) are left out -- call
``table.flush()`` first to include them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from bt_frames import prune as _prune
from bt_frames.errors import BtError, MissingOptionalDependencyError
from bt_frames.storage import blocks as blk
from bt_frames.storage import evolve

if TYPE_CHECKING:
    import dask.dataframe as dd
    import pandas as pd

    from bt_frames._views import ScanSource as Table
    from bt_frames.storage.snapshot import Snapshot

POSITION = "__bt_frames_position__"  # a block partition's row positions (a default index), dropped after use


def files(table: Table, where: _prune.Where | None) -> list[str]:
    """Absolute paths of the blocks that may hold rows matching ``where``, in table order (see the module doc)."""
    snap = table.snapshot()
    report = _plan(table, snap, where)
    if snap.fetch is not None:  # a bucket reader: the files must be on disk before another engine opens them
        snap.fetch(report.survivors)
    return [os.path.abspath(b.file) for b in report.survivors]


def _plan(table: Table, snap: Snapshot, where: _prune.Where | None) -> _prune.PruneReport:
    predicate = _prune.to_expr(where, table.schema, table=table.name)
    return _prune.plan(snap, table.schema, predicate, table=table.name)


@dataclass(frozen=True)
class _ReadBlock:
    """Reads one block as one pandas partition (runs on a Dask worker: plain data, no store).

    Called with ``(path, offset, verdict, rows)``: the block file, the position
    of its first row in the table (used for a default index), the pruner's
    verdict ("all": every row matches, no predicate to evaluate) and, for a
    predicate the pruner does not understand, the numbers of the block's
    matching rows, found on the client over the whole table (None otherwise).
    """

    table: str
    schema: pl.Schema
    evolved: bool
    predicate: pl.Expr | None
    read: list[str] | None  # stored columns to read (index columns first); None: all
    order: list[str] | None  # data columns of the result, in order (None: all)
    pandas_meta: dict[str, Any] | None
    positions: bool  # a default index: each row's position in the table
    sorted_index: bool  # divisions are known on the time index: each partition must be sorted
    meta: pd.DataFrame  # the partitions' dtypes

    def __call__(self, part: tuple[str, int, str, np.ndarray | None] | pd.DataFrame) -> pd.DataFrame:
        if not isinstance(part, tuple):  # the hot rows, made on the client
            return part
        path, offset, verdict, rows = part
        if not os.path.exists(path):
            raise self._gone(path)
        blk.verify_block(Path(path))
        lf = evolve.scan_blocks([path], self.schema, evolved=self.evolved)
        predicate = self.predicate if verdict != _prune.ALL and rows is None else None
        try:
            df = _select(lf, predicate, self.read, offset if self.positions else None)
            if rows is not None:
                df = df[rows]
        except (OSError, pl.exceptions.PolarsError) as e:
            if not os.path.exists(path):
                raise self._gone(path) from e
            raise BtError(f"table {self.table!r}: reading block file {path} failed: {e}") from e
        return self.frame(df, name=os.path.basename(path))

    def _gone(self, path: str) -> BtError:
        return BtError(
            f"table {self.table!r}: block file {path} is gone: a compaction or change since to_dask() was "
            "called retired it and it was then deleted (vacuum(), or the table's keep_versions passed), or it "
            "was removed by hand. Call to_dask() again to read the table's current blocks."
        )

    def frame(self, df: pl.DataFrame, *, name: str) -> pd.DataFrame:
        """``df`` (read by :func:`_select`) as a partition: bt_frames' pandas conversion, cast to ``meta``."""
        import pandas as pd

        from bt_frames import _pandas

        positions = df.get_column(POSITION).to_numpy() if self.positions else None
        if self.positions:
            df = df.drop(POSITION)
        out = _pandas.to_pandas(df, self.pandas_meta, columns=self.order)
        if positions is not None:
            out.index = pd.Index(positions, dtype="int64")
        if self.sorted_index and not out.index.is_monotonic_increasing:
            raise BtError(
                f"table {self.table!r}: the time index of {name} is not sorted, so the divisions to_dask() "
                "computed from the blocks' statistics do not hold; read this table with "
                "to_dask(..., divisions=False)"
            )
        return _cast(out, self.meta)


def _select(lf: pl.LazyFrame, predicate: pl.Expr | None, read: list[str] | None, offset: int | None) -> pl.DataFrame:
    if offset is not None:
        lf = lf.with_row_index(POSITION, offset=offset)
    if predicate is not None:
        lf = lf.filter(predicate)
    if read is not None:
        lf = lf.select([*read, POSITION] if offset is not None else read)
    return lf.collect()


def _cast(out: pd.DataFrame, meta: pd.DataFrame) -> pd.DataFrame:
    """``out`` with ``meta``'s dtypes, where they differ (a partition without nulls in a nullable column)."""
    import pandas as pd

    wrong = {
        i: meta.dtypes.iloc[i]
        for i, d in enumerate(out.dtypes)
        if d != meta.dtypes.iloc[i] and not isinstance(d, pd.CategoricalDtype)
    }
    if not wrong:
        return out
    out = out.copy(deep=False)
    for i, dtype in wrong.items():
        out.isetitem(i, out.iloc[:, i].astype(dtype).array)
    return out


def to_dask(
    table: Table,
    where: _prune.Where | None,
    *,
    columns: Sequence[Any] | None,
    pandas_meta: dict[str, Any] | None,
    divisions: bool = True,
) -> dd.DataFrame:
    """See the module docstring."""
    try:
        import dask.dataframe as dd
    except ImportError:
        raise MissingOptionalDependencyError.needs("Table.to_dask", "dask", "dask") from None
    from bt_frames import _pandas

    schema = table.schema
    predicate = _prune.to_expr(where, schema, table=table.name)
    read, order = _pandas.projection(pandas_meta, columns, schema.names(), table=table.name)
    snap = table.snapshot()
    report = _prune.plan(snap, schema, predicate, table=table.name)
    index_doc = (pandas_meta or {}).get("index") or {}
    levels = (index_doc.get("levels") or []) if index_doc.get("kind") == "columns" else []
    positions = not levels  # a default index: row positions in the table
    time_index = divisions and len(levels) == 1 and levels[0]["column"] == table.time_column

    # the position of each block's first row in the whole snapshot; the survivors that hold rows
    offsets: dict[str, int] = {}
    cold_rows = 0
    for b in snap.blocks:
        offsets[b.file] = cold_rows
        cold_rows += b.rows
    stats = None
    if snap.stats is not None:
        stats = snap.stats.filter(report.details.get_column("scanned"))
        stats = stats.filter(pl.col("rows") > 0)
    kept = [(b, v) for b, v in zip(report.survivors, report.verdicts, strict=True) if b.rows]
    if snap.fetch is not None:  # a bucket reader: its blocks are fetched into its folder when first needed
        snap.fetch([b for b, _v in kept])
    hot_lf = pl.concat([c.lazy() for c in snap.hot], how="vertical") if snap.hot else None
    matching: dict[str, np.ndarray] | None = None  # per block, its rows that match (a whole-table predicate)
    hot_rows: np.ndarray | None = None
    if predicate is not None and report.not_understood:
        matching, hot_rows = _whole_table_matches(table, snap, predicate, hot_lf)
        kept = [(b, v) for b, v in kept if len(matching[b.file])]
    parts = [(os.path.abspath(b.file), offsets[b.file], v, matching and matching[b.file]) for b, v in kept]

    hot: pl.DataFrame | None = None  # the hot rows, read here
    if hot_lf is not None:
        offset = cold_rows if positions else None
        if hot_rows is None:
            hot = _select(hot_lf, predicate, read, offset)
        else:
            hot = _select(hot_lf, None, read, offset)[hot_rows]
        if not hot.height:
            hot = None

    meta = _meta(read_schema_of(schema, read), stats, hot, pandas_meta, order, positions=positions)
    if not parts and hot is None:
        return dd.from_pandas(meta, npartitions=1, sort=False)

    known: list[Any] | None = None  # the divisions, when they are known
    if divisions and positions:  # a range index: each partition starts at its first row's position
        known = [*(p[1] for p in parts), *([cold_rows] if hot is not None else [])]
        last_hot = hot.get_column(POSITION)[-1] if hot is not None else None
        known.append(last_hot if last_hot is not None else parts[-1][1] + kept[-1][0].rows - 1)
    elif time_index and stats is not None:
        known = _time_divisions(table.time_column or "", stats, hot, levels[0]["dtype"])

    sorted_index = known is not None and not positions  # partitions must then be sorted by their time index
    reader = _ReadBlock(
        table.name, schema, snap.evolved, predicate, read, order, pandas_meta, positions, sorted_index, meta
    )
    items: list[Any] = list(parts)
    if hot is not None:
        items.append(reader.frame(hot, name="the hot rows"))
    return dd.from_map(reader, items, meta=meta, divisions=known, label=f"bt-frames-{table.name}")


def _whole_table_matches(
    table: Table, snap: Snapshot, predicate: pl.Expr, hot: pl.LazyFrame | None
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The matching rows of each block and of the hot rows, for a predicate the pruner does not understand.

    Such a predicate may not be row by row (``qty == qty.max()``, ``rank() < 3``, ``cum_sum``): its value
    for a row depends on the other rows of the *table*, so evaluated in each partition it would pick other
    rows. It is evaluated once here, on the client, over the whole snapshot in table order, as
    ``scan().filter(where)`` does (reading only the columns it uses); the partitions take the rows it chose.
    """
    from bt_frames import _scan

    parts = [_scan._parquet(snap, snap.blocks)] if snap.blocks else []
    if hot is not None:
        parts.append(hot)
    if not parts:
        return {}, None
    name = "__bt_frames_match__"
    while name in table.schema:
        name += "_"
    try:  # with_columns: a scalar predicate is broadcast to every row; only the columns it uses are read
        rows = pl.concat(parts, how="vertical").with_columns(predicate.fill_null(False).alias(name))
        mask = rows.select(name).collect().to_series()
    except Exception as e:
        raise BtError(
            f"table {table.name!r}: evaluating the filter {predicate} over the table failed "
            f"({type(e).__name__}: {e}); fix the expression and call to_dask() again"
        ) from e
    matching: dict[str, np.ndarray] = {}
    offset = 0
    for b in snap.blocks:
        matching[b.file] = np.flatnonzero(mask.slice(offset, b.rows).to_numpy())
        offset += b.rows
    hot_rows = np.flatnonzero(mask.slice(offset).to_numpy()) if hot is not None else None
    return matching, hot_rows


def read_schema_of(schema: pl.Schema, read: list[str] | None) -> pl.Schema:
    return pl.Schema({c: schema[c] for c in (read or schema.names())})


def _meta(
    schema: pl.Schema,
    stats: pl.DataFrame | None,
    hot: pl.DataFrame | None,
    pandas_meta: dict[str, Any] | None,
    order: list[str] | None,
    *,
    positions: bool,
) -> pd.DataFrame:
    """The partitions' empty frame: what the pandas conversion gives these columns, with nulls where the
    statistics (or the hot rows) say a column may hold some."""
    import pandas as pd

    from bt_frames import _pandas

    empty = _pandas.to_pandas(pl.DataFrame(schema=schema), pandas_meta, columns=order)
    nullable = []
    for c in schema.names():
        key = f"null_count.{c}"
        in_blocks = stats is None or key not in stats.columns or bool(stats.get_column(key).sum())
        if in_blocks or (hot is not None and hot.get_column(c).null_count()):
            nullable.append(c)
    if nullable:
        nulls = pl.DataFrame([pl.Series(c, [None], dtype=d) for c, d in schema.items()])
        with_nulls = _pandas.to_pandas(nulls, pandas_meta, columns=order)
        for i, c in enumerate(_pandas.data_columns(schema.names(), pandas_meta, order)):
            if c in nullable and with_nulls.dtypes.iloc[i] != empty.dtypes.iloc[i]:
                empty.isetitem(i, empty.iloc[:, i].astype(with_nulls.dtypes.iloc[i]).array)
    if positions:
        empty.index = pd.Index([], dtype="int64")
    if any(isinstance(d, pd.CategoricalDtype) for d in empty.dtypes) or isinstance(empty.index, pd.CategoricalIndex):
        from dask.dataframe.utils import clear_known_categories

        # appends after the first may have brought categories the metadata does not list: Dask's "unknown"
        empty = clear_known_categories(empty, index=True)
    return empty


def _time_divisions(
    column: str, stats: pl.DataFrame, hot: pl.DataFrame | None, codec: dict[str, Any]
) -> list[Any] | None:
    """Divisions of a frame indexed by the time column: each partition's smallest possible time, then the
    largest; None unless the partitions' time ranges (no nulls) follow one another strictly."""
    import pandas as pd

    from bt_frames import _pandas

    keys = [f"min.{column}", f"max.{column}", f"null_count.{column}"]
    if any(k not in stats.columns for k in keys) or stats.get_column(keys[2]).sum():
        return None
    lows = stats.get_column(keys[0])
    highs = stats.get_column(keys[1])
    if hot is not None:
        times = hot.get_column(column)
        if times.null_count():
            return None
        ends = times.to_frame().select(pl.col(column).min().alias("lo"), pl.col(column).max().alias("hi"))
        lows = pl.concat([lows, ends.get_column("lo").cast(lows.dtype).alias(lows.name)])
        highs = pl.concat([highs, ends.get_column("hi").cast(highs.dtype).alias(highs.name)])
    if lows.null_count() or highs.null_count() or not lows.len():
        return None
    if lows.len() > 1 and not (highs.head(-1) < lows.tail(-1)).all():  # each range strictly after the last
        return None
    bounds = pl.concat([lows, highs.tail(1)])
    return list(pd.Index(_pandas._decode(bounds, codec)))
