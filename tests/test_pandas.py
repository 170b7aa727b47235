"""pandas round trips: ``pd.testing.assert_frame_equal(df, table.to_pandas())`` with default strictness.

Covers every dtype of the contract (numpy, pandas ``str``/``string``/object strings, nullable, category,
tz-aware and unit-specific datetimes, timedeltas, Arrow-backed), the index rules (default RangeIndex
renumbered across appends, DatetimeIndex as time column, other indexes as columns), persistence of the
metadata across reopen, block boundaries and hot rows, ``to_pandas(where=, columns=)``, column labels,
mixed pandas/Polars appends, rejected inputs (nothing written), and a Hypothesis round-trip property.
"""

from __future__ import annotations

import datetime as dt
import decimal
import itertools
import json
from collections.abc import Callable
from typing import Any

import hypothesis.strategies as st
import numpy as np
import pandas as pd
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings

import bt_frames as bt
from bt_frames._pandas import from_pandas
from bt_frames.storage import catalog
from tests.conftest import make_orders

N = 6
NY = "America/New_York"


def _ts(unit: str = "ns", tz: str | None = None, n: int = N) -> pd.DatetimeIndex:
    idx = pd.DatetimeIndex([f"2024-01-0{1 + i % 9} 09:3{i % 10}:0{i % 7}.123456" for i in range(n)])
    idx = idx.as_unit("ns") if unit == "ns" else idx.floor("s").as_unit(unit)
    return idx.tz_localize(tz) if tz else idx


# name -> a column of N values, with missing values wherever the dtype allows them
COLUMNS: dict[str, Callable[[], Any]] = {
    "int64": lambda: np.arange(N, dtype="int64") * 10**12,
    "int32": lambda: np.arange(N, dtype="int32"),
    "uint8": lambda: np.arange(N, dtype="uint8"),
    "float64_nan": lambda: np.array([1.5, np.nan, -0.0, 3.25, np.inf, 1e300]),
    "float32": lambda: np.array([1.5, np.nan, 2, 3, 4, 5], dtype="float32"),
    "bool": lambda: np.array([True, False] * (N // 2)),
    "str_default": lambda: pd.Series(["a", None, "ccc", "", "é", "z"]),  # pandas 3: dtype "str"
    "object_str_none": lambda: pd.Series(["a", None, "b", "c", "d", "e"], dtype=object),
    "object_str_nan": lambda: pd.Series(["a", np.nan, "b", "c", "d", "e"], dtype=object),
    "string_python": lambda: pd.array(["a", None, "b", "c", "d", "e"], dtype="string[python]"),
    "string_pyarrow": lambda: pd.array(["a", None, "b", "c", "d", "e"], dtype="string[pyarrow]"),
    "datetime_ns": lambda: _ts("ns").insert(1, pd.NaT)[:N],
    "datetime_us": lambda: _ts("us"),
    "datetime_ms": lambda: _ts("ms"),
    "datetime_s": lambda: _ts("s").insert(2, pd.NaT)[:N],
    "datetime_utc": lambda: _ts("ns", "UTC"),
    "datetime_ny": lambda: _ts("ns", NY).insert(0, pd.NaT)[:N],
    "timedelta_ns": lambda: pd.to_timedelta([1, None, 3, 4, 5, 6], unit="s").as_unit("ns"),
    "Int64": lambda: pd.array([1, None, 2**62, -5, 0, None], dtype="Int64"),
    "Int32": lambda: pd.array([1, None, 3, 4, 5, 6], dtype="Int32"),
    "boolean": lambda: pd.array([True, None, False, True, None, False], dtype="boolean"),
    "Float64": lambda: pd.array([1.5, None, 2.5, 3, 4, 5], dtype="Float64"),
    "category": lambda: pd.Categorical(["b", "a", None, "b", "a", "a"], categories=["b", "a", "unused"]),
    "category_ordered": lambda: pd.Categorical(list("lmhlmh"), categories=["l", "m", "h"], ordered=True),
    "category_int": lambda: pd.Categorical([1, 2, None, 1, 2, 3], categories=[3, 2, 1, 0]),
    "arrow_int64": lambda: pd.array([1, None, 3, 4, 5, 6], dtype="int64[pyarrow]"),
    "object_bytes": lambda: pd.Series([b"x", None, b"", b"\x00", b"y", b"z"], dtype=object),
    "object_date": lambda: pd.Series([dt.date(2024, 1, i + 1) for i in range(N)], dtype=object),
    "object_decimal": lambda: pd.Series([decimal.Decimal(f"{i}.25") for i in range(N)], dtype=object),
}


def _frame(*names: str) -> pd.DataFrame:
    return pd.DataFrame({n: COLUMNS[n]() for n in names})


@pytest.fixture
def open_store(bt_store_factory: Callable[..., bt.BacktraceStore]) -> Callable[[], bt.BacktraceStore]:
    """Open (again) the same store folder; the plugin closes every one after the test."""
    return lambda: bt_store_factory("db", durability="none")


# -- every dtype, hot / in blocks / after reopen ------------------------------------


@pytest.mark.parametrize("where", ["hot", "blocks", "reopened"])
@pytest.mark.parametrize("name", list(COLUMNS))
def test_dtype_round_trips_exactly(open_store: Callable[[], bt.BacktraceStore], name: str, where: str) -> None:
    df = _frame(name)
    s = open_store()
    s.append("t", df, max_block_rows=1_000)
    if where == "blocks":
        s["t"].flush()
        assert s["t"].hot_rows == 0
        assert s["t"].cold_rows == N
    if where == "reopened":
        s.close()
        s = open_store()
    pd.testing.assert_frame_equal(s["t"].to_pandas(), df)


def test_all_dtypes_in_one_frame_across_blocks_and_hot_rows(open_store: Callable[[], bt.BacktraceStore]) -> None:
    df = _frame(*COLUMNS)
    s = open_store()
    for _ in range(5):  # 30 rows, blocks of 8 rows: 3 blocks, 6 rows hot
        s.append("t", df, max_block_rows=8)
    t = s["t"]
    assert t.cold_rows > 0
    assert t.hot_rows > 0
    expected = pd.concat([df] * 5, ignore_index=True)
    pd.testing.assert_frame_equal(t.to_pandas(), expected)
    s.close()
    pd.testing.assert_frame_equal(open_store()["t"].to_pandas(), expected)


def test_to_pandas_after_every_input_kind(
    open_store: Callable[[], bt.BacktraceStore], frame_constructor: Callable[[pl.DataFrame], Any]
) -> None:
    src = make_orders(30)
    data = frame_constructor(src)
    s = open_store()
    s.append("orders", data, max_block_rows=16)
    s.append("orders", data)
    expected = pd.concat([data, data], ignore_index=True) if isinstance(data, pd.DataFrame) else None
    if expected is None:  # not pandas: no pandas metadata, Polars' own conversion
        expected = pl.concat([src, src]).to_pandas()
    pd.testing.assert_frame_equal(s["orders"].to_pandas(), expected)


def test_table_json_documents_the_pandas_metadata(open_store: Callable[[], bt.BacktraceStore]) -> None:
    s = open_store()
    df = _frame("int32", "category_ordered", "datetime_ny").set_index(pd.Index([5, 6, 7, 8, 9, 10], name="id"))
    s.append("t", df)
    doc = json.loads((s["t"].path / "table.json").read_text())["pandas"]
    assert doc["version"] == 1
    assert doc["index"] == {
        "kind": "columns",
        "levels": [{"column": "id", "name": "id", "dtype": {"kind": "numpy", "dtype": "int64"}}],
    }
    by_col = {c["column"]: c["dtype"] for c in doc["columns"]}
    assert by_col["int32"] == {"kind": "numpy", "dtype": "int32"}
    assert by_col["category_ordered"]["categories"] == ["l", "m", "h"]
    assert by_col["category_ordered"]["ordered"] is True
    # the exact zone object, restored on read: zoneinfo (pandas 3) or pytz via pandas' own key (pandas 2.2)
    tz_kind = "zoneinfo" if pd.__version__ >= "3" else "pandas"
    assert by_col["datetime_ny"] == {
        "kind": "numpy",
        "dtype": f"datetime64[ns, {NY}]",
        "unit": "ns",
        "tz": {"kind": tz_kind, "key": NY},
    }


# -- index ------------------------------------------------------------------------


def test_default_range_index_is_renumbered_across_appends(open_store: Callable[[], bt.BacktraceStore]) -> None:
    s = open_store()
    parts = [pd.DataFrame({"x": np.arange(i * 7, i * 7 + 7), "s": list("abcdefg")}) for i in range(4)]
    for p in parts:
        s.append("t", p, max_block_rows=10)
    out = s["t"].to_pandas()
    assert isinstance(out.index, pd.RangeIndex)
    assert out.index.equals(pd.RangeIndex(28))
    pd.testing.assert_frame_equal(out, pd.concat(parts, ignore_index=True), check_index_type=True)
    assert s["t"].schema.names() == ["x", "s"]  # no index column stored


@pytest.mark.parametrize("name", [None, "ts"])
@pytest.mark.parametrize("tz", [None, "UTC", NY])
def test_datetime_index_is_the_time_column_and_comes_back(
    open_store: Callable[[], bt.BacktraceStore], name: str | None, tz: str | None
) -> None:
    idx = _ts("ns", tz).rename(name)
    df = pd.DataFrame({"px": np.linspace(1, 2, N), "venue": pd.Categorical(list("xyxyxy"))}, index=idx)
    s = open_store()
    s.append("t", df)
    t = s["t"]
    stored = name or "index"
    assert t.time_column == stored
    assert t.schema[stored] == pl.Datetime("ns", tz)
    out = t.to_pandas()
    pd.testing.assert_frame_equal(out, df)
    assert out.index.name == name
    assert out.index.freq is None
    assert str(out.index.tz) == str(tz)


@pytest.mark.parametrize(
    ("freq", "tz"),
    [("D", None), ("h", "UTC"), ("5min", None), ("B", NY), ("min", None), ("250ms", None)],
)
def test_date_range_index_keeps_its_freq(
    open_store: Callable[[], bt.BacktraceStore], freq: str, tz: str | None
) -> None:
    idx = pd.date_range("2024-01-01", periods=40, freq=freq, name="ts", tz=tz)
    df = pd.DataFrame({"x": range(40)}, index=idx)
    s = open_store()
    s.append("t", df.iloc[:25])
    s.append("t", df.iloc[25:])  # a second append continuing the range keeps it regular
    out = s["t"].to_pandas()
    assert out.index.freqstr == idx.freqstr
    pd.testing.assert_frame_equal(out, df)  # check_freq=True: the default
    s.close()
    reopened = open_store()["t"]
    pd.testing.assert_frame_equal(reopened.to_pandas(), df)
    # a contiguous filtered read still follows the freq (as pandas' own boolean indexing keeps it) ...
    tail = reopened.to_pandas(where=[("ts", ">=", idx[10])])
    pd.testing.assert_frame_equal(tail, df[df.index >= idx[10]])
    assert tail.index.freqstr == idx.freqstr
    # ... one that leaves gaps does not
    gappy = reopened.to_pandas(where=[("x", "not in", [3, 4])])
    assert gappy.index.freq is None
    pd.testing.assert_frame_equal(gappy, df[~df["x"].isin([3, 4])])


def test_timedelta_range_index_keeps_its_freq(open_store: Callable[[], bt.BacktraceStore]) -> None:
    df = pd.DataFrame({"x": range(6)}, index=pd.timedelta_range("0s", periods=6, freq="15s", name="elapsed"))
    s = open_store()
    s.append("t", df)
    pd.testing.assert_frame_equal(s["t"].to_pandas(), df)


def test_index_that_stops_following_its_freq_comes_back_with_freq_none(
    open_store: Callable[[], bt.BacktraceStore],
) -> None:
    df = pd.DataFrame({"x": range(5)}, index=pd.date_range("2024-01-01", periods=5, freq="D", name="ts"))
    later = pd.DataFrame({"x": [9]}, index=pd.DatetimeIndex(["2024-02-01"], name="ts").as_unit(df.index.unit))
    s = open_store()
    s.append("t", df)
    s.append("t", later)  # a gap: the stored index no longer follows "D"
    out = s["t"].to_pandas()
    assert out.index.freq is None
    pd.testing.assert_frame_equal(out, pd.concat([df, later]))
    assert json.loads((s.path / "t" / "table.json").read_text())["pandas"]["index"]["levels"][0]["freq"] == "D"


@pytest.mark.parametrize(
    "index",
    [
        pd.Index([3, 1, 2, 9, 8, 7], dtype="Int64", name="order_id"),
        pd.Index([3, 1, 2, 9, 8, 7], name="order_id"),
        pd.Index(list("fedcba"), name="key"),
        pd.Index(list("fedcba"), dtype=object),
        pd.RangeIndex(0, 12, 2, name="even"),  # named: stored like any other index
        pd.MultiIndex.from_arrays([list("aabbcc"), [1, 2, 1, 2, 1, 2]], names=["sym", "n"]),
        pd.MultiIndex.from_arrays([list("aabbcc"), _ts("us", "UTC")], names=[None, None]),
    ],
    ids=["Int64", "int64", "str", "object", "range_named", "multi", "multi_unnamed"],
)
def test_non_default_index_round_trips(open_store: Callable[[], bt.BacktraceStore], index: pd.Index) -> None:
    df = pd.DataFrame({"v": np.arange(N, dtype="float64")}, index=index)
    s = open_store()
    s.append("t", df, max_block_rows=4)
    s.append("t", df, max_block_rows=4)
    pd.testing.assert_frame_equal(s["t"].to_pandas(), pd.concat([df, df]))


def test_unnamed_range_index_of_a_chunk_is_not_stored(open_store: Callable[[], bt.BacktraceStore]) -> None:
    df = pd.DataFrame({"x": range(10)})
    s = open_store()
    for chunk in (df.iloc[:4], df.iloc[4:7], df.iloc[7:]):  # RangeIndex(0, 4), (4, 7), (7, 10)
        s.append("t", chunk)
    assert s["t"].schema.names() == ["x"]
    pd.testing.assert_frame_equal(s["t"].to_pandas(), df)
    s.append("u", df.iloc[5:])  # a table whose first append is a chunk starts at 0, like ignore_index=True
    pd.testing.assert_frame_equal(s["u"].to_pandas(), df.iloc[5:].reset_index(drop=True))


def test_unnamed_index_is_stored_as_column_index(open_store: Callable[[], bt.BacktraceStore]) -> None:
    s = open_store()
    s.append("t", pd.DataFrame({"v": [1, 2]}, index=pd.Index([10, 20])))
    assert s["t"].schema.names() == ["index", "v"]
    assert s["t"].read()["index"].to_list() == [10, 20]


# -- to_pandas(where=, columns=) ------------------------------------------------------


@pytest.fixture
def ticks(open_store: Callable[[], bt.BacktraceStore]) -> tuple[bt.Table, pd.DataFrame]:
    n = 40
    df = pd.DataFrame(
        {
            "sym": pd.Categorical(["BTC", "ETH", "SOL", "ETH"] * (n // 4), categories=["SOL", "ETH", "BTC", "XRP"]),
            "px": np.arange(n, dtype="float64"),
            "qty": pd.array(range(n), dtype="Int64"),
        },
        index=pd.DatetimeIndex(pd.date_range("2024-01-01", periods=n, freq="h", tz=NY).tolist(), name="ts"),
    )
    s = open_store()
    for i in range(0, n, 10):
        s.append("ticks", df.iloc[i : i + 10], max_block_rows=10)  # 4 blocks of 10 rows
    return s["ticks"], df


def test_to_pandas_where_prunes_like_scan(ticks: tuple[bt.Table, pd.DataFrame]) -> None:
    t, df = ticks
    out = t.to_pandas(where=[("px", ">=", 25.0), ("sym", "==", "ETH")])
    pd.testing.assert_frame_equal(out, df[(df.px >= 25) & (df.sym == "ETH")])
    assert t.last_plan is not None
    assert t.last_plan.blocks_pruned == 2
    out = t.to_pandas(where=pl.col("ts") < pd.Timestamp("2024-01-01 05:00", tz=NY))
    pd.testing.assert_frame_equal(out, df[df.index < pd.Timestamp("2024-01-01 05:00", tz=NY)])


def test_to_pandas_columns_always_restores_the_index(ticks: tuple[bt.Table, pd.DataFrame]) -> None:
    t, df = ticks
    pd.testing.assert_frame_equal(t.to_pandas(columns=["qty", "sym"]), df[["qty", "sym"]])
    pd.testing.assert_frame_equal(t.to_pandas(columns=["ts", "px"]), df[["px"]])  # the index is not a column
    pd.testing.assert_frame_equal(t.to_pandas(columns=[]), df[[]])
    with pytest.raises(bt.SchemaMismatchError, match=r"table 'ticks' has no column 'nope'; its columns are 'ts'"):
        t.to_pandas(columns=["nope"])


def test_to_pandas_where_on_range_index_numbers_the_result(open_store: Callable[[], bt.BacktraceStore]) -> None:
    s = open_store()
    df = pd.DataFrame({"x": range(10), "y": list("abcdeabcde")})
    s.append("t", df)
    out = s["t"].to_pandas(where=pl.col("y") == "b", columns=["x"])
    pd.testing.assert_frame_equal(out, df.loc[df.y == "b", ["x"]].reset_index(drop=True))
    pd.testing.assert_frame_equal(s["t"].to_pandas(columns=[]), df[[]])  # no columns, still 10 rows


# -- column labels ----------------------------------------------------------------------


def test_integer_column_labels_round_trip(open_store: Callable[[], bt.BacktraceStore]) -> None:
    df = pd.DataFrame(np.arange(12).reshape(4, 3))  # RangeIndex columns 0, 1, 2
    s = open_store()
    s.append("t", df)
    assert s["t"].schema.names() == ["0", "1", "2"]
    out = s["t"].to_pandas()
    pd.testing.assert_frame_equal(out, df, check_column_type=True)
    assert isinstance(out.columns, pd.RangeIndex)
    pd.testing.assert_frame_equal(s["t"].to_pandas(columns=[2, "0"]), df[[2, 0]])


def test_columns_index_name_and_mixed_labels_round_trip(open_store: Callable[[], bt.BacktraceStore]) -> None:
    df = pd.DataFrame({"a": [1], 7: [2.0], 1.5: ["x"]})
    df.columns.name = "field"
    s = open_store()
    s.append("t", df)
    pd.testing.assert_frame_equal(s["t"].to_pandas(), df)


@pytest.mark.parametrize(
    ("df", "message"),
    [
        (pd.DataFrame({1: [1], "1": [2]}), r"column '1' and 1 would both be stored as column '1'"),
        (pd.DataFrame({("a", "b"): [1]}), r"MultiIndex columns, .* Fix: flatten them first"),
        (pd.DataFrame([[1]], columns=[("a",)]), r"label \('a',\) \(tuple\) cannot be a column name"),
        (pd.DataFrame([[1, 2]], columns=["a", "a"]), r"column 'a' and 'a' would both be stored as column 'a'"),
        (pd.DataFrame({"index": [1]}, index=pd.Index([5])), r"column 'index' and None would both be stored"),
    ],
    ids=["int_and_str", "multiindex", "tuple", "duplicate", "index_collides"],
)
def test_bad_column_labels_are_rejected_and_nothing_is_written(
    open_store: Callable[[], bt.BacktraceStore], df: pd.DataFrame, message: str
) -> None:
    s = open_store()
    with pytest.raises(bt.SchemaMismatchError, match=message):
        s.append("t", df)
    assert "t" not in s.tables
    s.append("t", pd.DataFrame({"ok": [1]}))
    with pytest.raises(bt.SchemaMismatchError, match=message):
        s.append("t", df)
    assert s["t"].rows == 1
    assert s["t"].wal_state["records"] == 1


# -- unsupported values ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "message"),
    [
        (
            pd.Series([1, "a"], dtype=object),
            r"column 'c': the object values cannot be converted to Arrow \(it mixes int, str\)",
        ),
        (pd.period_range("2024-01", periods=2, freq="M"), r"column 'c': pandas dtype period\[M\] cannot be stored"),
        (pd.interval_range(0, 2), r"column 'c': pandas dtype interval\[int64, right\] cannot be stored"),
        (np.array([1 + 2j, 3j]), r"column 'c': pandas dtype complex128 cannot be stored"),
    ],
    ids=["mixed_object", "period", "interval", "complex"],
)
def test_unstorable_columns_name_the_column_and_write_nothing(
    open_store: Callable[[], bt.BacktraceStore], column: Any, message: str
) -> None:
    s = open_store()
    s.append("t", pd.DataFrame({"c": [1, 2]}))
    with pytest.raises(bt.SchemaMismatchError, match=message) as info:
        s.append("t", pd.DataFrame({"c": column}))
    assert "table 't'" in str(info.value)
    assert "Fix:" in str(info.value)
    assert s["t"].rows == 2
    pd.testing.assert_frame_equal(s["t"].to_pandas(), pd.DataFrame({"c": [1, 2]}))


# -- mixed pandas / Polars appends ------------------------------------------------------------


def test_pandas_then_polars_uses_the_pandas_metadata(open_store: Callable[[], bt.BacktraceStore]) -> None:
    pdf = pd.DataFrame(
        {"n": np.array([1, 2], dtype="int32"), "c": pd.Categorical(["a", "b"], categories=["b", "a"])},
        index=pd.DatetimeIndex(["2024-01-01", "2024-01-02"], name="ts").as_unit("ns"),
    )
    s = open_store()
    s.append("t", pdf)
    t = s["t"]
    assert t.schema.names() == ["ts", "n", "c"]
    assert (t.schema["ts"], t.schema["n"]) == (pl.Datetime("ns"), pl.Int32)
    assert t.schema["c"] == pl.Categorical
    t.append(pl.DataFrame({"ts": [dt.datetime(2024, 1, 3)], "n": [3], "c": ["a"]}))
    expected = pd.concat(
        [pdf, pd.DataFrame({"n": np.array([3], dtype="int32"), "c": pd.Categorical(["a"], categories=["b", "a"])},
                           index=pd.DatetimeIndex(["2024-01-03"], name="ts").as_unit("ns"))]
    )  # fmt: skip
    pd.testing.assert_frame_equal(t.to_pandas(), expected)
    # a null from Polars in an int32 column comes back as <NA> (Int32), a new category is appended
    t.append(pl.DataFrame({"ts": [dt.datetime(2024, 1, 4)], "n": [None], "c": ["new"]}, schema=t.schema))
    out = t.to_pandas()
    assert str(out["n"].dtype) == "Int32"
    assert out["n"].iloc[-1] is pd.NA
    assert list(out["c"].cat.categories) == ["b", "a", "new"]
    assert out["c"].tolist() == ["a", "b", "a", "new"]


def test_polars_then_pandas_first_pandas_metadata_wins(open_store: Callable[[], bt.BacktraceStore]) -> None:
    s = open_store()
    s.append("t", pl.DataFrame({"ts": [dt.datetime(2024, 1, 1)], "qty": [1]}))
    t = s["t"]
    assert t.to_pandas()["qty"].dtype == np.dtype("int64")  # no pandas metadata yet: Polars' to_pandas
    first = pd.DataFrame({"qty": pd.array([2], dtype="Int64")}, index=pd.DatetimeIndex(["2024-01-02"], name="ts"))
    first.bt.append(s, "t")
    second = pd.DataFrame({"qty": np.array([3], dtype="int64")}, index=pd.DatetimeIndex(["2024-01-03"], name="ts"))
    second.bt.append(s, "t")
    out = t.to_pandas()
    assert str(out["qty"].dtype) == "Int64"
    assert out.index.name == "ts"
    assert out["qty"].tolist() == [1, 2, 3]
    s.close()
    assert str(open_store()["t"].to_pandas()["qty"].dtype) == "Int64"


def test_an_empty_pandas_append_records_what_the_table_is(open_store: Callable[[], bt.BacktraceStore]) -> None:
    """Issue 8: an empty frame appended first still says what the table is (dtypes, index, labels), so
    reading the empty table gives the same empty frame back; no row, no WAL record, no LSN."""
    s = open_store()
    empty = pd.DataFrame({"x": pd.array([], dtype="Int64"), "flag": pd.array([], dtype="boolean")})
    assert s.append("t", empty) is None
    assert json.loads((s["t"].path / "table.json").read_text())["pandas"] is not None
    assert s["t"].wal_state["records"] == 0
    pd.testing.assert_frame_equal(s["t"].to_pandas(), empty)


def test_reader_sees_metadata_of_a_later_first_pandas_append(
    bt_store_factory: Callable[..., bt.BacktraceStore],
) -> None:
    w = bt_store_factory("db")
    w.append("t", pl.DataFrame({"x": [1]}))
    r = bt_store_factory("db", read_only=True)
    rt = r["t"]
    w.append("t", pd.DataFrame({"x": [2]}, index=pd.Index(["b"], name="k")).reset_index(drop=True))
    r.refresh()
    pd.testing.assert_frame_equal(rt.to_pandas(), pd.DataFrame({"x": [1, 2]}))


def test_pandas_is_not_needed_for_a_polars_only_table(open_store: Callable[[], bt.BacktraceStore]) -> None:
    s = open_store()
    s.append("t", pl.DataFrame({"x": [1, None]}))
    out = s["t"].to_pandas()  # no metadata: Polars' own conversion
    pd.testing.assert_frame_equal(out, pl.DataFrame({"x": [1, None]}).to_pandas())


# -- property: random pandas frames round trip exactly ------------------------------------------

_STRATEGY_DTYPES = ["int64", "float64", "bool", "str", "object", "Int64", "boolean", "Float64", "category",
                    "datetime64[ns]", "datetime64[us, UTC]", f"datetime64[ns, {NY}]", "timedelta64[ns]"]  # fmt: skip


_STORES = itertools.count()


@st.composite
def pandas_frames(draw: st.DrawFn) -> pd.DataFrame:
    n = draw(st.integers(0, 12))
    ncols = draw(st.integers(1, 4))
    dtypes = draw(st.lists(st.sampled_from(_STRATEGY_DTYPES), min_size=ncols, max_size=ncols))
    cols: dict[str, Any] = {}
    for i, dtype in enumerate(dtypes):
        nullable = dtype not in ("int64", "bool")
        ints = draw(st.lists(st.integers(-(2**40), 2**40), min_size=n, max_size=n))
        nulls = draw(st.lists(st.booleans(), min_size=n, max_size=n)) if nullable else [False] * n
        if dtype in ("int64", "Int64"):
            col: Any = pd.array([None if z else v for v, z in zip(ints, nulls, strict=True)], dtype=dtype)
        elif dtype.startswith(("datetime64", "timedelta64")):
            unit = "ns" if "[ns" in dtype else "us"
            kind = "timedelta64" if dtype.startswith("timedelta") else "datetime64"
            nat = np.iinfo(np.int64).min  # NaT
            raw = np.array([nat if z else v for v, z in zip(ints, nulls, strict=True)], dtype="int64")
            col = pd.Series(raw.view(f"{kind}[{unit}]"))
            if ", " in dtype:
                col = col.dt.tz_localize("UTC").dt.tz_convert(dtype.split(", ")[1][:-1])
        elif dtype in ("float64", "Float64"):
            values = [None if z else v / 7 for v, z in zip(ints, nulls, strict=True)]
            col = pd.array(values, dtype=dtype) if dtype == "Float64" else np.array(values, dtype="float64")
        elif dtype in ("bool", "boolean"):
            values = [None if z else v % 2 == 0 for v, z in zip(ints, nulls, strict=True)]
            col = pd.array(values, dtype=dtype) if dtype == "boolean" else np.array(values, dtype=bool)
        else:
            text = draw(st.lists(st.text(max_size=4), min_size=n, max_size=n))
            values = [None if z else t for t, z in zip(text, nulls, strict=True)]
            if dtype == "category":
                present = [v for v in values if v is not None]
                cats = list(dict.fromkeys([*draw(st.lists(st.text(max_size=2), max_size=3)), *present]))
                col = pd.Categorical(values, categories=cats, ordered=draw(st.booleans()))
            else:
                col = pd.Series(values, dtype=dtype)
        cols[f"c{i}"] = col
    df = pd.DataFrame(cols, index=pd.RangeIndex(n))
    if draw(st.booleans()) and n:
        df.index = pd.Index(draw(st.lists(st.integers(0, 100), min_size=n, max_size=n)), name="k")
    return df


@pytest.mark.hypothesis
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(df=pandas_frames(), split=st.integers(0, 12))
def test_random_pandas_frames_round_trip(bt_store_factory: Callable[..., bt.BacktraceStore], df: pd.DataFrame,
                                         split: int) -> None:  # fmt: skip
    s = bt_store_factory(f"db{next(_STORES)}", durability="none")
    stored, _ = from_pandas(df, table="t")  # no time column: random datetimes may hold NaT
    schema = {c: pl.String if d == pl.Null else d for c, d in stored.schema.items()}
    t = s.create_table("t", schema, time_column=None, max_block_rows=5)
    split = min(split, len(df))
    for part in (df.iloc[:split], df.iloc[split:]):
        t.append(part)
    assert t.rows == len(df)
    if len(df):  # an empty append records no pandas metadata (it changes nothing)
        pd.testing.assert_frame_equal(t.to_pandas(), df)


def test_metadata_that_cannot_be_applied_falls_back_to_polars_conversion(
    open_store: Callable[[], bt.BacktraceStore], caplog: pytest.LogCaptureFixture
) -> None:
    s = open_store()
    s.append("t", pd.DataFrame({"s": ["a", None], "n": [1, 2]}))
    path = s["t"].path / "table.json"
    s.close()
    meta = catalog.TableMeta.load(path)  # rewritten as a writer would (table.json carries a checksum)
    assert meta.pandas is not None
    meta.pandas["columns"][0]["dtype"] = {"kind": "string", "storage": "from-the-future", "na_value": "NA"}
    path.write_text(meta.to_json())
    with caplog.at_level("WARNING", logger="bt_frames"):
        out = open_store()["t"].to_pandas()
    assert out["s"].tolist()[0] == "a"
    assert out["n"].dtype == np.dtype("int64")  # the other columns keep their metadata
    assert "column 's': pandas metadata" in caplog.text
    assert "using Polars' to_pandas" in caplog.text
