"""The one place that knows about input libraries, and the coercion rules.

``to_polars`` turns any supported input (Polars, pandas, pyarrow, anything
with ``__arrow_c_stream__``) into a ``pl.DataFrame``; ``coerce`` fits it to a
table's schema or explains, per column, why it cannot. ``pandas_arrow`` is the
short cut for a pandas frame whose structure was seen before: its stored
columns as one Arrow table (what ``to_polars`` would give, not yet in Polars),
so that an append can encode its WAL record from Arrow directly.

Coercion rules (a cast is allowed only when no value changes):

- identical dtype: kept as is; an all-null column (dtype Null) casts to anything;
- integer -> integer, integer -> float, float -> float, decimal -> decimal,
  datetime/duration unit changes: allowed when every value survives the cast
  and the cast back unchanged (int32->int64 always; int64->int32 only if the
  values fit; datetime ns->us only if no sub-microsecond part is set);
- datetime with time zone A -> time zone B: allowed (same instants); naive <->
  tz-aware: rejected (say which zone with ``.dt.replace_time_zone``);
- string/categorical/enum among each other: allowed when every value is a
  category of the target enum;
- anything else (float -> int, string -> number, bool <-> number, ...): rejected.

These rules fit a frame to the table's schema; they never change it. An
append with ``schema_mode="merge"`` (``Table.append``) first extends the
schema by the frame's new columns and lossless widenings
(``storage/evolve.py``), fills the columns the frame lacks with nulls, then
coerces by these rules (``coerce(..., merge=True)``). A strict append that
fails on a new column or a wider type says so in the error.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import polars as pl

from bt_frames.errors import SchemaMismatchError, UnsupportedInputError
from bt_frames.storage.evolve import is_widening

__all__ = ["UnsupportedInputError", "coerce", "normalize_schema", "pandas_arrow", "to_polars"]


def _is_pandas(obj: object) -> bool:
    pd = sys.modules.get("pandas")
    return pd is not None and isinstance(obj, pd.DataFrame)


def to_polars(obj: object, *, table: str) -> tuple[pl.DataFrame, dict[str, Any] | None]:
    """(frame, pandas metadata or None) for any supported input."""
    if isinstance(obj, pl.DataFrame):
        return obj, None
    if isinstance(obj, pl.LazyFrame):
        raise UnsupportedInputError(
            f"table {table!r}: got a polars LazyFrame; call .collect() first (appends are eager and durable)."
        )
    if _is_pandas(obj):
        from bt_frames import _pandas

        return _pandas.from_pandas(obj, table=table)  # type: ignore[arg-type]
    pa = sys.modules.get("pyarrow")
    if pa is not None and isinstance(obj, (pa.Table, pa.RecordBatch)):
        _check_unique(list(obj.schema.names), table=table, what=f"pyarrow {type(obj).__name__}")
        out = pl.from_arrow(obj)
        assert isinstance(out, pl.DataFrame)
        return out, None
    if hasattr(obj, "__arrow_c_stream__") or hasattr(obj, "__arrow_c_array__"):
        try:
            return pl.DataFrame(obj), None  # type: ignore[arg-type]
        except pl.exceptions.DuplicateError as e:
            raise SchemaMismatchError(
                f"table {table!r}: the {type(obj).__qualname__}'s Arrow data has duplicate column names ({e}). "
                "Fix: rename the columns so each name appears once.",
                table=table,
            ) from None
        except (pl.exceptions.PolarsError, TypeError, ValueError) as e:  # e.g. a pandas Series: not a table
            reason = f" (its Arrow data is not a table: {e})"
    else:
        reason = ""
    raise UnsupportedInputError(
        f"table {table!r}: cannot append a {type(obj).__module__}.{type(obj).__qualname__}{reason}; pass a "
        "polars.DataFrame, pandas.DataFrame, pyarrow.Table/RecordBatch or an Arrow C stream."
    )


def pandas_arrow(obj: object) -> Any:
    """A pandas frame of a known structure as ``_pandas.Planned`` (Arrow table, dtypes, metadata), else None.

    ``pl.from_arrow`` of its table equals ``to_polars(obj)[0]``; None means
    "call ``to_polars``" (not pandas, a structure not seen yet, or one whose
    checks depend on the values). See ``_pandas.arrow_of``.
    """
    if not _is_pandas(obj):
        return None
    from bt_frames import _pandas

    return _pandas.arrow_of(obj)  # type: ignore[arg-type]


def _check_unique(names: list[str], *, table: str, what: str) -> None:
    dups = [n for n in dict.fromkeys(names) if names.count(n) > 1]
    if dups:
        shown = ", ".join(f"{n!r} ({names.count(n)} times)" for n in dups)
        raise SchemaMismatchError(
            f"table {table!r}: the {what} has duplicate column names: {shown}. A table's columns must have "
            "unique names. Fix: rename them first, e.g. data.rename_columns([...]) with distinct names.",
            table=table,
            columns=dups,
        )


_UNSUPPORTED = (pl.Object, pl.Null)

# dtype classes that need parameters: what to write instead of the bare class
_NEEDS_ARGS: dict[type[pl.DataType], str] = {
    pl.Categorical: "pl.Categorical()",
    pl.Datetime: 'pl.Datetime("us", "UTC") (or pl.Datetime("us") for naive times)',
    pl.Decimal: "pl.Decimal(precision, scale), e.g. pl.Decimal(18, 4)",
    pl.Duration: 'pl.Duration("us")',
    pl.Enum: 'pl.Enum(["buy", "sell"]) (its categories)',
    pl.List: "pl.List(pl.Int64) (its element type)",
    pl.Array: "pl.Array(pl.Float64, 3) (its element type and width)",
    pl.Struct: 'pl.Struct({"a": pl.Int64}) (its fields)',
}


def _bare_dtype_classes(items: Any, *, table: str) -> None:
    """Refuse ``{"c": pl.Datetime}`` (a class; Polars wants ``pl.Datetime(...)``), saying what to write."""
    for name, dtype in items:
        if isinstance(dtype, type) and issubclass(dtype, pl.DataType):
            try:
                dtype()
            except TypeError:
                needs_args = True
            else:
                needs_args = False
            hint = next((h for cls, h in _NEEDS_ARGS.items() if dtype is cls), None)
            if hint is not None or needs_args:
                instead = hint or f"pl.{dtype.__name__}(...)"
                raise SchemaMismatchError(
                    f"table {table!r}, column {name!r}: pl.{dtype.__name__} is a dtype class, not a dtype; "
                    f"Polars wants it called with its parameters. Write {instead} instead.",
                    table=table,
                    columns=[name],
                )


def normalize_schema(schema: object, *, table: str) -> pl.Schema:
    """A ``pl.Schema`` from a mapping, pl.Schema or pyarrow schema."""
    pa = sys.modules.get("pyarrow")
    if pa is not None and isinstance(schema, pa.Schema):
        out = pl.DataFrame(schema.empty_table()).schema
    elif isinstance(schema, (pl.Schema, Mapping)):
        _bare_dtype_classes(schema.items(), table=table)
        try:
            out = pl.Schema(schema)
        except (TypeError, ValueError) as e:
            raise SchemaMismatchError(f"table {table!r}: invalid schema ({e})", table=table) from e
    else:
        raise UnsupportedInputError(
            f"table {table!r}: schema must be a dict of column -> polars dtype, a pl.Schema or a pyarrow.Schema"
        )
    if not out:
        raise SchemaMismatchError(f"table {table!r}: a table needs at least one column", table=table)
    for name, dtype in out.items():
        if isinstance(dtype, _UNSUPPORTED) or dtype == pl.Object or dtype == pl.Null:
            raise SchemaMismatchError(
                f"table {table!r}, column {name!r}: dtype {dtype} cannot be stored; "
                "use a concrete type (e.g. pl.String, pl.Int64).",
                table=table,
                columns=[name],
            )
        nested = _unstorable_inside(dtype)
        if nested:
            raise SchemaMismatchError(
                f"table {table!r}, column {name!r}: dtype {dtype} cannot be stored: {nested}",
                table=table,
                columns=[name],
            )
    return out


def _unstorable_inside(dtype: Any) -> str:
    """Why a nested type cannot go into a Parquet block ("" if it can): Parquet has no struct without
    fields, and no Python objects; Arrow IPC (the WAL, the schema in table.json) cannot read a fixed-size
    array of width 0."""
    if isinstance(dtype, pl.Struct):
        if not dtype.fields:
            return "Parquet cannot hold a struct with no fields; give it at least one (e.g. pl.Struct({'x': pl.Int64}))"
        for f in dtype.fields:
            if f.dtype == pl.Object:
                return f"field {f.name!r} holds Python objects; use a concrete type (e.g. pl.String, pl.Int64)"
            why = _unstorable_inside(f.dtype)
            if why:
                return why
    elif isinstance(dtype, (pl.List, pl.Array)):
        if isinstance(dtype, pl.Array) and 0 in dtype.shape:
            return "Arrow IPC cannot read a fixed-size array of width 0; give it a width, or use pl.List"
        inner = dtype.inner
        if inner == pl.Object:
            return "its elements are Python objects; use a concrete type (e.g. pl.String, pl.Int64)"
        return _unstorable_inside(inner) if inner is not None else ""
    return ""


def _lossless(s: pl.Series, target: pl.DataType) -> tuple[pl.Series | None, str]:
    """Cast and check nothing changed; (result, "") or (None, reason)."""
    try:
        out = s.cast(target, strict=False)
    except pl.exceptions.PolarsError as e:
        return None, f"cannot cast ({e.__class__.__name__})"
    lost = out.is_null() & s.is_not_null()
    try:
        back = out.cast(s.dtype, strict=False)
        changed = lost | ~back.eq_missing(s).fill_null(False)
    except pl.exceptions.PolarsError:
        changed = lost
    if changed.any():
        i = int(changed.arg_max() or 0)
        return None, f"would change values, e.g. {s[i]!r} at row {i}"
    return out, ""


def _cast(s: pl.Series, target: pl.DataType) -> tuple[pl.Series | None, str]:
    src = s.dtype
    if src == target:
        return s, "ok"
    if src == pl.Null:
        return s.cast(target), "ok (all null)"
    if isinstance(target, pl.Datetime) and isinstance(src, pl.Datetime):
        if (src.time_zone is None) != (target.time_zone is None):
            if src.time_zone is None:
                return None, f"naive timestamps; say which zone, e.g. .dt.replace_time_zone({target.time_zone!r})"
            return None, "tz-aware timestamps into a naive column; use .dt.replace_time_zone(None) if intended"
        if src.time_zone != target.time_zone:
            s = s.dt.convert_time_zone(target.time_zone)  # type: ignore[arg-type]
            if s.dtype == target:
                return s, "ok (time zone converted)"
        out, why = _lossless(s, target)
        return (out, "ok (unit changed, no precision lost)") if out is not None else (None, why)
    stringy = (pl.String, pl.Categorical, pl.Enum)
    same_kind = (
        (src.is_integer() and (target.is_integer() or target.is_float()))
        or (src.is_float() and target.is_float())
        or (isinstance(src, pl.Decimal) and isinstance(target, pl.Decimal))
        or (isinstance(src, pl.Duration) and isinstance(target, pl.Duration))
        or (isinstance(src, stringy) and isinstance(target, stringy))
    )
    if not same_kind:
        return None, "incompatible types; convert the column first"
    if isinstance(target, pl.Enum):
        out = s.cast(pl.String).cast(target, strict=False)
        bad = out.is_null() & s.is_not_null()
        if bad.any():
            i = int(bad.arg_max() or 0)
            return None, f"value {s[i]!r} (row {i}) is not a category of the enum"
        return out, "ok"
    if isinstance(src, stringy) and isinstance(target, stringy):
        return s.cast(target), "ok"
    out, why = _lossless(s, target)
    return (out, "ok (widened)") if out is not None else (None, why)


def coerce(
    df: pl.DataFrame, schema: pl.Schema, *, table: str, time_column: str | None, merge: bool = False
) -> pl.DataFrame:
    """Fit ``df`` to ``schema`` (column order, dtypes) or raise SchemaMismatchError.

    ``merge``: the schema is already the merge of the table's and the frame's
    (``schema_mode="merge"``); the error's fix says what merging cannot do.
    """
    if df.columns == list(schema.names()) and df.dtypes == list(schema.dtypes()):
        out = df
    else:
        rows: list[tuple[str, str, str, str]] = []
        cols: list[pl.Series] = []
        have = df.schema
        ok = True
        for name, target in schema.items():
            if name not in have:
                rows.append((name, str(target), "-", "missing from the frame"))
                ok = False
                continue
            cast, why = _cast(df.get_column(name), target)
            if cast is None:
                ok = False
                rows.append((name, str(target), str(have[name]), why))
            else:
                cols.append(cast)
                rows.append((name, str(target), str(have[name]), "ok"))
        for name in have:
            if name not in schema:
                ok = False
                rows.append((name, "-", str(have[name]), "not in the table"))
        if not ok:
            note = None
            if merge:
                fix = (
                    'schema_mode="merge" adds columns and widens types only losslessly (Int32->Int64, '
                    "Float32->Float64, a wider Decimal, an Enum with more categories); convert the problem "
                    "column(s) to the table's type first, or append to a new table."
                )
            else:
                fix = (
                    "give the frame exactly the table's columns with convertible types (see the problem column), "
                    "or append to a new table."
                )
                evolving = [
                    r[0]
                    for r in rows
                    if r[3] != "ok"
                    and (r[1] == "-" or (r[0] in have and r[0] in schema and is_widening(schema[r[0]], have[r[0]])))
                ]
                if evolving:
                    note = (
                        f"Schema evolution is explicit: to add new columns or widen types ({', '.join(evolving)}), "
                        'append with schema_mode="merge", or call table.add_columns({...}) first.'
                    )
            raise SchemaMismatchError.from_rows(table, rows, fix=fix, note=note)
        out = pl.DataFrame(cols)
    if time_column is not None:
        nulls = out.get_column(time_column).null_count()
        if nulls:
            first = int(out.get_column(time_column).is_null().arg_max() or 0)
            raise SchemaMismatchError(
                f"table {table!r}, column {time_column!r}: the time column has {nulls} null value(s) "
                f"(first at row {first}). Fix: drop or fill those rows before appending.",
                table=table,
                columns=[time_column],
            )
    return out
