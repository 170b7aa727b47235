"""Block pruning: a predicate x cached block statistics -> the blocks to read.

The pruner never reads a file. For every block it decides, per top-level
conjunct of the predicate, between

- ``CANNOT_MATCH`` — no row of the block can make the conjunct true, so the
  block is skipped (and the conjunct is named as the reason), and
- ``MIGHT_MATCH`` — anything else, including every expression the pruner does
  not understand. Polars still applies the whole predicate to what is read,
  so pruning only ever saves work: results are identical with it on or off.

How: the predicate is walked (through Polars' JSON form of the expression)
and every piece it understands is rewritten into two boolean expressions over
the *statistics frame* (one row per block: ``rows``, ``min.<c>``, ``max.<c>``,
``null_count.<c>``, ``distinct.<c>``): ``skip`` (no row can be true) and
``all`` (every row is true, needed for ``~``). Literals are reused exactly as
the user wrote them, so Polars applies its own casting rules (time zones,
units, dynamic integer literals) to statistics as it does to data.

Understood: ``== != < <= > >=`` with a literal on either side, ``is_between``
(all ``closed`` modes), ``is_in``, ``is_null``/``is_not_null``, ``&``, ``|``,
``~``, on integer, float (NaN is the largest value, as in Polars), string,
boolean, date, datetime, duration and time columns; categorical/enum columns
through their distinct sets and null counts.
"""

from __future__ import annotations

import html
import json
import logging
import sys
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeAlias

import polars as pl

from bt_frames.errors import BtError, SchemaMismatchError
from bt_frames.storage import blocks as blk
from bt_frames.storage.catalog import literal_dtype as _literal_dtype
from bt_frames.storage.catalog import stats_frame

if TYPE_CHECKING:
    from bt_frames.storage.snapshot import Snapshot

log = logging.getLogger("bt_frames")

FilterOp: TypeAlias = Literal["==", "=", "!=", "<", "<=", ">", ">=", "in", "not in", "is_null", "is_not_null"]
FilterLiteral: TypeAlias = tuple[str, str, Any] | tuple[str, str]
FilterConjunction: TypeAlias = Sequence[FilterLiteral]
FilterDNF: TypeAlias = Sequence[FilterConjunction]
Where: TypeAlias = pl.Expr | FilterConjunction | FilterDNF

MIGHT_MATCH = "MIGHT_MATCH"
CANNOT_MATCH = "CANNOT_MATCH"

_OPS = ("==", "=", "!=", "<", "<=", ">", ">=", "in", "not in", "is_null", "is_not_null")


# -- where= --------------------------------------------------------------------


def to_expr(where: Where | None, schema: pl.Schema, *, table: str | None = None) -> pl.Expr | None:
    """A Polars expression from ``where=`` (an Expr, or DNF tuples as in pyarrow/pandas ``filters=``).

    Values compared with a ``Datetime`` or ``Date`` column in tuples are
    converted by :func:`time_literal`: a naive ``datetime``/``pd.Timestamp``/
    ``np.datetime64`` is taken as wall-clock time **in the column's time zone**
    (UTC for a UTC column), a value in another zone is converted to the same
    instant, and a string is parsed as ISO 8601 (``"2024-01-02"``,
    ``"2024-01-02T13:45:00+01:00"``). The CLI's ``--where`` parses its quoted
    times with the same function.

    A Polars expression is used as written; it is checked against the
    table's columns first (on an empty frame, nothing is read), so a literal
    Polars cannot compare with a column (a naive datetime against a UTC
    column, a string against a date) raises :class:`SchemaMismatchError` here
    rather than a Polars error at ``collect()``.
    """
    if where is None:
        return None
    if isinstance(where, pl.Expr):
        _check_expr(where, schema, table)
        return where
    if isinstance(where, (list, tuple)):
        if len(where) == 0:
            return None
        if all(isinstance(t, tuple) for t in where):
            return _conjunction(where, schema, table)
        if all(isinstance(t, list) for t in where):
            ors = [_conjunction(c, schema, table) for c in where]
            out = ors[0]
            for e in ors[1:]:
                out = out | e
            return out
    raise BtError(
        f"{_where_prefix(table)}where= must be a polars expression, a list of (column, op, value) tuples (AND), "
        f"or a list of such lists (OR of ANDs); got {where!r}"
    )


def _where_prefix(table: str | None) -> str:
    return f"table {table!r}: " if table is not None else ""


def _check_expr(expr: pl.Expr, schema: pl.Schema, table: str | None) -> None:
    """Resolve ``expr`` against an empty frame of ``schema``: type errors surface now, as a BtError."""
    try:
        pl.LazyFrame(schema=schema).filter(expr).collect()
    except pl.exceptions.PolarsError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        try:
            roots = expr.meta.root_names()
        except pl.exceptions.PolarsError:  # pragma: no cover - an expression without roots
            roots = []
        missing = [c for c in roots if c not in schema]
        temporal = [c for c in roots if c in schema and isinstance(schema[c], (pl.Datetime, pl.Date))]
        if missing:
            fix = f"fix the column name (columns: {', '.join(schema.names())})"
        elif temporal:
            c = temporal[0]
            tz = getattr(schema[c], "time_zone", None)
            fix = (
                f"compare column {c!r} ({schema[c]}) with values of its own type"
                + (f", e.g. datetime(2024, 1, 2, tzinfo=ZoneInfo({tz!r}))" if tz else "")
                + f", or pass where=[({c!r}, '>=', '2024-01-02')]: tuples accept naive and other-zone "
                "datetimes, pd.Timestamp, np.datetime64 and ISO 8601 strings"
            )
        else:
            fix = "compare each column with a value of its type"
        raise SchemaMismatchError(
            f"{_where_prefix(table)}where= expression {expr} cannot be applied to the table's columns "
            f"({first}). Fix: {fix}.",
            table=table,
            columns=missing or temporal,
        ) from None


def _conjunction(items: Sequence[tuple[Any, ...]], schema: pl.Schema, table: str | None) -> pl.Expr:
    exprs = [_predicate(t, schema, table) for t in items]
    out = exprs[0]
    for e in exprs[1:]:
        out = out & e
    return out


def _predicate(t: tuple[Any, ...], schema: pl.Schema, table: str | None = None) -> pl.Expr:
    where = _where_prefix(table)
    if len(t) not in (2, 3) or not isinstance(t[0], str) or not isinstance(t[1], str):
        raise BtError(f"{where}filter {t!r}: expected (column, op, value) or (column, 'is_null'/'is_not_null')")
    col, op = t[0], t[1].lower()
    if col not in schema:
        raise SchemaMismatchError(
            f"{where}filter {t!r}: no column {col!r} (columns: {', '.join(schema.names())})",
            table=table,
            columns=[col],
        )
    if op not in _OPS:
        raise BtError(f"{where}filter {t!r}: unknown operator {t[1]!r}; valid: {', '.join(_OPS)}")
    c = pl.col(col)
    if op in ("is_null", "is_not_null"):
        return c.is_null() if op == "is_null" else c.is_not_null()
    if len(t) != 3:
        raise BtError(f"{where}filter {t!r}: operator {op!r} needs a value")
    value = t[2]
    dtype = schema[col]
    temporal = isinstance(dtype, (pl.Datetime, pl.Date))
    if op in ("in", "not in"):
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise BtError(f"{where}filter {t!r}: operator {op!r} needs a list of values, e.g. ({col!r}, {op!r}, [...])")
        values = list(value)
        if temporal:
            lit = _time_series(values, dtype, table=table, column=col)
        else:
            lit = pl.Series(values, dtype=_literal_dtype(dtype), strict=False) if values else pl.Series([], dtype=dtype)
        e = c.is_in(lit.implode())
        return e if op == "in" else ~e
    v = time_literal(value, dtype, table=table, column=col) if temporal else pl.lit(value)
    return {
        "==": c == v,
        "=": c == v,
        "!=": c != v,
        "<": c < v,
        "<=": c <= v,
        ">": c > v,
        ">=": c >= v,
    }[op]


# -- time literals ---------------------------------------------------------------

_DAY_US = 86_400_000_000


def _time_error(value: object, dtype: pl.DataType, table: str | None, column: str, why: str) -> SchemaMismatchError:
    where = f"table {table!r}, column {column!r}" if table is not None else f"column {column!r}"
    if isinstance(dtype, pl.Date):
        what = (
            "a datetime.date, a naive datetime/pd.Timestamp at midnight, or an ISO 8601 date string "
            "such as '2024-01-02'"
        )
    else:
        tz = getattr(dtype, "time_zone", None)
        zone = f"the column's zone, {tz}" if tz else "the column has no time zone"
        what = (
            f"a datetime, pd.Timestamp or np.datetime64 (naive values are read in {zone}), "
            "or an ISO 8601 string such as '2024-01-02' or '2024-01-02T13:45:00+00:00'"
        )
        if not tz:
            what += "; the values must be naive (use .replace(tzinfo=None) or .tz_localize(None))"
    return SchemaMismatchError(
        f"{where} ({dtype}): cannot compare with {value!r} ({type(value).__name__}): {why}. Pass {what}.",
        table=table,
        columns=[column],
    )


def _ticks(value: object) -> tuple[int, str, bool] | str:
    """(ticks since the epoch, unit "us"/"ns", tz-aware?) or why ``value`` is no time.

    Aware values count from the UTC epoch, naive ones are wall-clock ticks.
    """
    import datetime as dt

    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            return "not an ISO 8601 date/time"
    pd = sys.modules.get("pandas")
    if pd is not None and value is pd.NaT:
        return "NaT is not a time; use (column, 'is_null') for missing values"
    if pd is not None and isinstance(value, pd.Timestamp):
        return int(value.as_unit("ns").value), "ns", value.tzinfo is not None
    np = sys.modules.get("numpy")  # a numpy value exists only if numpy was imported (not by bt_frames: ~80 ms)
    if np is not None and isinstance(value, np.datetime64):
        if np.isnat(value):
            return "NaT is not a time; use (column, 'is_null') for missing values"
        unit = "ns" if np.datetime_data(value)[0] in ("ns", "ps", "fs", "as") else "us"
        return int(value.astype(f"datetime64[{unit}]").astype(np.int64)), unit, False
    if isinstance(value, dt.datetime):
        aware = value.tzinfo is not None and value.utcoffset() is not None
        epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) if aware else dt.datetime(1970, 1, 1)
        return (value - epoch) // dt.timedelta(microseconds=1), "us", aware
    if isinstance(value, dt.date):
        return (value - dt.date(1970, 1, 1)).days * _DAY_US, "us", False
    return "not a date or time"


def time_literal(value: Any, dtype: pl.DataType, *, table: str | None = None, column: str) -> Any:
    """``value`` as a Polars literal of ``dtype`` (a ``Datetime`` or ``Date`` column), for comparisons.

    - a naive ``datetime``, ``pd.Timestamp`` or ``np.datetime64`` is wall-clock
      time in the column's zone (for a ``Datetime(time_zone='UTC')`` column:
      UTC); a value with another zone is converted to the same instant;
    - a string is parsed as ISO 8601 (``datetime.fromisoformat``):
      ``"2024-01-02"``, ``"2024-01-02 13:45"``, ``"2024-01-02T13:45:00Z"``;
    - a ``Date`` column takes dates, naive datetimes at midnight and date strings;
    - ``None`` and Polars expressions are passed through unchanged.

    Anything else raises :class:`SchemaMismatchError` naming the table, the
    column and what to pass. ``where=`` tuples and the CLI's ``--where`` both
    use this function, so they read the same text the same way.
    """
    if value is None or isinstance(value, pl.Expr):
        return value if isinstance(value, pl.Expr) else pl.lit(None, dtype=dtype)
    s = _time_series([value], dtype, table=table, column=column, exact=True)
    if isinstance(dtype, pl.Date):
        return pl.lit(s.item(), dtype=pl.Date)
    if s.dtype.time_unit == "ns" and int(s.dt.nanosecond().item()) % 1000:  # type: ignore[attr-defined]
        return pl.lit(int(s.to_physical().item()), dtype=pl.Int64).cast(s.dtype)  # a python datetime has no ns
    return pl.lit(s.item(), dtype=s.dtype)


def _time_series(
    values: Sequence[Any], dtype: pl.DataType, *, table: str | None, column: str, exact: bool = False
) -> pl.Series:
    """``values`` (see :func:`time_literal`) as one Series for a ``Datetime``/``Date`` column.

    ``exact``: keep sub-unit precision (a scalar comparison); otherwise the Series
    has the column's dtype and values it cannot hold exactly (which equal no row) are left out.
    """
    parts: list[pl.Series] = []
    tz = dtype.time_zone if isinstance(dtype, pl.Datetime) else None
    for value in values:
        if value is None:
            parts.append(pl.Series([None], dtype=dtype))
            continue
        t = _ticks(value)
        if isinstance(t, str):
            raise _time_error(value, dtype, table, column, t)
        ticks, unit, aware = t
        if isinstance(dtype, pl.Date):
            if aware:
                raise _time_error(value, dtype, table, column, "a Date column holds no time zone")
            per_day = _DAY_US * (1000 if unit == "ns" else 1)
            if ticks % per_day:
                raise _time_error(value, dtype, table, column, "it is not at midnight")
            parts.append(pl.Series([ticks // per_day], dtype=pl.Int32).cast(pl.Date))
            continue
        assert isinstance(dtype, pl.Datetime)
        s = pl.Series([ticks], dtype=pl.Int64).cast(pl.Datetime(unit))  # type: ignore[arg-type]
        if aware:
            if tz is None:
                raise _time_error(value, dtype, table, column, "it has a time zone and the column has none")
            s = s.dt.replace_time_zone("UTC").dt.convert_time_zone(tz)
        elif tz is not None:
            try:
                s = s.dt.replace_time_zone(tz, ambiguous="raise", non_existent="raise")
            except pl.exceptions.PolarsError:
                raise _time_error(
                    value, dtype, table, column, f"that wall-clock time is ambiguous or does not exist in {tz}"
                ) from None
        if not exact:
            target = s.cast(dtype)
            if target.cast(s.dtype).equals(s):
                parts.append(target)
            continue
        lit_unit = "ns" if "ns" in (unit, dtype.time_unit) else "us"
        parts.append(s.cast(pl.Datetime(lit_unit, tz)))  # type: ignore[arg-type]
    if not parts:
        return pl.Series([], dtype=dtype)
    return pl.concat(parts)


def blocks_frame(infos: Sequence[blk.BlockInfo], stats: pl.DataFrame | None, schema: pl.Schema) -> pl.DataFrame:
    """``table.blocks``: the statistics frame with paths and distinct counts instead of sets."""
    st = stats if stats is not None else stats_frame(infos, schema)
    out = st.with_columns(
        pl.Series("path", [b.file for b in infos], dtype=pl.String),
        pl.Series("checksum", [b.name.digest for b in infos], dtype=pl.String),
        *[
            pl.col(c).list.len().alias(c.replace("distinct.", "distinct_count.", 1))
            for c in st.columns
            if c.startswith("distinct.")
        ],
    ).drop([c for c in st.columns if c.startswith(("distinct.", "counts."))])
    front = ["block", "path", "first_lsn", "last_lsn", "part", "rows", "bytes", "checksum"]
    return out.select(front + [c for c in out.columns if c not in front])


# -- the predicate walk ----------------------------------------------------------

_FALSE = pl.lit(False)
_FLIP = {"Lt": "Gt", "LtEq": "GtEq", "Gt": "Lt", "GtEq": "LtEq", "Eq": "Eq", "NotEq": "NotEq"}


@dataclass
class _Bounds:
    """Three facts about a boolean expression per block, each an expression over the stats frame.

    ``never_true``: no row makes it true (the block can be skipped);
    ``never_false``: no row makes it false (needed for ``~``);
    ``never_null``: no row makes it null. A null result is neither true nor
    false, as in Polars' three-valued logic, and ``filter`` drops it, so
    "every row matches" is ``never_false & never_null``. A null *fact* (e.g.
    an unknown literal) counts as "don't know": ``plan`` fills it with False.
    """

    never_true: pl.Expr
    never_false: pl.Expr
    never_null: pl.Expr
    understood: bool = True

    @property
    def all_true(self) -> pl.Expr:
        return self.never_false & self.never_null

    @property
    def all_false(self) -> pl.Expr:
        return self.never_true & self.never_null


_TRUE = pl.lit(True)
_UNKNOWN = _Bounds(_FALSE, _FALSE, _FALSE, understood=False)


def _is_literal(node: Any) -> bool:
    if not isinstance(node, dict) or len(node) != 1:
        return False
    key, body = next(iter(node.items()))
    if key == "Literal":
        return True
    if key == "Cast" and isinstance(body, dict):
        return _is_literal(body.get("expr"))
    return False


def _column(node: Any) -> str | None:
    if isinstance(node, dict) and len(node) == 1 and "Column" in node and isinstance(node["Column"], str):
        return str(node["Column"])
    return None


def _inputs(expr: pl.Expr, n: int) -> list[pl.Expr]:
    """The ``n`` inputs of ``expr``'s root node, in the order of its JSON form.

    The JSON form gives the structure, but not every literal survives it
    (NaN and infinities become ``null``), so literals are taken from the
    expression objects themselves.
    """
    kids = list(reversed(expr.meta.pop()))
    if len(kids) != n:
        raise ValueError(f"expected {n} inputs, got {len(kids)}")
    return kids


class _Walker:
    def __init__(self, stats_cols: set[str], schema: pl.Schema) -> None:
        self.cols = stats_cols
        self.schema = schema
        self._values: dict[int, tuple[pl.Expr, pl.Series | None]] = {}  # by id; the expr is kept alive

    def has(self, name: str) -> bool:
        return name in self.cols

    def value(self, lit: pl.Expr) -> pl.Series | None:
        """The literal's value(s), evaluated once per walk (None: Polars cannot evaluate it alone)."""
        got = self._values.get(id(lit))
        if got is None or got[0] is not lit:
            try:
                series: pl.Series | None = pl.select(lit.alias("v")).to_series()
            except Exception:
                series = None
            got = self._values[id(lit)] = (lit, series)
        return got[1]

    def walk(self, node: Any, expr: pl.Expr) -> _Bounds:
        try:
            return self._walk(node, expr)
        except Exception as e:  # never raise on an expression: keep the block
            log.debug("pruner: could not interpret %s (%s)", expr, e)
            return _UNKNOWN

    def _walk(self, node: Any, expr: pl.Expr) -> _Bounds:
        if not isinstance(node, dict) or len(node) != 1:
            return _UNKNOWN
        key, body = next(iter(node.items()))
        if key == "BinaryExpr":
            op = body["op"]
            left, right = body["left"], body["right"]
            if op in ("And", "LogicalAnd", "Or", "LogicalOr"):
                le, re = _inputs(expr, 2)
                a, b = self.walk(left, le), self.walk(right, re)
                understood = a.understood and b.understood
                # AND is null unless a side is false: no null if neither side has one, or one side is all false
                if op in ("And", "LogicalAnd"):
                    nn = (a.never_null & b.never_null) | a.all_false | b.all_false
                    return _Bounds(a.never_true | b.never_true, a.never_false & b.never_false, nn, understood)
                nn = (a.never_null & b.never_null) | a.all_true | b.all_true
                return _Bounds(a.never_true & b.never_true, a.never_false | b.never_false, nn, understood)
            if op in _FLIP:
                le, re = _inputs(expr, 2)
                if _column(left) is not None and _is_literal(right):
                    return self.compare(str(_column(left)), op, re)
                if _column(right) is not None and _is_literal(left):
                    return self.compare(str(_column(right)), _FLIP[op], le)
            return _UNKNOWN
        if key == "Function":
            fn = body["function"]
            args = body["input"]
            if isinstance(fn, dict) and "Boolean" in fn:
                b = fn["Boolean"]
                name = b if isinstance(b, str) else next(iter(b))
                opts = None if isinstance(b, str) else b[name]
                return self.boolean(name, opts, args, _inputs(expr, len(args)))
        return _UNKNOWN

    def boolean(self, name: str, opts: Any, args: list[Any], exprs: list[pl.Expr]) -> _Bounds:
        if name == "Not" and len(args) == 1:
            inner = self.walk(args[0], exprs[0])
            return _Bounds(inner.never_false, inner.never_true, inner.never_null, inner.understood)
        col = _column(args[0]) if args else None
        if col is None or not self.has(f"null_count.{col}"):
            return _UNKNOWN
        nc, rows = pl.col(f"null_count.{col}"), pl.col("rows")
        if name == "IsNull":
            return _Bounds(nc == 0, nc == rows, _TRUE)
        if name == "IsNotNull":
            return _Bounds(nc == rows, nc == 0, _TRUE)
        if name == "IsBetween" and len(args) == 3 and _is_literal(args[1]) and _is_literal(args[2]):
            closed = opts.get("closed", "Both") if isinstance(opts, dict) else "Both"
            a = self.compare(col, "GtEq" if closed in ("Both", "Left") else "Gt", exprs[1])
            b = self.compare(col, "LtEq" if closed in ("Both", "Right") else "Lt", exprs[2])
            # a null bound makes every row null in Polars' is_between, not (c >= lo) & null
            if not (a.understood and b.understood) or self.is_null_literal(exprs[1]) or self.is_null_literal(exprs[2]):
                return _UNKNOWN
            nn = (a.never_null & b.never_null) | a.all_false | b.all_false
            understood = a.understood and b.understood
            return _Bounds(a.never_true | b.never_true, a.never_false & b.never_false, nn, understood)
        if name == "IsIn" and len(args) == 2 and _is_literal(args[1]):
            nulls_equal = bool(opts.get("nulls_equal", False)) if isinstance(opts, dict) else False
            return self.is_in(col, exprs[1], nulls_equal=nulls_equal)
        return _UNKNOWN

    def is_null_literal(self, lit: pl.Expr) -> bool:
        value = self.value(lit)
        return value is not None and value.len() == 1 and value.null_count() == 1

    def exact(self, col: str, lit: pl.Expr) -> bool:
        """Whether ``lit`` is one non-null value that the column's type holds exactly.

        Anything else is left to Polars: a literal of a finer unit (1.5 ms against a ms column), a
        float against an integer column, or a null, which Polars may cast or propagate in ways the
        statistics cannot follow (``is_between(lo, None)`` is null for every row, for one).
        ``where=`` and eager reads pass the user's expression before Polars coerces it.
        """
        value = self.value(lit)
        if value is None:
            return False
        try:
            if value.len() != 1 or value.null_count() or isinstance(value.dtype, pl.Null):
                return False
            target = _literal_dtype(self.schema[col])
            if value.dtype == target:
                return True
            cast = value.cast(target, strict=True)
            return bool(cast.null_count() == 0 and cast.cast(value.dtype, strict=True).equals(value))
        except Exception:
            return False

    def compare(self, col: str, op: str, lit: pl.Expr) -> _Bounds:
        """``col <op> lit``. A null row gives null: neither true nor false."""
        if not self.has(f"null_count.{col}") or col not in self.schema:
            return _UNKNOWN
        if self.is_null_literal(lit):  # every row compares to null: null, neither true nor false
            return _Bounds(_TRUE, _TRUE, pl.col("rows") == 0)
        if not self.exact(col, lit):
            return _UNKNOWN
        mn, mx = pl.col(f"min.{col}"), pl.col(f"max.{col}")
        nc = pl.col(f"null_count.{col}")
        all_null = nc == pl.col("rows")
        # a null row, or a null literal, gives null; nothing else does (NaN is a value)
        no_null = (nc == 0) & lit.is_not_null()
        dist = f"distinct.{col}"
        if not self.has(f"min.{col}"):  # categorical/enum: distinct sets only
            if not self.has(dist):
                return _Bounds(all_null, all_null, no_null)
            d = pl.col(dist)
            known = d.is_not_null()
            only_lit = known & (d.list.len() == 1) & d.list.contains(lit)
            lit_absent = known & ~d.list.contains(lit)
            if op == "Eq":
                return _Bounds(all_null | lit_absent, all_null | only_lit, no_null)
            if op == "NotEq":
                return _Bounds(all_null | only_lit, all_null | lit_absent, no_null)
            return _Bounds(all_null, all_null, no_null)
        if op == "Eq":
            never_true = all_null | (mx < lit) | (mn > lit)
            if self.has(dist):
                d = pl.col(dist)
                never_true = never_true | (d.is_not_null() & ~d.list.contains(lit))
            return _Bounds(never_true, all_null | ((mn == lit) & (mx == lit)), no_null)
        if op == "NotEq":
            return _Bounds(all_null | ((mn == lit) & (mx == lit)), all_null | (mx < lit) | (mn > lit), no_null)
        if op == "Lt":
            return _Bounds(all_null | (mn >= lit), all_null | (mx < lit), no_null)
        if op == "LtEq":
            return _Bounds(all_null | (mn > lit), all_null | (mx <= lit), no_null)
        if op == "Gt":
            return _Bounds(all_null | (mx <= lit), all_null | (mn > lit), no_null)
        if op == "GtEq":
            return _Bounds(all_null | (mx < lit), all_null | (mn >= lit), no_null)
        return _UNKNOWN

    def is_in(self, col: str, lit: pl.Expr, *, nulls_equal: bool) -> _Bounds:
        """``col.is_in(values)``: null rows give null, or match a null in ``values`` when ``nulls_equal``."""
        nc, rows = pl.col(f"null_count.{col}"), pl.col("rows")
        values = pl.select(lit.alias("v")).to_series()
        if isinstance(values.dtype, (pl.List, pl.Array)):
            values = values.explode()
        nulls = values.null_count()
        has_null = nulls > 0
        original = values
        values = values.cast(_literal_dtype(self.schema[col]), strict=False)
        if values.null_count() > nulls:  # a value that does not fit the column's type
            return _UNKNOWN
        try:  # a value the column's type holds only approximately (1.5 ms in a ms column): Polars decides
            if not values.cast(original.dtype, strict=False).equals(original):
                return _UNKNOWN
        except Exception:
            return _UNKNOWN
        values = values.drop_nulls().unique().sort()
        nulls_match = nulls_equal and has_null
        # rows that are null: true if nulls_match, else null (never false then, unless nulls_equal)
        null_rows_never_true = (nc == 0) if nulls_match else pl.lit(True)
        null_rows_never_false = (nc == 0) if nulls_equal and not has_null else pl.lit(True)
        if len(values) == 0:
            values_never_true: pl.Expr = pl.lit(True)
            values_never_false: pl.Expr = nc == rows
        else:
            values_never_true = nc == rows
            values_never_false = nc == rows
            if self.has(f"min.{col}"):
                v = pl.lit(values)
                inside = v.search_sorted(pl.col(f"max.{col}"), side="right").cast(pl.Int64) - v.search_sorted(
                    pl.col(f"min.{col}"), side="left"
                ).cast(pl.Int64)
                values_never_true = values_never_true | (inside == 0)
            dist = f"distinct.{col}"
            if self.has(dist):
                d = pl.col(dist)
                hits = d.list.eval(pl.element().is_in(values.implode())).list
                values_never_true = values_never_true | (d.is_not_null() & ~hits.any())
                values_never_false = values_never_false | (d.is_not_null() & hits.all())
        never_null = (nc == 0) | pl.lit(nulls_equal)  # non-null rows give true/false; null rows null unless nulls_equal
        return _Bounds(values_never_true & null_rows_never_true, values_never_false & null_rows_never_false, never_null)


def _conjuncts(node: Any, expr: pl.Expr) -> list[tuple[Any, pl.Expr]]:
    if isinstance(node, dict) and "BinaryExpr" in node and node["BinaryExpr"]["op"] in ("And", "LogicalAnd"):
        b = node["BinaryExpr"]
        left, right = _inputs(expr, 2)
        return _conjuncts(b["left"], left) + _conjuncts(b["right"], right)
    return [(node, expr)]


# -- the plan --------------------------------------------------------------------

NONE, SOME, ALL = "none", "some", "all"  # how many of a block's rows match: the three verdicts


@dataclass
class PruneReport:
    """The plan of one scan: which blocks are read, which are skipped and why.

    Every block gets a verdict (column ``verdict`` of :meth:`to_frame`):
    ``"none"`` (no row can match: skipped, ``reason`` names the conjunct),
    ``"all"`` (every row matches: read without evaluating the predicate, and
    counted without being read) or ``"some"``. :attr:`rows_matching` goes
    further: for the "some" blocks whose value counts decide the predicate
    (see :mod:`bt_frames._counts`) it is the exact number of matching rows.

    ``scan()`` executes exactly this plan, so the report and the execution
    cannot disagree.
    """

    table: str
    predicate: str | None
    blocks_total: int
    blocks_pruned: int
    rows_total: int
    rows_pruned: int
    bytes_total: int
    bytes_pruned: int
    hot_rows: int
    survivors: tuple[blk.BlockInfo, ...] = field(repr=False)
    details: pl.DataFrame = field(repr=False)
    conjuncts: list[str] = field(default_factory=list)
    not_understood: list[str] = field(default_factory=list)
    # for the scan: per survivor, its verdict and its residual (conjuncts not true for every row)
    verdicts: tuple[str, ...] = field(default=(), repr=False)
    _stats: pl.DataFrame | None = field(default=None, repr=False)
    _schema: pl.Schema | None = field(default=None, repr=False)
    _parts: list[tuple[pl.Expr, Any, bool]] = field(default_factory=list, repr=False)  # (expr, tree, understood)
    _all: pl.DataFrame | None = field(default=None, repr=False)  # per block: conjunct i true for every row
    _matching: pl.DataFrame | None = field(default=None, repr=False)
    _matching_list: list[int | None] | None = field(default=None, repr=False)
    # answers from statistics (see _match): shared by every report of one predicate over one statistics
    # frame (both immutable), so a repeated count is answered once
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False)
    _groups: dict[tuple[bool, ...], list[int]] | None = field(default=None, repr=False)  # see _residuals

    @property
    def blocks_scanned(self) -> int:
        return self.blocks_total - self.blocks_pruned

    @property
    def blocks_all(self) -> int:
        """Blocks in which every row matches: read without the predicate, counted without reading."""
        return sum(v == ALL for v in self.verdicts)

    @property
    def rows_scanned(self) -> int:
        return self.rows_total - self.rows_pruned

    @property
    def bytes_scanned(self) -> int:
        return self.bytes_total - self.bytes_pruned

    @property
    def rows_avoided(self) -> int:
        return self.rows_pruned

    @property
    def bytes_avoided(self) -> int:
        return self.bytes_pruned

    @property
    def fraction_pruned(self) -> float:
        return self.blocks_pruned / self.blocks_total if self.blocks_total else 0.0

    @property
    def rows_matching(self) -> pl.Series:
        """Per block (all of them, in order): the exact number of rows matching, or null where only
        reading the block can tell. Computed from statistics on first use."""
        return pl.Series("rows_matching", self.matching_list(), dtype=pl.Int64)

    @property
    def blocks_counted(self) -> int:
        """Blocks whose matching rows are known from statistics alone ("none", "all" and value counts):
        a count over this plan reads none of them."""
        return int(self.rows_matching.is_not_null().sum())

    @property
    def rows_counted(self) -> int:
        """Matching rows counted from statistics alone (over :attr:`blocks_counted` blocks)."""
        return int(self.rows_matching.sum() or 0)

    def summary(self) -> str:
        return (
            f"table {self.table!r}: {self.blocks_pruned}/{self.blocks_total} blocks pruned, "
            f"{self.blocks_scanned} scanned; {self.rows_pruned:,} rows and "
            f"{_fmt_bytes(self.bytes_pruned)} avoided; {self.hot_rows:,} hot rows scanned"
        )

    def __repr__(self) -> str:
        lines = [f"PruneReport({self.summary()})", f"  predicate: {self.predicate}"]
        for c in self.not_understood:
            lines.append(f"  not understood (kept blocks, Polars filters rows): {c}")
        reasons = self.details.filter(pl.col("scanned").not_()).group_by("reason", maintain_order=True).len()
        for reason, n in reasons.iter_rows():
            lines.append(f"  {n} block(s) pruned by {reason}")
        lines.append(self._verdict_line())
        return "\n".join(lines)

    def _verdict_line(self) -> str:
        counts = {v: 0 for v in (NONE, SOME, ALL)}
        for v, n in self.details.group_by("verdict").len().iter_rows():
            counts[str(v)] = int(n)
        return (
            f"  verdicts: {counts[NONE]} none, {counts[SOME]} some, {counts[ALL]} all; "
            f"{self.blocks_counted}/{self.blocks_total} blocks answered from metadata "
            f"({self.rows_counted:,} matching rows counted without reading a byte)"
        )

    def _repr_html_(self) -> str:
        pct = 100 * self.fraction_pruned
        head = (
            f"<b>PruneReport</b> for table <code>{html.escape(self.table)}</code> "
            f"where <code>{html.escape(str(self.predicate))}</code><br>"
            f"<div style='display:flex;height:10px;width:320px;border:1px solid #999'>"
            f"<div style='width:{pct:.1f}%;background:#bbb' title='pruned'></div>"
            f"<div style='width:{100 - pct:.1f}%;background:#2a7' title='scanned'></div></div>"
        )
        rows = [
            ("blocks", f"{self.blocks_total}", f"{self.blocks_pruned}", f"{self.blocks_scanned}"),
            ("rows", f"{self.rows_total:,}", f"{self.rows_pruned:,}", f"{self.rows_scanned:,}"),
            ("bytes", _fmt_bytes(self.bytes_total), _fmt_bytes(self.bytes_pruned), _fmt_bytes(self.bytes_scanned)),
            ("hot rows", f"{self.hot_rows:,}", "0", f"{self.hot_rows:,}"),
        ]
        body = "".join(f"<tr><th>{a}</th><td>{b}</td><td>{c}</td><td>{d}</td></tr>" for a, b, c, d in rows)
        table = "<table><tr><th></th><th>total</th><th>pruned</th><th>scanned</th></tr>" + body + "</table>"
        extra = "".join(
            f"<div>not understood (blocks kept): <code>{html.escape(c)}</code></div>" for c in self.not_understood
        )
        reasons = self.details.filter(pl.col("scanned").not_()).group_by("reason", maintain_order=True).len()
        extra += "".join(
            f"<div>{n} block(s) pruned by <code>{html.escape(str(reason))}</code></div>"
            for reason, n in reasons.iter_rows()
        )
        extra += f"<div>{html.escape(self._verdict_line().strip())}</div>"
        return f"<div>{head}{table}{extra}</div>"

    def to_frame(self) -> pl.DataFrame:
        """Per block: name, rows, bytes, scanned, the conjunct that pruned it, its verdict (none/some/all)
        and ``rows_matching`` (exact, from statistics; null where only reading can tell)."""
        return self._counted()

    # -- answers from statistics (bt_frames._counts) --

    def _counted(self) -> pl.DataFrame:
        if self._matching is None:
            self._matching = self.details.with_columns(self.rows_matching)
        return self._matching

    def block_lists(self) -> _BlockLists:
        """The per-block columns of :attr:`details` as tuples (computed once per evaluation, shared)."""
        return _block_lists(self.details, self._cache)

    def matching_list(self) -> list[int | None]:
        """:attr:`rows_matching` as a list (computed once)."""
        if self._matching_list is None:
            got = self._cache.get("matching_list")  # shared: kept as a tuple, handed out as a copy
            if got is None:
                got = self._cache["matching_list"] = tuple(self._count())
            self._matching_list = list(got)
        return self._matching_list

    def _residuals(self) -> dict[tuple[bool, ...], list[int]]:
        """The "some" blocks grouped by which conjuncts are still open for them (not true for every row)."""
        if self._groups is not None:
            return self._groups
        shared = self._cache.get("groups")
        if shared is not None:
            self._groups = shared
            return shared
        groups: dict[tuple[bool, ...], list[int]] = {}
        self._groups = groups
        if self._all is None:
            return groups
        verdicts = self.block_lists().verdicts
        for i, row in enumerate(self._all.iter_rows()):
            if verdicts[i] == SOME:
                groups.setdefault(tuple(not t for t in row), []).append(i)
        self._cache["groups"] = groups
        return groups

    def _residual(self, mask: tuple[bool, ...]) -> tuple[pl.Expr, str, bool] | None:
        """The residual predicate of ``mask``, its one column and whether it tests nullness only."""
        from bt_frames import _counts

        open_parts = [p for p, m in zip(self._parts, mask, strict=True) if m]
        if not open_parts or not all(u for _, _, u in open_parts):
            return None
        found = _counts.residual_column([e for e, _, _ in open_parts], [t for _, t, _ in open_parts])
        if found is None:
            return None
        expr = open_parts[0][0]
        for e, _, _ in open_parts[1:]:
            expr = expr & e
        return expr, found[0], found[1]

    def _match(self, mask: tuple[bool, ...], blocks: list[int], column: str | None) -> pl.DataFrame | None:
        """``_counts.matching`` for the blocks of one residual ``mask`` (cached: a count and its values
        ask the same); None unless the residual is about one column (``column``, if given)."""
        from bt_frames import _counts

        residual = self._residual(mask)
        if residual is None or (column is not None and residual[1] != column):
            return None
        key = (mask, residual[1])
        if key not in self._cache:
            assert self._stats is not None
            assert self._schema is not None
            expr, col, nullness = residual
            self._cache[key] = _counts.matching(self._stats, self._schema, expr, col, nullness, blocks)
        return self._cache[key]

    def _count(self) -> list[int | None]:
        lists = self.block_lists()
        out: list[int | None] = [
            0 if v == NONE else r if v == ALL else None for v, r in zip(lists.verdicts, lists.rows, strict=True)
        ]
        if self._stats is None or self._schema is None:
            return out
        for mask, blocks in self._residuals().items():
            got = self._match(mask, blocks, None)
            if got is not None:
                for b, n in zip(blocks, got["rows"].to_list(), strict=True):
                    out[b] = n
        return out

    def known_values(self, column: str) -> list[tuple[bool, Any]]:
        """Per survivor: whether its matching rows all hold one known value of ``column``, and that value.

        From the value counts of ``column``: filtered by the block's residual predicate when that
        predicate is about ``column`` alone, the whole block's otherwise (one value in the block is one
        value in any subset). Used to build a height-only scan's rows without reading the block.
        """
        from bt_frames import _counts

        if self._stats is None or self._schema is None or column not in self._schema:
            return [(False, None)] * len(self.survivors)
        lists = self.block_lists()
        verdict, idx = lists.verdicts, lists.scanned
        pos = {b: i for i, b in enumerate(idx)}
        out: list[tuple[bool, Any]] = [(False, None)] * len(idx)
        whole: list[int] = [b for b in idx if verdict[b] == ALL]
        for mask, blocks in self._residuals().items():
            got = self._match(mask, blocks, column)
            if got is None:
                whole += blocks
                continue
            for b, n, k, v in got.select(_counts._BLOCK, "rows", "n_values", "value").iter_rows():
                out[pos[b]] = (n is not None and (n == 0 or k == 1), v)
        if whole:
            key = ("whole", column, tuple(sorted(whole)))
            if key not in self._cache:
                self._cache[key] = _counts.matching(self._stats, self._schema, pl.lit(True), column, False, key[2])
            got = self._cache[key]
            if got is not None:
                for b, k, v in got.select(_counts._BLOCK, "n_values", "value").iter_rows():
                    out[pos[b]] = (k == 1, v)
        return out


def _fmt_bytes(n: int) -> str:
    x = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if x < 1024 or unit == "GiB":
            return f"{x:.0f} {unit}" if unit == "B" else f"{x:.1f} {unit}"
        x /= 1024
    return f"{n} B"  # pragma: no cover


@dataclass(frozen=True)
class _Compiled:
    """A predicate walked once: per conjunct its text and its facts as expressions over statistics."""

    conjuncts: list[str]
    not_understood: list[str]
    facts: list[tuple[str, pl.Expr, pl.Expr]]  # (conjunct, "no row can match", "every row matches")
    parts: list[tuple[pl.Expr, Any, bool]]  # (conjunct, its JSON tree, understood)


_CACHE_SIZE = 64
_compiled: OrderedDict[tuple[bytes, tuple[str, ...], str], _Compiled] = OrderedDict()
# per statistics frame (by id, dropped when the frame is: weakref.finalize), its predicates' evaluations
_evaluated: dict[int, OrderedDict[tuple[bytes, tuple[str, ...], str], tuple[pl.DataFrame, Any, dict[Any, Any]]]] = {}
_cache_lock = threading.Lock()


def _evaluations(stats: pl.DataFrame) -> OrderedDict[tuple[bytes, tuple[str, ...], str], Any]:
    """The evaluation cache of one statistics frame: it lives exactly as long as the frame, so a
    table's new blocks (a new frame) never leave the old frame's answers, or the frame, in memory."""
    with _cache_lock:
        got = _evaluated.get(id(stats))
        if got is None:
            got = _evaluated[id(stats)] = OrderedDict()
            weakref.finalize(stats, _evaluated.pop, id(stats), None)
        return got


def _compile(predicate: pl.Expr, stats_cols: tuple[str, ...], schema: pl.Schema) -> _Compiled:
    conj_strs: list[str] = []
    not_understood: list[str] = []
    facts: list[tuple[str, pl.Expr, pl.Expr]] = []
    parts_out: list[tuple[pl.Expr, Any, bool]] = []
    try:
        tree = json.loads(predicate.meta.serialize(format="json"))
        parts = _conjuncts(tree, predicate)
    except Exception as e:  # an expression Polars cannot serialise: keep everything
        log.debug("pruner: cannot serialise predicate %s (%s)", predicate, e)
        parts = []
    walker = _Walker(set(stats_cols), schema)
    for part, part_expr in parts:
        text = str(part_expr)
        conj_strs.append(text)
        bounds = walker.walk(part, part_expr)
        if not bounds.understood:
            not_understood.append(text)
        facts.append((text, bounds.never_true.fill_null(False), bounds.all_true.fill_null(False)))
        parts_out.append((part_expr, part, bounds.understood))
    if not parts:  # unreadable: one conjunct, not understood, so no block is ever "all"
        not_understood.append(str(predicate))
        parts_out.append((predicate, None, False))
        facts.append((str(predicate), _FALSE, _FALSE))
    return _Compiled(conj_strs, not_understood, facts, parts_out)


def _cached(cache: OrderedDict[Any, Any], key: Any, make: Any) -> Any:
    with _cache_lock:
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
    value = make()
    with _cache_lock:
        cache[key] = value
        while len(cache) > _CACHE_SIZE:
            cache.popitem(last=False)
    return value


def plan(snap: Snapshot, schema: pl.Schema, predicate: pl.Expr | None, *, table: str) -> PruneReport:
    """Decide, from statistics alone, which blocks of ``snap`` a scan must read, and how many of each
    block's rows match: none (skip), all (read without the predicate) or some.

    Both steps are cached: the walk of a predicate (by its serialised form and the table's schema),
    and its verdicts over one statistics frame (frames are immutable: a new block set makes a new
    one), so a query repeated on an unchanged table plans in microseconds.
    """
    infos = snap.blocks
    stats = snap.stats if snap.stats is not None else stats_frame(infos, schema)
    n = len(infos)
    compiled = _Compiled([], [], [], [])
    key: tuple[bytes, tuple[str, ...], str] | None = None
    if predicate is not None and n:
        try:
            key = (predicate.meta.serialize(), tuple(stats.columns), str(schema))
        except Exception:  # not serialisable: compiled every time (and never understood)
            key = None
        if key is None:
            compiled = _compile(predicate, tuple(stats.columns), schema)
        else:
            compiled = _cached(_compiled, key, lambda: _compile(predicate, tuple(stats.columns), schema))
        for text in compiled.not_understood:
            log.debug("pruner: not (wholly) understood, blocks kept where unsure: %s", text)

    def evaluate() -> tuple[pl.DataFrame, Any, dict[Any, Any]]:
        details, all_true = _evaluate(stats, _IDENT, compiled.facts, has_predicate=predicate is not None)
        return details, all_true, {}  # the dict: the reports' shared answers from metadata

    if predicate is None:
        key = (b"", tuple(stats.columns), "")
    if key is not None:
        details, all_true, shared = _cached(_evaluations(stats), key, evaluate)
    else:
        details, all_true, shared = evaluate()
    keep, verdict_list, rows, size = _block_lists(details, shared)
    if len(keep) == n:
        survivors = tuple(infos)
        verdicts = tuple(verdict_list)
    else:
        survivors = tuple(infos[i] for i in keep)
        verdicts = tuple(verdict_list[i] for i in keep)
    rows_total, bytes_total = sum(rows), sum(size)
    if len(keep) == n:
        rows_kept, bytes_kept = rows_total, bytes_total
    else:
        rows_kept = sum(rows[i] for i in keep)
        bytes_kept = sum(size[i] for i in keep)
    return PruneReport(
        table=table,
        predicate=str(predicate) if predicate is not None else None,
        blocks_total=n,
        blocks_pruned=n - len(survivors),
        rows_total=rows_total,
        rows_pruned=rows_total - rows_kept,
        bytes_total=bytes_total,
        bytes_pruned=bytes_total - bytes_kept,
        hot_rows=snap.hot_rows,
        survivors=survivors,
        details=details,
        conjuncts=list(compiled.conjuncts),
        not_understood=list(compiled.not_understood),
        verdicts=verdicts,
        _stats=stats,
        _schema=schema,
        _parts=compiled.parts,
        _all=all_true,
        _cache=shared,
    )


_IDENT = ["block", "first_lsn", "last_lsn", "rows", "bytes"]


class _BlockLists(NamedTuple):
    """The plan's per-block columns as tuples: the blocks scanned (their positions), and per block its
    verdict, rows and bytes."""

    scanned: tuple[int, ...]
    verdicts: tuple[str, ...]
    rows: tuple[int, ...]
    bytes: tuple[int, ...]


def _block_lists(details: pl.DataFrame, shared: dict[Any, Any]) -> _BlockLists:
    """``details``' per-block columns as tuples, made once per evaluation and kept in its shared answers."""
    got: _BlockLists | None = shared.get("lists")
    if got is None:
        scanned = details["scanned"].to_list()
        got = shared["lists"] = _BlockLists(
            tuple(i for i, k in enumerate(scanned) if k),
            tuple(details["verdict"].to_list()),
            tuple(details["rows"].to_list()),
            tuple(details["bytes"].to_list()),
        )
    return got


def _evaluate(
    stats: pl.DataFrame, ident: list[str], facts: list[tuple[str, pl.Expr, pl.Expr]], *, has_predicate: bool
) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """Per block: its identity, the first conjunct that rules it out (``reason``), ``scanned`` and its
    ``verdict``; and per block and conjunct whether every row makes the conjunct true.

    One query over the statistics frame; a conjunct Polars cannot evaluate on
    the statistics (a literal it cannot compare, say) is left out: it keeps
    blocks and is never true for every row.
    """

    def query(fs: list[tuple[str, pl.Expr, pl.Expr]]) -> tuple[pl.DataFrame, pl.DataFrame | None]:
        reason = pl.coalesce(*(pl.when(nt).then(pl.lit(text)) for text, nt, _ in fs)) if fs else pl.lit(None)
        alls = [at.alias(f"all{i}") for i, (_, _, at) in enumerate(fs)]
        out = stats.select(*ident, reason.cast(pl.String).alias("reason"), *alls)
        every = pl.all_horizontal(pl.col(f"all{i}") for i in range(len(fs))) if fs else pl.lit(not has_predicate)
        verdict = (
            pl.when(pl.col("reason").is_not_null())
            .then(pl.lit(NONE))
            .when(every)
            .then(pl.lit(ALL))
            .otherwise(pl.lit(SOME))
        )
        details = out.select(*ident, "reason", pl.col("reason").is_null().alias("scanned"), verdict.alias("verdict"))
        return details, (out.select([f"all{i}" for i in range(len(fs))]) if fs else None)

    try:
        return query(facts)
    except Exception:
        usable = []
        for text, nt, at in facts:
            try:
                stats.select(nt, at)
                usable.append((text, nt, at))
            except Exception as err:
                log.debug("pruner: cannot evaluate %s on statistics (%s); keeping blocks", text, err)
                usable.append((text, _FALSE, _FALSE))
        return query(usable)
