"""pandas in and out: exact round trips (imported only when pandas data is seen or asked for).

A pandas frame is stored as plain Arrow/Polars columns; everything pandas
needs to rebuild the *same* frame is kept in the ``pandas`` field of
``table.json`` (written by the table's first pandas append; later pandas or
Polars appends never change it, except for a schema change: a column added
or widened by a pandas frame with ``schema_mode="merge"`` takes that frame's
codec, one widened otherwise loses its codec and, like a column added by
``add_columns``, is converted by Polars' own ``to_pandas``). The document, ``PANDAS_META_VERSION`` 1::

    {"version": 1, "pandas_version": "3.1.1",
     "columns": [{"column": "price", "label": "price", "dtype": <codec>}, ...],
     "columns_index": {"dtype": "str", "name": null, "range": false},
     "index": {"kind": "range"}
            | {"kind": "columns", "levels": [{"column": "ts", "name": "ts", "dtype": <codec>}, ...]}}

``column`` is the stored (string) column name, ``label`` the pandas label it
came from (a string, or a number stored as its ``str()``). A ``<codec>`` says
how to rebuild one column from its stored values:

=====================  ==========================================  ==========================================
pandas dtype           stored as                                   codec (``kind`` and its fields)
=====================  ==========================================  ==========================================
int/uint/float/bool    the same Polars type (float NaN -> null)    ``numpy``, ``dtype: "int32"``
datetime64[unit, tz]   ``Datetime`` (unit ``s`` -> ``ms``)         ``numpy``, ``dtype: "datetime64[ns, UTC]"``
timedelta64[unit]      ``Duration``                                ``numpy``, ``dtype: "timedelta64[ns]"``
``str`` / ``string``   ``String``                                  ``string``, ``storage``, ``na_value``
object                 what Arrow infers (String, Binary, Date...)  ``object``, ``na: null | "nan" | "NA"``
Int64, boolean, ...    the same Polars type, with nulls            ``extension``, ``dtype: "Int64"``
category               ``Categorical`` (str categories) or values  ``category``, ``ordered``, ``categories``
                                                                   (JSON) or ``categories_ipc`` (Arrow IPC,
                                                                   base64), ``categories_dtype`` (a codec)
``X[pyarrow]``         the Arrow type's Polars equivalent          ``arrow``, ``type_ipc`` (Arrow schema)
=====================  ==========================================  ==========================================

Index rules: an unnamed ``RangeIndex`` (the default one, and also the
``RangeIndex(5, 10)`` of a chunk ``df.iloc[5:10]``) is not stored; ``to_pandas``
numbers the rows ``0..n-1`` across all appends, like ``pd.concat(...,
ignore_index=True)`` (so a table whose first append was ``df.iloc[5:]``
starts at 0). Any other index (named ``RangeIndex``, ``DatetimeIndex``,
``MultiIndex``, unnamed ``Index``, ...) is stored as ordinary column(s) named
after its level(s) (``"index"`` / ``"level_<i>"`` when unnamed, as
``reset_index`` does) and restored as the index. The ``freq`` of a
single-level ``DatetimeIndex``/``TimedeltaIndex`` (``pd.date_range``'s ``"D"``,
``"h"``, ``"5min"``, ``"B"``...) is kept in its level's ``"freq"`` and given
back whenever the index read still follows it (the whole table, a later append
that continues the range, a contiguous filtered read); an index that does not
(a filter that leaves gaps, appends that skip or overlap) gets ``freq=None``,
as pandas does after ``pd.concat``.

Column labels must be unique strings or numbers (``int``/``float``/``bool``,
stored under their ``str()`` and restored as the original number); tuples,
``None``, timestamps or MultiIndex columns are rejected with
``SchemaMismatchError`` rather than silently renamed.

Rows that were appended from Polars or Arrow into a pandas-described table
come back through the same codecs; where they hold something the pandas dtype
cannot (a null in an ``int64`` or ``bool`` column) that column comes back as
the matching nullable dtype (``Int64``, ``boolean``) instead of losing values.

Repeated appends: the first frame of a structure (column labels and dtypes,
index names and dtypes, ``freq``) goes through the full conversion and its
checks; that teaches a *plan* (``_PLANS``: the metadata, which stored column
comes from where, the Arrow types). Later frames of the same structure are
converted by the plan, one Arrow conversion per column, to exactly what the
full conversion stores (checked when the plan is made), and the table encodes
their WAL record from Arrow directly. Structures whose checks depend on the
values (object and categorical columns, ``attrs``, a MultiIndex) never get a
plan.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import importlib
import io
import json
import logging
import math
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa

from bt_frames.errors import SchemaMismatchError

log = logging.getLogger("bt_frames")

PANDAS_META_VERSION = 1

# untyped handles: their signatures differ between pandas 2.2 and 3 (and their stubs)
_pandas_dtype: Any = pd.api.types.pandas_dtype
_StringDtype: Any = pd.StringDtype
_DatetimeTZDtype: Any = pd.DatetimeTZDtype


def _module(name: str) -> Any:
    """A module without types for mypy (pandas' private timezones helpers, dateutil: no stubs everywhere)."""
    return importlib.import_module(name)


_ArrowErrors = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError)
_NULLABLE = {"i": "Int", "u": "UInt"}  # int32 -> Int32: the dtype for nulls the numpy dtype cannot hold


# -- pandas -> Polars ------------------------------------------------------------


def _b64_series(s: pl.Series) -> str:
    buf = io.BytesIO()
    s.to_frame("v").write_ipc_stream(buf)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _series_b64(data: str) -> pl.Series:
    return pl.read_ipc_stream(io.BytesIO(base64.b64decode(data))).to_series()


class _Where(str):
    """How a message names what it is about: ``column 'price'``, ``the index``, ``index level 'ts'``."""


def _where(label: object) -> str:
    return label if isinstance(label, _Where) else f"column {label!r}"


def _index_where(name: object, *, multi: bool, i: int) -> _Where:
    if not multi:
        return _Where("the index" if name is None else f"the index {name!r}")
    return _Where(f"index level {i}" if name is None else f"index level {name!r}")


_FIXES = {
    "period": "convert it first, e.g. .dt.to_timestamp() (or .astype(str) to keep the labels as text)",
    "interval": "split it first into two columns, e.g. .array.left and .array.right",
    "sparse": "convert it first with .sparse.to_dense()",
    "complex": "split it first into two float columns, e.g. np.real(...) and np.imag(...)",
}


def _unsupported(table: str, label: object, dtype: object, why: str) -> SchemaMismatchError:
    kind = next((k for k in _FIXES if k in str(dtype).lower()), None)
    fix = _FIXES[kind] if kind else "convert it first to a numeric, datetime or string dtype"
    return SchemaMismatchError(
        f"table {table!r}, {_where(label)}: pandas dtype {dtype} cannot be stored ({why}). Fix: {fix}.",
        table=table,
        columns=[str(label)],
    )


def _na_kind(values: pd.Series) -> str | None:
    """How an object column spelled its missing values: None (default), "nan" or "NA"."""
    mask = values.isna()
    if not mask.any():
        return None
    first = values[mask.to_numpy()].iloc[0]
    if first is pd.NA:
        return "NA"
    if isinstance(first, float) and math.isnan(first):
        return "nan"
    return None


def _tz_doc(tz: Any) -> dict[str, Any] | None:
    """The exact zone object of a tz-aware dtype, as JSON (None: one this module cannot name)."""
    if isinstance(tz, zoneinfo.ZoneInfo):
        return {"kind": "zoneinfo", "key": tz.key}
    if isinstance(tz, dt.timezone):
        offset = tz.utcoffset(None)
        name = tz.tzname(None)
        custom = name if name != dt.timezone(offset).tzname(None) else None
        return {"kind": "fixed", "seconds": offset.total_seconds(), "name": custom}
    try:  # dateutil and pytz zones: pandas' own string for them ("dateutil/Europe/Paris", "Europe/Paris")
        timezones = _module("pandas._libs.tslibs.timezones")
        key = timezones.get_timezone(tz)
        if isinstance(key, str) and timezones.tz_compare(timezones.maybe_get_tz(key), tz):
            return {"kind": "pandas", "key": key}
    except (ImportError, AttributeError, TypeError, ValueError):  # pragma: no cover - a pandas without them
        pass
    module = type(tz).__module__
    if module.startswith("dateutil"):
        dateutil_tz = _module("dateutil.tz")
        if isinstance(tz, dateutil_tz.tzutc):
            return {"kind": "dateutil-utc"}
        if isinstance(tz, dateutil_tz.tzoffset):
            return {"kind": "dateutil-offset", "name": tz.tzname(None), "seconds": tz.utcoffset(None).total_seconds()}
    return None


def _tz_from_doc(doc: dict[str, Any]) -> Any:
    kind = doc.get("kind")
    if kind == "zoneinfo":
        return zoneinfo.ZoneInfo(doc["key"])
    if kind == "fixed":
        offset = dt.timedelta(seconds=doc["seconds"])
        return dt.timezone(offset, doc["name"]) if doc.get("name") is not None else dt.timezone(offset)
    if kind == "pandas":
        return _module("pandas._libs.tslibs.timezones").maybe_get_tz(doc["key"])
    if kind == "dateutil-utc":
        return _module("dateutil.tz").tzutc()
    if kind == "dateutil-offset":
        return _module("dateutil.tz").tzoffset(doc["name"], doc["seconds"])
    raise ValueError(f"unknown time zone {doc}")


# object values whose Arrow conversion cannot give back the same Python objects
_NOT_THEMSELVES = {
    "UUID": "uuid.UUID values would come back as bytes. Fix: store them as text, e.g. .astype(str)",
    "tuple": "tuples would come back as lists. Fix: convert them to lists, or split them into columns",
    "set": "sets would come back as lists. Fix: convert them to sorted lists, e.g. .map(sorted)",
    "frozenset": "frozensets would come back as lists. Fix: convert them to sorted lists, e.g. .map(sorted)",
}
_DICT_FIX = "Fix: give every dict the same keys in the same order, or store them as JSON text (.map(json.dumps))"
_SAFE_OBJECT_KINDS = {"empty", "string", "bytes", "integer", "floating", "boolean", "date", "decimal"}


def _same(a: Any, b: Any) -> bool:
    """``b`` (read back) is the very value ``a`` (appended): same type, same value, recursively."""
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return b is None or (isinstance(b, float) and math.isnan(b))
    if isinstance(a, np.ndarray) or not (isinstance(b, type(a)) or isinstance(a, type(b))):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def _check_object_values(values: pd.Series, stored: pl.Series, *, table: str, label: object) -> None:
    """Refuse an object column Arrow would give back as something else (never store a changed value)."""
    kind = pd.api.types.infer_dtype(values, skipna=True)
    if kind in _SAFE_OBJECT_KINDS:
        return
    present = values[values.notna().to_numpy()]
    types = list(dict.fromkeys(type(v).__name__ for v in present))
    problem = next((_NOT_THEMSELVES[t] for t in types if t in _NOT_THEMSELVES), None)
    if problem is None and len(types) > 1:
        problem = (
            f"it mixes {', '.join(types)} values, which one column type cannot hold without changing some. "
            "Fix: give it one type, e.g. .astype(str), pd.to_numeric or pd.to_datetime"
        )
    if problem is None:  # lists, dicts, datetimes...: check every value comes back as itself
        back = _as_string(stored).to_list()
        for i, (a, b, isna) in enumerate(zip(values.tolist(), back, values.isna().tolist(), strict=True)):
            if not isna and not _same(a, b):
                fix = _DICT_FIX if isinstance(a, dict) else "Fix: give the column one plain type, e.g. .astype(str)"
                problem = f"row {i} holds {a!r} ({type(a).__name__}), which would come back as {b!r}. {fix}"
                break
    if problem is not None:
        raise SchemaMismatchError(
            f"table {table!r}, {_where(label)}: the object values cannot be stored as themselves: {problem}.",
            table=table,
            columns=[str(label)],
        )


def _categories_doc(cats: pd.Index, *, table: str, label: object) -> dict[str, Any]:
    """Categories in order (unused ones included): a JSON list for strings and integers, else Arrow IPC."""
    values = cats.to_series(index=pd.RangeIndex(len(cats)))
    doc: dict[str, Any] = {"categories_dtype": _encode_dtype(cats.dtype, values, table=table, label=label)}
    if cats.dtype.kind in "iu":
        doc["categories"] = [int(v) for v in cats]
    elif all(isinstance(v, str) for v in cats):
        doc["categories"] = list(cats)
    else:
        doc["categories_ipc"] = _b64_series(_encode_values(values, table=table, label=label))
    return doc


def _encode_dtype(dtype: Any, values: pd.Series, *, table: str, label: object) -> dict[str, Any]:
    if isinstance(dtype, pd.CategoricalDtype):
        return {
            "kind": "category",
            "ordered": bool(dtype.ordered),
            **_categories_doc(dtype.categories, table=table, label=label),
        }
    if isinstance(dtype, pd.StringDtype):
        storage = str(dtype.storage)
        nan = storage == "pyarrow_numpy" or _is_nan(getattr(dtype, "na_value", pd.NA))
        storage = "pyarrow" if storage == "pyarrow_numpy" else storage  # pandas 2.2's NaN-variant
        return {"kind": "string", "storage": storage, "na_value": "nan" if nan else "NA"}
    if isinstance(dtype, pd.ArrowDtype):
        buf = pa.schema([pa.field("v", dtype.pyarrow_dtype)]).serialize()
        return {"kind": "arrow", "type_ipc": base64.b64encode(buf.to_pybytes()).decode("ascii")}
    if isinstance(dtype, pd.DatetimeTZDtype):
        tz = _tz_doc(dtype.tz)
        return {"kind": "numpy", "dtype": str(dtype), **({"unit": dtype.unit, "tz": tz} if tz else {})}
    if isinstance(dtype, np.dtype) and dtype.kind in "iufbMm":
        return {"kind": "numpy", "dtype": str(dtype)}
    if isinstance(dtype, np.dtype) and dtype.kind == "O":
        return {"kind": "object", "na": _na_kind(values)}
    if isinstance(dtype, pd.api.extensions.ExtensionDtype) and hasattr(dtype, "__from_arrow__"):
        return {"kind": "extension", "dtype": str(dtype)}  # Int64, boolean, Float64, ... (period etc. refused earlier)
    raise _unsupported(table, label, dtype, "no Arrow/Polars equivalent")


def _is_nan(v: object) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _encode_values(values: pd.Series, *, table: str, label: object) -> pl.Series:
    """Stored Polars values of one pandas column (nulls for every missing value)."""
    dtype = values.dtype
    if isinstance(dtype, (pd.PeriodDtype, pd.IntervalDtype, pd.SparseDtype)) or (
        isinstance(dtype, np.dtype) and dtype.kind == "c"
    ):
        raise _unsupported(table, label, dtype, "no Polars equivalent")
    try:
        out = pl.Series(values=_fit_arrow(pa.array(values, from_pandas=True)))
    except _ArrowErrors as e:
        kinds = sorted({type(v).__name__ for v in values.dropna().head(10_000)})
        mixed = f" (it mixes {', '.join(kinds)})" if len(kinds) > 1 else ""
        raise SchemaMismatchError(
            f"table {table!r}, {_where(label)}: the {dtype} values cannot be converted to Arrow{mixed}: {e}. "
            "Fix: give them one type, e.g. .astype(str), pd.to_numeric or pd.to_datetime.",
            table=table,
            columns=[str(label)],
        ) from e
    except pl.exceptions.PolarsError as e:
        raise _unsupported(table, label, dtype, f"Polars cannot hold it: {e}") from e
    if isinstance(dtype, np.dtype) and dtype.kind == "O":
        _check_object_values(values, out, table=table, label=label)
    return out


def _fit_arrow(arr: Any) -> Any:
    """The Arrow values of one pandas column as Polars can hold them (the same instants, the same values)."""
    if pa.types.is_timestamp(arr.type) and arr.type.tz is not None and not _polars_zone(arr.type.tz):
        arr = arr.cast(pa.timestamp(arr.type.unit, "UTC"))  # the instants; the zone is in the metadata
    if pa.types.is_dictionary(arr.type) and not (
        pa.types.is_string(arr.type.value_type) or pa.types.is_large_string(arr.type.value_type)
    ):
        arr = arr.dictionary_decode()  # Polars categoricals hold strings only; keep the values
    return arr


_ZONES: dict[str, bool] = {}


def _polars_zone(tz: str) -> bool:
    """Polars can hold timestamps in zone ``tz`` (it refuses e.g. the fixed offset "+05:30")."""
    if tz not in _ZONES:
        try:
            pl.Series([0]).cast(pl.Datetime("us", tz))
            _ZONES[tz] = True
        except (pl.exceptions.PolarsError, ValueError):
            _ZONES[tz] = False
    return _ZONES[tz]


def _storage_name(label: object, *, table: str, what: str) -> tuple[str, Any]:
    """(stored column name, JSON label) for a pandas label; only strings and plain numbers are accepted."""
    if isinstance(label, str):
        return label, label
    if isinstance(label, (bool, np.bool_)):
        return str(bool(label)), bool(label)
    if isinstance(label, (int, np.integer)):
        return str(int(label)), int(label)
    if isinstance(label, (float, np.floating)) and math.isfinite(label):
        return str(float(label)), float(label)
    raise SchemaMismatchError(
        f"table {table!r}: {what} label {label!r} ({type(label).__name__}) cannot be a column name; "
        "labels must be strings or numbers (stored as their str()). "
        "Fix: rename it, e.g. df.columns = [str(c) for c in df.columns] or flatten a MultiIndex.",
        table=table,
        columns=[str(label)],
    )


def _is_default_index(idx: pd.Index) -> bool:
    """An unnamed RangeIndex (any start: ``df.iloc[5:]`` is a chunk, not an index) is not stored."""
    return isinstance(idx, pd.RangeIndex) and idx.name is None


# -- the plan cache: what does not change between appends of frames of the same shape ------------------------


@dataclass(frozen=True)
class _Plan:
    """How to store frames of one structure (labels, dtypes, index), learnt from a full conversion.

    ``meta`` is shared by every frame with this structure: callers must not
    change it (``Table.append`` stores a copy). ``columns`` holds, per stored
    column in order, its source (``-1``: the index; else the column position)
    and, for tz-aware datetimes, the Arrow type of their UTC instants.
    ``dtypes`` are the Polars dtypes of the stored columns (checked once, when
    the plan is made, to be the full conversion's).
    """

    meta: dict[str, Any]
    names: list[str]
    columns: tuple[tuple[int, Any], ...]
    dtypes: list[pl.DataType]
    schema: pa.Schema
    schema_ipc: bytes | None  # the IPC stream's schema message, when its batches need no dictionary messages


_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"  # the end-of-stream marker of an Arrow IPC stream


def _writer_ipc(tbl: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, tbl.schema) as w:
        w.write_table(tbl)
    return bytes(sink.getvalue().to_pybytes())


@dataclass(frozen=True)
class Planned:
    """A pandas frame converted by a plan: its stored columns as Arrow, their Polars dtypes, the metadata.

    ``pl.from_arrow(table)`` equals what ``from_pandas`` returns. ``meta`` is
    shared with every frame of this structure: do not change it.
    """

    table: pa.Table
    dtypes: list[pl.DataType]
    meta: dict[str, Any]
    schema_ipc: bytes | None

    def ipc(self) -> bytes:
        """The table as one Arrow IPC stream, byte for byte what ``pa.ipc.new_stream`` writes.

        With the plan's schema message cached, only the record batches are
        serialised (the writer's own framing: schema, batches, end marker).
        """
        if self.schema_ipc is None:
            return _writer_ipc(self.table)
        return b"".join([self.schema_ipc, *(b.serialize() for b in self.table.to_batches()), _EOS])


_PLANS: dict[tuple[Any, ...], _Plan] = {}
_MAX_PLANS = 256

_MASKED = (
    pd.Int8Dtype,
    pd.Int16Dtype,
    pd.Int32Dtype,
    pd.Int64Dtype,
    pd.UInt8Dtype,
    pd.UInt16Dtype,
    pd.UInt32Dtype,
    pd.UInt64Dtype,
    pd.Float32Dtype,
    pd.Float64Dtype,
    pd.BooleanDtype,
)


_FAST_EXTENSION = (pd.ArrowDtype, *_MASKED)


def _dtype_key(dtype: Any) -> Any:
    """A dtype as a plan-cache key, or None if its checks depend on the values (no plan then).

    Plans take numeric, bool, datetime and timedelta numpy dtypes, tz-aware
    datetimes (told apart by their zone object: pandas equates some zones
    that the metadata writes differently), string, nullable and Arrow dtypes.
    Object columns (value checks, the spelling of their missing values) and
    categoricals take the full path on every append.
    """
    if isinstance(dtype, np.dtype):
        return dtype if dtype.kind in "iufbmM" else None
    if isinstance(dtype, pd.DatetimeTZDtype):
        return (pd.DatetimeTZDtype, dtype.unit, type(dtype.tz), repr(dtype.tz))
    if isinstance(dtype, pd.StringDtype):
        na = getattr(dtype, "na_value", pd.NA)
        return (pd.StringDtype, dtype.storage, "nan" if _is_nan(na) else repr(na))
    return dtype if isinstance(dtype, _FAST_EXTENSION) else None


def _labels(index: pd.Index) -> list[Any]:
    """``index.tolist()``, without pandas' per-element path for Arrow-backed strings (pandas 3's default)."""
    values = getattr(index, "_values", None)  # the backing array (pandas 2.2 and 3)
    arrow = getattr(values, "_pa_array", None)
    if arrow is not None and isinstance(index.dtype, pd.StringDtype):
        return list(arrow.to_pylist())
    return list(index.tolist())


def _plan_key(df: pd.DataFrame) -> tuple[tuple[Any, ...], list[Any]] | None:
    """(structure key, column arrays) of a frame the plan cache can take, else None."""
    if df.attrs:
        return None
    cols = df.columns
    if type(cols) not in (pd.Index, pd.RangeIndex):  # MultiIndex (refused by the full path) and friends
        return None
    get = getattr(df, "_get_column_array", None)  # pandas 2.2 and 3: the column's array, no Series built
    if get is None:  # pragma: no cover - a pandas without it: the full path
        return None
    arrays = [get(i) for i in range(len(cols))]
    dtype_keys = tuple([_dtype_key(a.dtype) for a in arrays])
    if any(k is None for k in dtype_keys):  # not "None in": np.dtype("float64") == None is True
        return None
    idx = df.index
    if _is_default_index(idx):
        index_key: Any = None
    elif isinstance(idx, pd.MultiIndex):
        return None
    else:
        idx_dtype = _dtype_key(idx.dtype)
        if idx_dtype is None:
            return None
        index_key = (type(idx), type(idx.name), idx.name, idx_dtype, getattr(idx, "freqstr", None))
    labels = _labels(cols)
    key = (
        type(cols),
        _dtype_key(cols.dtype) or cols.dtype,
        type(cols.name),
        cols.name,
        tuple(labels),
        tuple(map(type, labels)),
        dtype_keys,
        index_key,
    )
    return key, arrays


def _plan_arrays(df: pd.DataFrame, columns: tuple[tuple[int, Any], ...], arrays: list[Any]) -> list[Any]:
    """The Arrow arrays of the stored columns: one conversion per column, the same values as the full path."""
    out = []
    for src, tz_type in columns:
        values = df.index.array if src < 0 else arrays[src]
        if tz_type is not None:  # the UTC instants as they are, without pyarrow's per-zone detour
            utc = getattr(values, "_ndarray", None)  # a DatetimeArray's UTC datetime64 values (pandas 2.2 and 3)
            if not isinstance(utc, np.ndarray) or utc.dtype != np.dtype(f"datetime64[{tz_type.unit}]"):
                utc = np.asarray(values, dtype=f"datetime64[{tz_type.unit}]")
            out.append(pa.array(utc, from_pandas=True).view(tz_type))
        else:
            out.append(_fit_arrow(pa.array(values, from_pandas=True)))
    return out


def _make_plan(df: pd.DataFrame, arrays: list[Any], out: pl.DataFrame, meta: dict[str, Any]) -> _Plan | None:
    """A plan that gives ``out`` for ``df``, or None if the Arrow route would store anything else."""
    index_cols = {lv["column"] for lv in (meta.get("index") or {}).get("levels") or []}
    positions = {doc["column"]: i for i, doc in enumerate(meta["columns"])}
    columns = []
    for name in out.columns:
        src = -1 if name in index_cols else positions[name]
        dtype = df.index.dtype if src < 0 else arrays[src].dtype
        tz_type = None
        if isinstance(dtype, pd.DatetimeTZDtype):  # the type the full path gives its UTC instants
            tz_type = _fit_arrow(pa.array(pd.Series([], dtype=dtype), from_pandas=True)).type
        columns.append((src, tz_type))
    try:
        got = _plan_arrays(df, tuple(columns), arrays)
        back = pl.from_arrow(pa.Table.from_arrays(got, names=out.columns))
    except (*_ArrowErrors, pl.exceptions.PolarsError, TypeError, ValueError):
        return None
    if not isinstance(back, pl.DataFrame) or back.dtypes != out.dtypes or not back.equals(out, null_equal=True):
        return None
    tbl = pa.Table.from_arrays(got, names=out.columns)
    flat = not any(pa.types.is_dictionary(t) or pa.types.is_nested(t) for t in tbl.schema.types)
    schema_ipc = bytes(tbl.schema.serialize().to_pybytes()) if flat else None
    if schema_ipc is not None and Planned(tbl, out.dtypes, meta, schema_ipc).ipc() != _writer_ipc(tbl):
        schema_ipc = None  # pragma: no cover - a pyarrow that frames streams otherwise: use its writer
    return _Plan(meta, out.columns, tuple(columns), out.dtypes, tbl.schema, schema_ipc)


def arrow_of(df: pd.DataFrame) -> Planned | None:
    """``df`` converted by the plan of its structure (see ``Planned``), if there is one.

    None when no plan applies (the first frame of a structure, object or
    categorical columns, ``attrs``, a value Arrow refuses): then
    ``from_pandas`` does the full conversion and its checks. The metadata is
    shared between frames: do not change it.
    """
    found = _plan_key(df)
    if found is None:
        return None
    key, arrays = found
    try:
        plan = _PLANS.get(key)
    except TypeError:  # an unhashable label or name
        return None
    if plan is None:
        return None
    try:
        got = _plan_arrays(df, plan.columns, arrays)
    except (*_ArrowErrors, pl.exceptions.PolarsError, TypeError, ValueError):
        return None  # the full path says what is wrong
    # The Arrow types follow from the dtypes in the key; callers check the Polars dtypes they get.
    tbl = pa.Table.from_arrays(got, names=plan.names)
    schema_ipc = plan.schema_ipc if tbl.schema.equals(plan.schema) else None
    return Planned(tbl, plan.dtypes, plan.meta, schema_ipc)


def from_pandas(df: pd.DataFrame, *, table: str) -> tuple[pl.DataFrame, dict[str, Any]]:
    """(stored Polars frame, ``pandas`` metadata) for a pandas frame; see the module docstring for the rules.

    The metadata and the column mapping of a frame's structure (labels,
    dtypes, index) are computed once, by the full conversion, and reused for
    later frames of the same structure (``_PLANS``, see ``arrow_of``), which
    then cost one Arrow conversion per column. Frames whose checks depend on
    their values (object and categorical columns, ``attrs``) always take the
    full path. The metadata returned is shared between frames: do not change it.
    """
    fast = arrow_of(df)
    if fast is not None:
        out = pl.from_arrow(fast.table)
        if isinstance(out, pl.DataFrame) and out.dtypes == fast.dtypes:
            return out, fast.meta
    out, meta = _from_pandas_full(df, table=table)
    found = _plan_key(df)
    if found is not None:
        plan = _make_plan(df, found[1], out, meta)
        if plan is not None:
            if len(_PLANS) >= _MAX_PLANS:
                _PLANS.clear()
            try:
                _PLANS[found[0]] = plan
            except TypeError:  # an unhashable label or name: no plan
                pass
    return out, meta


def _from_pandas_full(df: pd.DataFrame, *, table: str) -> tuple[pl.DataFrame, dict[str, Any]]:
    """``from_pandas`` without the plan cache: every check, the metadata built from scratch."""
    if isinstance(df.columns, pd.MultiIndex):
        raise SchemaMismatchError(
            f"table {table!r}: the frame has MultiIndex columns, which cannot be column names. Fix: flatten "
            "them first, e.g. df.columns = ['_'.join(map(str, c)) for c in df.columns].",
            table=table,
        )
    names: dict[str, object] = {}
    cols: list[pl.Series] = []
    col_docs: list[dict[str, Any]] = []

    def add(name: str, label: object, values: pd.Series, what: str, where: object = None) -> dict[str, Any]:
        if name in names:
            raise SchemaMismatchError(
                f"table {table!r}: {what} {label!r} and {names[name]!r} would both be stored as column {name!r}. "
                "Fix: rename one of them (column labels must be unique, also after str()).",
                table=table,
                columns=[name],
            )
        names[name] = label
        where = label if where is None else where
        cols.append(_encode_values(values, table=table, label=where).alias(name))
        return {"column": name, "dtype": _encode_dtype(values.dtype, values, table=table, label=where)}

    idx = df.index
    index_doc: dict[str, Any]
    if _is_default_index(idx):
        index_doc = {"kind": "range"}
        levels: list[dict[str, Any]] = []
    else:
        levels = []
        multi = isinstance(idx, pd.MultiIndex)
        for i in range(idx.nlevels):
            level_name = idx.names[i]
            if level_name is None:
                name, json_name = ("index" if not multi else f"level_{i}"), None
            else:
                name, json_name = _storage_name(level_name, table=table, what="index")
            values = idx.get_level_values(i).to_series(index=pd.RangeIndex(len(idx)))
            where = _index_where(level_name, multi=multi, i=i)
            level = {**add(name, level_name, values, "index level", where), "name": json_name}
            freq = getattr(idx, "freqstr", None) if not multi else None
            if isinstance(freq, str):
                level["freq"] = freq
            levels.append(level)
        index_doc = {"kind": "columns", "levels": levels}
    for pos, label in enumerate(df.columns):
        name, json_label = _storage_name(label, table=table, what="column")
        values = df.iloc[:, pos]
        if not isinstance(values.index, pd.RangeIndex):
            values = values.reset_index(drop=True)
        col_docs.append({**add(name, label, values, "column"), "label": json_label})
    if not cols:
        raise SchemaMismatchError(
            f"table {table!r}: the frame has no columns (and only the default index), so there is nothing to "
            "store. Fix: append a frame with at least one column (a named or non-default index counts).",
            table=table,
        )
    out = pl.DataFrame(cols)
    columns_index = df.columns
    cname = columns_index.name
    columns_doc: dict[str, Any] = {
        "dtype": str(columns_index.dtype),
        "name": cname if cname is None or isinstance(cname, (str, int, float, bool)) else str(cname),
        "range": isinstance(columns_index, pd.RangeIndex),
    }
    if isinstance(columns_index.dtype, pd.StringDtype):  # the storage written, not mode.string_storage at read
        columns_doc["string"] = _encode_dtype(columns_index.dtype, pd.Series([], dtype=object), table=table, label="")
    meta: dict[str, Any] = {
        "version": PANDAS_META_VERSION,
        "pandas_version": pd.__version__,
        "columns": col_docs,
        "columns_index": columns_doc,
        "index": index_doc,
    }
    if df.attrs:
        meta["attrs"] = _attrs_doc(df.attrs, table=table)
    return out, meta


def _attrs_doc(attrs: dict[Any, Any], *, table: str) -> dict[str, Any]:
    """``df.attrs`` as JSON (as pandas' Parquet writer keeps them); refused if JSON would change them."""
    try:
        doc = json.loads(json.dumps(attrs, allow_nan=True))
    except (TypeError, ValueError) as e:
        doc, why = None, str(e)
    else:
        why = "JSON would give back something else (e.g. tuples as lists, non-string keys as strings)"
    if doc != attrs:
        raise SchemaMismatchError(
            f"table {table!r}: df.attrs cannot be stored: {why}. Fix: keep only strings, numbers, booleans, "
            "None, lists and string-keyed dicts in df.attrs (or set df.attrs = {} before appending).",
            table=table,
        )
    return dict(doc)


def time_column_hint(meta: dict[str, Any]) -> str | None:
    """The stored column of a single-level datetime index, the natural time column of a new table."""
    index = meta.get("index") or {}
    levels = index.get("levels") or []
    if index.get("kind") == "columns" and len(levels) == 1:
        codec = levels[0].get("dtype") or {}
        if codec.get("kind") == "numpy" and str(codec.get("dtype", "")).startswith("datetime64"):
            return str(levels[0]["column"])
    return None


# -- Polars -> pandas ------------------------------------------------------------


def _dtype_or_none(name: object) -> Any:
    try:
        return _pandas_dtype(name)
    except (TypeError, ValueError):
        return None


def _string_dtype(storage: str, na_value: str) -> Any:
    na = np.nan if na_value == "nan" else pd.NA
    try:
        return _StringDtype(storage, na_value=na)
    except TypeError:  # pragma: no cover - pandas 2.2: no na_value; the NaN variant is "pyarrow_numpy"
        return _StringDtype("pyarrow_numpy" if na_value == "nan" else storage)


def _plain(s: pl.Series) -> Any:
    """Polars' own conversion (no metadata): a numpy- or extension-backed array."""
    return s.to_pandas().array


def _as_string(s: pl.Series) -> pl.Series:
    return s.cast(pl.String) if isinstance(s.dtype, (pl.Categorical, pl.Enum)) else s


def _decode_numpy(s: pl.Series, name: str, tz: dict[str, Any] | None = None, unit: str | None = None) -> Any:
    dtype = _DatetimeTZDtype(unit or "ns", _tz_from_doc(tz)) if tz else _dtype_or_none(name)
    if dtype is None:
        return _plain(s)
    kind = getattr(dtype, "kind", "O")
    if kind in "iub":
        if s.null_count():  # e.g. Polars rows with nulls: keep them as <NA>, never as wrong numbers
            nullable = "boolean" if kind == "b" else f"{_NULLABLE[kind]}{dtype.itemsize * 8}"
            return _pandas_dtype(nullable).__from_arrow__(s.to_arrow())
        arr = s.to_numpy()
        if arr.dtype == dtype:
            return arr
        if kind in "iu" and arr.dtype.kind in "iu" and len(arr):
            info = np.iinfo(dtype)
            if arr.min() < info.min or arr.max() > info.max:
                return arr  # values wider than the pandas dtype (appended later): keep them exact
        return arr.astype(dtype) if arr.dtype.kind in "iub" else arr
    if kind == "f":
        arr = s.to_numpy()
        return arr if arr.dtype == dtype or arr.dtype.kind not in "iuf" else arr.astype(dtype)
    if kind in "Mm":
        out = s.to_pandas().array
        try:
            if isinstance(dtype, pd.DatetimeTZDtype) and isinstance(out.dtype, pd.DatetimeTZDtype):
                return pd.DatetimeIndex(out).tz_convert(dtype.tz).as_unit(dtype.unit).array  # same instants
            return out.astype(dtype)
        except (TypeError, ValueError):
            return out
    return _plain(s)


def _decode_object(s: pl.Series, na: str | None) -> Any:
    values = pd.Series(_as_string(s).to_list(), dtype=object).to_numpy()  # lists stay elements, not a 2-D array
    if na is not None and s.null_count():
        values = values.copy()
        values[s.is_null().to_numpy()] = np.nan if na == "nan" else pd.NA
    return values


def _decode_categories(codec: dict[str, Any]) -> pd.Index:
    cdtype = codec.get("categories_dtype") or {}
    if "categories" in codec:
        kind = cdtype.get("kind")
        target: Any = None
        if kind in ("numpy", "extension"):
            target = _dtype_or_none(cdtype.get("dtype"))
        elif kind == "string":
            target = _string_dtype(cdtype["storage"], cdtype["na_value"])
        elif kind == "object":
            target = np.dtype(object)  # object categories stay object (pandas 3 would infer str)
        return pd.Index(codec["categories"], dtype=target)
    values = _series_b64(codec["categories_ipc"])
    return pd.Index(_decode(values, cdtype))


def _decode_category(s: pl.Series, codec: dict[str, Any]) -> Any:
    cats = _decode_categories(codec)

    def dtype_of(categories: pd.Index) -> pd.CategoricalDtype:
        return pd.CategoricalDtype(categories, ordered=bool(codec.get("ordered")))

    stringy = isinstance(s.dtype, (pl.Categorical, pl.Enum, pl.String))
    keys: pl.Series | None = None
    if stringy and all(isinstance(c, str) for c in cats):
        s, keys = _as_string(s), pl.Series(list(cats), dtype=pl.String)
    elif s.dtype.is_integer() and cats.dtype.kind in "iu":
        keys = pl.Series(cats.to_numpy()).cast(s.dtype, strict=False)
    if keys is not None:  # codes by a hash lookup in Polars (no Python objects per row)
        codes = s.replace_strict(keys, pl.int_range(keys.len(), eager=True), default=-1, return_dtype=pl.Int64)
        new = s.filter((codes == -1) & s.is_not_null()).unique(maintain_order=True)
        if new.len():  # values that later appends brought: new categories, in order of first appearance
            cats = cats.append(pd.Index(new.to_list(), dtype=cats.dtype))
            keys = pl.concat([keys, new.cast(keys.dtype)])
            codes = s.replace_strict(keys, pl.int_range(keys.len(), eager=True), default=-1, return_dtype=pl.Int64)
        return pd.Categorical.from_codes(codes.fill_null(-1).to_numpy(), dtype=dtype_of(cats))
    values: Any = _as_string(s).to_numpy() if stringy else _decode(s, codec.get("categories_dtype") or {})
    codes_np = cats.get_indexer(values)
    missing = (codes_np < 0) & ~pd.isna(values)
    if missing.any():
        extra = pd.unique(pd.Series(values[missing], dtype=object))
        cats = cats.append(pd.Index(extra, dtype=cats.dtype))
        codes_np = cats.get_indexer(values)
    return pd.Categorical.from_codes(codes_np, dtype=dtype_of(cats))


def _decode(s: pl.Series, codec: dict[str, Any]) -> Any:
    """One pandas array from stored values and the codec written when they were appended."""
    kind = codec.get("kind")
    try:
        if kind == "numpy":
            return _decode_numpy(s, codec["dtype"], codec.get("tz"), codec.get("unit"))
        if kind == "string":
            return _string_dtype(codec["storage"], codec["na_value"]).__from_arrow__(_as_string(s).to_arrow())
        if kind == "object":
            return _decode_object(s, codec.get("na"))
        if kind == "category":
            return _decode_category(s, codec)
        if kind == "arrow":
            field = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(codec["type_ipc"]))).field(0)
            return pd.arrays.ArrowExtensionArray(s.to_arrow().cast(field.type))
        if kind == "extension":
            dtype = _dtype_or_none(codec["dtype"])
            if dtype is not None and hasattr(dtype, "__from_arrow__"):
                return dtype.__from_arrow__(s.to_arrow())
    except (KeyError, TypeError, ValueError, *_ArrowErrors, pl.exceptions.PolarsError) as e:
        # metadata this build cannot apply (e.g. written by another pandas version): Polars' own conversion
        log.warning("column %r: pandas metadata %s not applied (%s); using Polars' to_pandas", s.name, codec, e)
    return _plain(s)


def projection(
    meta: dict[str, Any] | None, columns: Sequence[Any] | None, stored: Sequence[str], *, table: str
) -> tuple[list[str] | None, list[str] | None]:
    """(stored columns to read, data columns in order) for ``to_pandas(columns=...)``.

    Items of ``columns`` are stored names or the pandas labels they came from
    (``1`` or ``"1"``). The index columns are always read.
    """
    if columns is None:
        return None, None
    if isinstance(columns, (str, bytes)):
        columns = [columns]
    by_label: dict[Any, str] = {}
    for doc in (meta or {}).get("columns") or []:
        by_label.setdefault(doc.get("label"), doc["column"])
    known = set(stored)
    order: list[str] = []
    for c in columns:
        name = c if isinstance(c, str) and c in known else by_label.get(c)
        if name is None:
            raise SchemaMismatchError(
                f"table {table!r} has no column {c!r}; its columns are {', '.join(map(repr, stored))}.",
                table=table,
                columns=[str(c)],
            )
        if name not in order:
            order.append(name)
    index_doc = (meta or {}).get("index") or {}
    index_cols = [lv["column"] for lv in index_doc.get("levels") or [] if lv["column"] in known]
    read = [*index_cols, *(c for c in order if c not in index_cols)]
    return (read or list(stored[:1])), order  # columns=[]: still one column, for the row count


def to_pandas(df: pl.DataFrame, meta: dict[str, Any] | None, *, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Rebuild the pandas frame described by ``meta`` from stored rows ``df``.

    ``columns`` (stored names, in the order wanted) limits and orders the
    data columns; index columns in ``df`` always become the index. Without
    metadata (a table only ever appended from Polars/Arrow) this is Polars'
    own ``to_pandas()``.
    """
    if not meta or meta.get("version") != PANDAS_META_VERSION:
        out = df.to_pandas()
        return out if columns is None else out[[c for c in columns if c in out.columns]]
    n = df.height
    index_doc = meta.get("index") or {}
    levels = [lv for lv in index_doc.get("levels") or [] if lv["column"] in df.columns]
    index: pd.Index
    if index_doc.get("kind") == "columns" and levels:
        arrays = [_decode(df.get_column(lv["column"]), lv["dtype"]) for lv in levels]
        names = [lv.get("name") for lv in levels]
        if len(arrays) == 1:
            index = _with_freq(pd.Index(arrays[0], name=names[0], copy=False), levels[0].get("freq"))
        else:
            index = pd.MultiIndex.from_arrays(arrays, names=names)
    else:
        index = pd.RangeIndex(n)
    docs = {c["column"]: c for c in meta.get("columns") or []}
    order = data_columns(df.columns, meta, columns)
    data: dict[int, pd.Series] = {}
    labels: list[Any] = []
    for i, name in enumerate(order):
        doc = docs.get(name)
        s = df.get_column(name)
        values = _decode(s, doc["dtype"]) if doc else _plain(s)
        # a Series with an explicit dtype: pandas 3 would otherwise infer ``str`` for object arrays of strings
        data[i] = pd.Series(values, index=index, dtype=getattr(values, "dtype", None), copy=False)
        labels.append(doc.get("label", name) if doc else name)
    out = pd.DataFrame(data, index=index, copy=False)
    out.columns = _columns_index(labels, meta.get("columns_index") or {})
    if meta.get("attrs"):
        out.attrs = copy.deepcopy(meta["attrs"])
    return out


def data_columns(stored: Sequence[str], meta: dict[str, Any] | None, columns: Sequence[str] | None) -> list[str]:
    """The stored columns that :func:`to_pandas` makes the data columns of its frame, in their order
    (``stored``: the columns of the frame it converts; ``columns`` as there)."""
    if not meta or meta.get("version") != PANDAS_META_VERSION:
        return list(stored) if columns is None else [c for c in columns if c in stored]
    index_doc = meta.get("index") or {}
    in_index = {lv["column"] for lv in index_doc.get("levels") or [] if lv["column"] in stored}
    docs = [c["column"] for c in meta.get("columns") or []]
    order = list(columns) if columns is not None else [*docs, *(c for c in stored if c not in docs)]
    return [c for c in order if c in stored and c not in in_index]


def _with_freq(index: pd.Index, freq: object) -> pd.Index:
    """``index`` with the ``freq`` recorded at append, when its values still follow it (pandas checks)."""
    if not isinstance(freq, str) or not isinstance(index, (pd.DatetimeIndex, pd.TimedeltaIndex)):
        return index
    try:
        if isinstance(index, pd.DatetimeIndex):
            return pd.DatetimeIndex(index, freq=freq)
        return pd.TimedeltaIndex(index, freq=freq)
    except (ValueError, TypeError):  # the values left the grid (or a freq this pandas cannot parse): None
        return index


def _columns_index(labels: list[Any], doc: dict[str, Any]) -> pd.Index:
    name = doc.get("name")
    if doc.get("range") and labels == list(range(len(labels))):
        return pd.RangeIndex(len(labels), name=name)
    string = doc.get("string") or {}
    try:
        dtype = _string_dtype(string["storage"], string["na_value"]) if string else _dtype_or_none(doc.get("dtype"))
    except (KeyError, TypeError, ValueError):
        dtype = _dtype_or_none(doc.get("dtype"))
    try:
        return pd.Index(labels, dtype=dtype, name=name)
    except (TypeError, ValueError):
        return pd.Index(labels, name=name)
