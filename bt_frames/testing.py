"""Test helpers: compare a table (or a query result) with the frame you expect, and say *how* they differ.

>>> from bt_frames.testing import assert_table_equal
>>> assert_table_equal(store["orders"], expected_df)  # doctest: +SKIP

The verdict is the one of ``polars.testing.assert_frame_equal`` (or, for a
pandas expectation, ``pandas.testing.assert_frame_equal``); on failure the
message starts with bt_frames' own explanation — row counts, missing/extra
columns, dtype differences and the first differing rows — followed by that
library's message.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import polars as pl
import polars.testing

from bt_frames.errors import BtError
from bt_frames.table import Table

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["TableAssertionError", "assert_table_equal"]

MAX_ROWS_SHOWN = 5
MAX_LIB_LINES = 8


class TableAssertionError(BtError, AssertionError):
    """A table (or frame) is not equal to the expected frame; the message explains the difference."""


def _is_pandas(obj: object) -> bool:
    pd = sys.modules.get("pandas")
    return pd is not None and isinstance(obj, pd.DataFrame)


def _to_polars(obj: object, role: str) -> pl.DataFrame:
    if isinstance(obj, Table):
        return obj.read()
    if isinstance(obj, pl.LazyFrame):
        return obj.collect()
    if isinstance(obj, pl.DataFrame):
        return obj
    if _is_pandas(obj):
        from bt_frames import _pandas

        return _pandas.from_pandas(obj, table=role)[0]  # type: ignore[arg-type]
    pa = sys.modules.get("pyarrow")
    if pa is not None and isinstance(obj, (pa.Table, pa.RecordBatch)):
        out = pl.from_arrow(obj)
        assert isinstance(out, pl.DataFrame)
        return out
    raise TypeError(
        f"assert_table_equal: the {role} must be a bt_frames Table, a Polars DataFrame/LazyFrame, a pandas "
        f"DataFrame or a pyarrow Table, not {type(obj).__module__}.{type(obj).__qualname__}"
    )


def assert_table_equal(
    actual: Table | pl.DataFrame | pl.LazyFrame | pd.DataFrame,
    expected: pl.DataFrame | pl.LazyFrame | pd.DataFrame | Any,
    *,
    check_order: bool = True,
    check_dtypes: bool = True,
    check_column_order: bool = True,
    check_exact: bool = False,
    rtol: float = 1e-5,
    atol: float = 1e-8,
) -> None:
    """Assert that a table (or a query result) holds exactly the rows of ``expected``.

    Parameters
    ----------
    actual
        A :class:`~bt_frames.Table` (all its rows, in append order), or a
        query result: a Polars ``DataFrame``/``LazyFrame`` (collected) or a
        pandas ``DataFrame``.
    expected
        A Polars or pandas ``DataFrame`` (a ``LazyFrame`` or pyarrow ``Table``
        works too). With a pandas frame and a ``Table``, the table is read
        with :meth:`~bt_frames.Table.to_pandas` and compared the pandas way:
        index, dtypes and column labels included. Otherwise both sides are
        compared as Polars frames (a pandas side converted as an append
        would store it: a non-default index becomes column(s)).
    check_order
        Compare rows in order. ``False`` compares the rows as multisets
        (both sides sorted by all columns).
    check_dtypes
        Require identical dtypes (otherwise values are compared after casting).
    check_column_order
        Require the same column order (otherwise only the same set).
    check_exact, rtol, atol
        Floats: exact, or equal within ``atol + rtol * |expected|``.

    Raises
    ------
    TableAssertionError
        (an ``AssertionError`` and a ``bt_frames.BtError``) explaining the
        difference: row counts, missing/extra columns, dtypes and the first
        differing rows.

    Examples
    --------
    >>> orders.append(pl.DataFrame({"ts": [t0], "qty": [5]}))  # doctest: +SKIP
    >>> assert_table_equal(orders, pl.DataFrame({"ts": [t0], "qty": [6]}))  # doctest: +SKIP
    TableAssertionError: table 'orders' differs from the expected frame
      1 of 1 compared rows differ; the first:
        row  column  table  expected
        0    qty     5      6
    """
    __tracebackhide__ = True
    what = f"table {actual.name!r}" if isinstance(actual, Table) else "the frame"
    if _is_pandas(expected) and (isinstance(actual, Table) or _is_pandas(actual)):
        left: Any = actual.to_pandas() if isinstance(actual, Table) else actual
        _assert_pandas(
            left, cast("pd.DataFrame", expected), what, check_order=check_order, check_dtypes=check_dtypes,
            check_column_order=check_column_order, check_exact=check_exact, rtol=rtol, atol=atol,
        )  # fmt: skip
        return
    a = _to_polars(actual, "actual frame")
    e = _to_polars(expected, "expected frame")
    explanation = _explain(a, e, check_order=check_order, check_dtypes=check_dtypes,
                           check_column_order=check_column_order, check_exact=check_exact,
                           rtol=rtol, atol=atol)  # fmt: skip
    try:
        polars.testing.assert_frame_equal(
            a, e, check_row_order=check_order, check_column_order=check_column_order,
            check_dtypes=check_dtypes, **_polars_tolerances(check_exact, rtol, atol),
        )  # fmt: skip
    except AssertionError as err:
        raise TableAssertionError(_message(what, explanation, "polars.testing", err)) from None
    except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError) as err:  # e.g. unsortable dtypes
        if explanation:
            raise TableAssertionError(_message(what, explanation, "polars.testing", err)) from None
        raise


def _polars_tolerances(check_exact: bool, rtol: float, atol: float) -> dict[str, Any]:
    """Polars 1.32.3 renamed ``rtol``/``atol`` to ``rel_tol``/``abs_tol`` (the old names warn)."""
    params = inspect.signature(polars.testing.assert_frame_equal).parameters
    if "rel_tol" in params:
        return {"check_exact": check_exact, "rel_tol": rtol, "abs_tol": atol}
    return {"check_exact": check_exact, "rtol": rtol, "atol": atol}  # pragma: no cover - polars < 1.32.3


def _message(what: str, explanation: list[str], lib: str, err: BaseException) -> str:
    lines = [f"{what} differs from the expected frame"]
    lines += [f"  {line}" for line in explanation]
    detail = str(err).strip().splitlines()
    if detail:
        if len(detail) > MAX_LIB_LINES:
            detail = [*detail[:MAX_LIB_LINES], f"... ({len(detail) - MAX_LIB_LINES} more lines)"]
        lines.append(f"{lib} says: " + "\n  ".join(detail))
    return "\n".join(lines)


def _grid(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]


def _show(v: object, limit: int = 40) -> str:
    text = repr(v) if isinstance(v, str) else str(v)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _explain(
    a: pl.DataFrame,
    e: pl.DataFrame,
    *,
    check_order: bool,
    check_dtypes: bool,
    check_column_order: bool,
    check_exact: bool,
    rtol: float,
    atol: float,
) -> list[str]:
    """Human-readable differences between two Polars frames (empty if none were found)."""
    out: list[str] = []
    if a.height != e.height:
        out.append(f"rows: {a.height:,} in the table, {e.height:,} expected")
    missing = [c for c in e.columns if c not in a.columns]
    extra = [c for c in a.columns if c not in e.columns]
    if missing:
        out.append("columns missing from the table: " + ", ".join(map(repr, missing)))
    if extra:
        out.append("columns not expected: " + ", ".join(map(repr, extra)))
    common = [c for c in e.columns if c in a.columns]
    if check_column_order and not missing and not extra and a.columns != e.columns:
        out.append(f"column order: table {a.columns}, expected {e.columns}")
    if check_dtypes:
        diff = [(c, str(a.schema[c]), str(e.schema[c])) for c in common if a.schema[c] != e.schema[c]]
        if diff:
            out.append("dtypes that differ:")
            out += _grid(("column", "table", "expected"), diff)
    if not common:
        return out
    try:
        out += _value_differences(a.select(common), e.select(common), check_order, check_exact, rtol, atol)
    except pl.exceptions.PolarsError as err:  # an exotic dtype: the library's verdict still applies
        out.append(f"(rows not compared: {err.__class__.__name__})")
    return out


def _comparable(a: pl.Series, e: pl.Series) -> tuple[pl.Series, pl.Series]:
    if isinstance(a.dtype, (pl.Categorical, pl.Enum)):
        a = a.cast(pl.String)
    if isinstance(e.dtype, (pl.Categorical, pl.Enum)):
        e = e.cast(pl.String)
    if a.dtype == e.dtype:
        return a, e
    if a.dtype.is_numeric() and e.dtype.is_numeric():
        return a.cast(pl.Float64), e.cast(pl.Float64)
    try:
        return a, e.cast(a.dtype, strict=True)
    except pl.exceptions.PolarsError:
        return a.cast(pl.String, strict=False), e.cast(pl.String, strict=False)


def _differs(a: pl.Series, e: pl.Series, check_exact: bool, rtol: float, atol: float) -> pl.Series:
    a, e = _comparable(a, e)
    if a.dtype.is_float():
        both_nan = (a.is_nan() & e.is_nan()).fill_null(False)
        if check_exact:
            close = a.eq_missing(e)
        else:
            close = ((a - e).abs() <= atol + rtol * e.abs()).fill_null(False) | a.eq_missing(e)
        return ~(close | both_nan)
    return ~a.eq_missing(e)


def _value_differences(
    a: pl.DataFrame, e: pl.DataFrame, check_order: bool, check_exact: bool, rtol: float, atol: float
) -> list[str]:
    if not check_order:
        return _multiset_differences(a, e)
    n = min(a.height, e.height)
    if n == 0:
        return []
    a, e = a.head(n), e.head(n)
    masks = {c: _differs(a.get_column(c), e.get_column(c), check_exact, rtol, atol) for c in a.columns}
    any_row = pl.Series([False] * n)
    for m in masks.values():
        any_row = any_row | m
    bad = any_row.arg_true()
    if bad.len() == 0:
        return []
    shown: list[tuple[str, str, str, str]] = []
    for i in bad.head(MAX_ROWS_SHOWN).to_list():
        for c, m in masks.items():
            if m[i]:
                shown.append((str(i), c, _show(a.get_column(c)[i]), _show(e.get_column(c)[i])))
    first = "the first" if bad.len() == 1 else f"the first {min(bad.len(), MAX_ROWS_SHOWN)}"
    head = f"{bad.len():,} of {n:,} compared rows differ; {first}:"
    return [head, *_grid(("row", "column", "table", "expected"), shown)]


def _multiset_differences(a: pl.DataFrame, e: pl.DataFrame) -> list[str]:
    """Rows present more often on one side than on the other (exact comparison, ignoring order)."""
    cols = a.columns
    a = a.with_columns(pl.col(pl.Categorical, pl.Enum).cast(pl.String))
    e = e.with_columns(pl.col(pl.Categorical, pl.Enum).cast(pl.String)).cast(dict(a.schema), strict=False)  # type: ignore[arg-type]
    ca = a.group_by(cols).agg(pl.len().alias("_bt_n_table"))
    ce = e.group_by(cols).agg(pl.len().alias("_bt_n_expected"))
    j = ca.join(ce, on=cols, how="full", coalesce=True, nulls_equal=True).fill_null(0)
    only_a = j.filter(pl.col("_bt_n_table") > pl.col("_bt_n_expected"))
    only_e = j.filter(pl.col("_bt_n_expected") > pl.col("_bt_n_table"))
    out: list[str] = []
    for label, part, n_more, n_less in (
        ("rows in the table but not expected", only_a, "_bt_n_table", "_bt_n_expected"),
        ("expected rows missing from the table", only_e, "_bt_n_expected", "_bt_n_table"),
    ):
        if part.height == 0:
            continue
        count = int(part.select((pl.col(n_more) - pl.col(n_less)).sum()).item())
        out.append(f"{count:,} {label} (ignoring order); the first:")
        rows = [
            (*(_show(r[c]) for c in cols), str(r[n_more] - r[n_less]))
            for r in part.sort(cols, nulls_last=True).head(MAX_ROWS_SHOWN).iter_rows(named=True)
        ]
        out += _grid((*cols, "times"), rows)
    return out


# -- pandas ----------------------------------------------------------------------


def _index_summary(idx: pd.Index) -> str:
    kind = type(idx).__name__
    if kind == "RangeIndex":
        return f"RangeIndex(start={idx.start}, stop={idx.stop}, step={idx.step}, name={idx.name!r})"  # type: ignore[attr-defined]
    return f"{kind}(dtype={idx.dtype}, name={idx.name!r}, nlevels={idx.nlevels})"


def _assert_pandas(
    a: pd.DataFrame,
    e: pd.DataFrame,
    what: str,
    *,
    check_order: bool,
    check_dtypes: bool,
    check_column_order: bool,
    check_exact: bool,
    rtol: float,
    atol: float,
) -> None:
    __tracebackhide__ = True
    import pandas as pd

    from bt_frames import _pandas

    explanation: list[str] = []
    if check_dtypes:
        ia, ie = a.index, e.index
        both_range = isinstance(ia, pd.RangeIndex) and isinstance(ie, pd.RangeIndex)
        if not both_range and (type(ia) is not type(ie) or ia.dtype != ie.dtype or ia.names != ie.names):
            explanation.append(f"index: table {_index_summary(ia)}, expected {_index_summary(ie)}")
        diff = [
            (str(c), str(a[c].dtype), str(e[c].dtype))
            for c in e.columns
            if c in a.columns and a.columns.is_unique and e.columns.is_unique and a[c].dtype != e[c].dtype
        ]
        if diff:
            explanation.append("dtypes that differ:")
            explanation += _grid(("column", "table", "expected"), diff)
    pa_: pl.DataFrame | None = None
    pe: pl.DataFrame | None = None
    try:
        pa_, pe = (_pandas.from_pandas(x, table="frame")[0] for x in (a, e))
        explanation += _explain(pa_, pe, check_order=check_order, check_dtypes=False,
                                check_column_order=check_column_order, check_exact=check_exact,
                                rtol=rtol, atol=atol)  # fmt: skip
    except BtError:  # a frame bt_frames could not store: pandas' own message has to do
        pass
    if not check_order:
        if pa_ is None or pe is None:
            raise TypeError("assert_table_equal(check_order=False) needs frames bt_frames can store")
        if explanation:
            raise TableAssertionError(_message(what, explanation, "pandas.testing", AssertionError()))
        try:
            polars.testing.assert_frame_equal(
                pa_, pe, check_row_order=False, check_column_order=check_column_order,
                check_dtypes=False, **_polars_tolerances(check_exact, rtol, atol),
            )  # fmt: skip
        except AssertionError as err:
            raise TableAssertionError(_message(what, explanation, "polars.testing", err)) from None
        return
    try:
        pd.testing.assert_frame_equal(
            a, e, check_dtype=check_dtypes, check_index_type="equiv" if check_dtypes else False,
            check_column_type="equiv" if check_dtypes else False, check_like=not check_column_order,
            check_exact=check_exact, rtol=rtol, atol=atol,
        )  # fmt: skip
    except AssertionError as err:
        raise TableAssertionError(_message(what, explanation, "pandas.testing", err)) from None
