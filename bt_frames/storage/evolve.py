"""Schema evolution: which type changes are lossless widenings, and reading data written before a change.

A table's schema only ever grows: columns are added at the end
(``table.add_columns``, or an append with ``schema_mode="merge"``) and a
column's type may be widened, never narrowed. The lossless widenings:

- ``Int8/16/32`` -> a wider ``Int``; ``UInt`` -> a wider ``UInt`` or a wider
  signed ``Int`` (``UInt32`` -> ``Int64``, not ``Int32``);
- ``Float32`` -> ``Float64``;
- ``Decimal(p, s)`` -> ``Decimal(p2, s2)`` with ``s2 >= s`` and
  ``p2 - s2 >= p - s`` (no digit lost on either side of the point);
- ``Enum(cats)`` -> ``Enum(cats + more)`` (the old categories first, in order,
  so every old value keeps its code).

Nothing else (int -> float, string -> anything, datetime units...) is an
evolution; such a frame is refused. Data written under an older schema --
blocks, WAL records, statistics -- is read as the current schema: columns it
lacks are null, narrower types are cast (``conform``, ``widen_lazy``,
``widen_stats``). Every schema a table ever had is therefore a prefix of the
current one, column for column, with each type equal or narrower.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

_INT_BITS = {pl.Int8: 8, pl.Int16: 16, pl.Int32: 32, pl.Int64: 64, pl.Int128: 128}
_UINT_BITS = {pl.UInt8: 8, pl.UInt16: 16, pl.UInt32: 32, pl.UInt64: 64}


def _bits(dtype: pl.DataType, table: Mapping[Any, int]) -> int | None:
    for cls, bits in table.items():
        if dtype == cls:
            return bits
    return None


def is_widening(old: pl.DataType, new: pl.DataType) -> bool:
    """True when every value of ``old`` is exactly a value of ``new`` and ``new != old`` (see the module doc)."""
    if old == new:
        return False
    si, ti = _bits(old, _INT_BITS), _bits(new, _INT_BITS)
    su, tu = _bits(old, _UINT_BITS), _bits(new, _UINT_BITS)
    if si is not None and ti is not None:
        return ti > si
    if su is not None and tu is not None:
        return tu > su
    if su is not None and ti is not None:
        return ti > su
    if old == pl.Float32 and new == pl.Float64:
        return True
    if isinstance(old, pl.Decimal) and isinstance(new, pl.Decimal):
        op, os_ = old.precision or 38, old.scale or 0
        np_, ns = new.precision or 38, new.scale or 0
        return ns >= os_ and np_ - ns >= op - os_
    if isinstance(old, pl.Enum) and isinstance(new, pl.Enum):
        a, b = old.categories.to_list(), new.categories.to_list()
        return len(b) > len(a) and b[: len(a)] == a
    return False


def conforms(have: pl.Schema, schema: pl.Schema) -> bool:
    """True when data of schema ``have`` is data of an older schema of a table whose schema is now ``schema``:
    its columns are the first ones of ``schema``, in order, each of the same or a narrower type."""
    names = list(have.names())
    if names != list(schema.names())[: len(names)]:
        return False
    return all(d == schema[n] or is_widening(d, schema[n]) for n, d in have.items())


def _exprs(have: pl.Schema, schema: pl.Schema) -> list[pl.Expr]:
    out = []
    for name, dtype in schema.items():
        got = have.get(name)
        if got is None:
            out.append(pl.lit(None, dtype=dtype).alias(name))
        elif got == dtype:
            out.append(pl.col(name))
        else:
            out.append(pl.col(name).cast(dtype))
    return out


def conform(df: pl.DataFrame, schema: pl.Schema) -> pl.DataFrame:
    """``df`` (of an older schema, see ``conforms``) as ``schema``: missing columns null, narrower types cast.

    ``ValueError`` if ``df`` is not data of an older schema of the table.
    """
    if df.schema == schema:
        return df
    if not conforms(df.schema, schema):
        raise ValueError(f"schema {df.schema} is not the table's ({schema}) nor an older one of it")
    return df.select(_exprs(df.schema, schema))


def widen_lazy(lf: pl.LazyFrame, have: pl.Schema, schema: pl.Schema) -> pl.LazyFrame:
    """``conform`` for a LazyFrame whose schema (``have``) is known."""
    return lf if have == schema else lf.select(_exprs(have, schema))


_block_schemas: dict[str, pl.Schema] = {}  # block files are immutable (their digest is in their name)
_block_lock = threading.Lock()


def block_schema(path: str) -> pl.Schema:
    """The schema a block file was written with (its footer, read once per process)."""
    with _block_lock:
        got = _block_schemas.get(path)
    if got is None:
        got = pl.Schema(pl.read_parquet_schema(path))
        with _block_lock:
            _block_schemas[path] = got
    return got


def scan_blocks(files: Sequence[str], schema: pl.Schema, *, evolved: bool) -> pl.LazyFrame:
    """Polars' scan of block ``files`` (in order) as ``schema``.

    A table whose schema never changed (``evolved`` False) gives the schema to
    the scan, so that Polars reads no footer to plan. Otherwise each block is
    read with the schema it was written with (one footer read per block and
    process) and conformed: runs of blocks of one schema make one scan.
    """
    if not evolved:
        return pl.scan_parquet(list(files), glob=False, schema=schema)
    parts: list[pl.LazyFrame] = []
    run: list[str] = []
    run_schema: pl.Schema | None = None
    for f in files:
        s = block_schema(f)
        if run and s != run_schema:
            assert run_schema is not None
            parts.append(widen_lazy(pl.scan_parquet(run, glob=False, schema=run_schema), run_schema, schema))
            run = []
        run.append(f)
        run_schema = s
    if run:
        assert run_schema is not None
        parts.append(widen_lazy(pl.scan_parquet(run, glob=False, schema=run_schema), run_schema, schema))
    if not parts:
        return pl.LazyFrame(schema=schema)
    return parts[0] if len(parts) == 1 else pl.concat(parts, how="vertical")


def widen_stats(frame: pl.DataFrame, want: pl.Schema) -> pl.DataFrame | None:
    """A statistics frame written for an older schema as the frame of schema ``want`` (``stats_schema``):
    the statistics of a column it lacks are those of an all-null column (``null_count`` = ``rows``);
    a widened column's ``min``/``max``/``distinct`` are cast. None if it is not such a frame."""
    have = frame.schema
    extra = [c for c in have.names() if c not in want]
    if extra:
        return None
    cols: list[pl.Expr] = []
    for name, dtype in want.items():
        got = have.get(name)
        if got is None:
            if name.startswith("null_count."):
                cols.append(pl.col("rows").cast(dtype).alias(name))
            else:
                cols.append(pl.lit(None, dtype=dtype).alias(name))
        elif got == dtype:
            cols.append(pl.col(name))
        else:
            try:
                pl.Series([], dtype=got).cast(dtype)
            except pl.exceptions.PolarsError:
                return None
            inner_old: Any = got.inner if isinstance(got, pl.List) else got
            inner_new: Any = dtype.inner if isinstance(dtype, pl.List) else dtype
            if not is_widening(inner_old, inner_new):
                return None
            cols.append(pl.col(name).cast(dtype))
    try:
        return frame.select(cols)
    except pl.exceptions.PolarsError:
        return None
