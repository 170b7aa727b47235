"""Round trips: what goes in comes back equal, with the exact dtype, across blocks, hot rows and reopening.

DESIGN.md §2 Order: "Round trips compare equal with polars.testing.assert_frame_equal".
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import bt_frames as bt
from tests.conftest import ORDERS_SCHEMA, make_orders
from tests.helpers.procs import listing

# -- one column of every supported dtype -------------------------------------------------------------------------
# Each column is a cycle of values, special ones included (extremes, NaN, inf, -0.0, null, empty, unicode), so
# frames of any length and offset can be built and compared.

_I = {
    pl.Int8: [0, -128, 127, None, -1, 5],
    pl.Int16: [0, -(2**15), 2**15 - 1, None, 7],
    pl.Int32: [0, -(2**31), 2**31 - 1, None, 11],
    pl.Int64: [0, -(2**63), 2**63 - 1, None, 13],
    pl.Int128: [0, -(2**127), 2**127 - 1, None, 17],
    pl.UInt8: [0, 255, None, 1],
    pl.UInt16: [0, 2**16 - 1, None, 2],
    pl.UInt32: [0, 2**32 - 1, None, 3],
    pl.UInt64: [0, 2**64 - 1, None, 4],
    pl.UInt128: [0, 2**128 - 1, None, 5],
}
_FLOATS = [1.5, float("nan"), None, float("inf"), float("-inf"), -0.0, 0.0, 1e308, -2.5e-300]
_NY = "America/New_York"
_INSTANTS = [
    dt.datetime(2024, 3, 10, 6, 59, 59, 999_999),  # UTC instants around the New York DST jumps
    dt.datetime(2024, 3, 10, 7, 0, 0),
    None,
    dt.datetime(2024, 11, 3, 5, 30),
    dt.datetime(2024, 11, 3, 6, 30),
    dt.datetime(1969, 12, 31, 23, 59, 59, 1_000),  # before the epoch
    dt.datetime(2262, 4, 11),  # near the end of the ns range
]


def _datetimes(unit: str, tz: str | None) -> pl.Series:
    s = pl.Series(_INSTANTS, dtype=pl.Datetime(unit)).dt.replace_time_zone("UTC")  # type: ignore[arg-type]
    return s.dt.convert_time_zone(tz) if tz else s.dt.replace_time_zone(None)


COLUMNS: dict[str, Callable[[], pl.Series]] = {
    **{str(d).lower(): (lambda d=d, v=v: pl.Series(v, dtype=d)) for d, v in _I.items()},  # type: ignore[misc]
    "float32": lambda: pl.Series([*_FLOATS[:-2], 3.25e38, -1e-40], dtype=pl.Float32),
    "float64": lambda: pl.Series(_FLOATS, dtype=pl.Float64),
    "boolean": lambda: pl.Series([True, False, None]),
    "string": lambda: pl.Series(["BTC", "", None, "ünïcødé ✓ 日本 🎉", "x" * 300, "a\x00b", "\n"]),
    "categorical": lambda: pl.Series(["BTC", "ETH", None, "ünï", "", "BTC"], dtype=pl.Categorical),
    "enum": lambda: pl.Series(["lo", "hi", None, "mid", "lo"], dtype=pl.Enum(["lo", "mid", "hi"])),
    "date": lambda: pl.Series(
        [dt.date(2024, 2, 29), None, dt.date(1970, 1, 1), dt.date(1, 1, 1), dt.date(9999, 12, 31)]
    ),
    **{
        f"datetime_{unit}_{(tz or 'naive').replace('/', '_')}": (lambda unit=unit, tz=tz: _datetimes(unit, tz))
        for unit in ("ms", "us", "ns")
        for tz in (None, "UTC", _NY)
    },
    **{
        f"duration_{unit}": (
            lambda unit=unit: pl.Series(
                [dt.timedelta(seconds=1), None, dt.timedelta(days=-3), dt.timedelta(0), dt.timedelta(weeks=1000)],
                dtype=pl.Duration(unit),  # type: ignore[arg-type]
            )
        )
        for unit in ("ms", "us", "ns")
    },
    "time": lambda: pl.Series([dt.time(0), dt.time(23, 59, 59, 999_999), None, dt.time(12, 0, 0, 1)]),
    "binary": lambda: pl.Series([b"", b"\x00\xff\x00", None, "ünï".encode(), b"x" * 100]),
    "decimal_10_2": lambda: pl.Series(
        [decimal.Decimal("1.23"), None, decimal.Decimal("-99999999.99"), decimal.Decimal("0.00")],
        dtype=pl.Decimal(10, 2),
    ),
    "decimal_38_9": lambda: pl.Series(
        [decimal.Decimal("12345678901234567890.123456789"), decimal.Decimal("-0.000000001"), None],
        dtype=pl.Decimal(38, 9),
    ),
    "list_int": lambda: pl.Series([[1, 2], [], None, [None], [3, None, 4]], dtype=pl.List(pl.Int64)),
    "list_str": lambda: pl.Series([["a", "ü"], [], None, [None, ""]], dtype=pl.List(pl.String)),
    "array": lambda: pl.Series([[1, 2], None, [3, None]], dtype=pl.Array(pl.Int32, 2)),
    "struct": lambda: pl.Series(
        [{"a": 1, "b": "x", "c": [1.5]}, None, {"a": None, "b": None, "c": None}, {"a": -1, "b": "", "c": []}],
        dtype=pl.Struct({"a": pl.Int64, "b": pl.String, "c": pl.List(pl.Float64)}),
    ),
    "struct_nested": lambda: pl.Series(
        [{"inner": {"ts": dt.datetime(2024, 1, 1), "tags": ["x"]}}, None, {"inner": None}],
        dtype=pl.Struct({"inner": pl.Struct({"ts": pl.Datetime("us", "UTC"), "tags": pl.List(pl.String)})}),
    ),
}

_T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def typed_frame(columns: list[str], n: int, start: int) -> pl.DataFrame:
    """Rows ``start .. start+n`` of a table with a ``ts`` time column and the named columns."""
    idx = pl.int_range(start, start + n, eager=True)
    cols = [(pl.lit(_T0) + pl.duration(seconds=idx)).alias("ts"), idx.alias("i")]
    out = pl.select(cols)
    for name in columns:
        cycle = COLUMNS[name]()
        out = out.with_columns(cycle.gather(idx % len(cycle)).alias(name))
    return out


def _chunks(columns: list[str], sizes: list[int]) -> list[pl.DataFrame]:
    out, start = [], 0
    for n in sizes:
        out.append(typed_frame(columns, n, start))
        start += n
    return out


# Chunk sizes against max_block_rows=20: blocks from freezes, a 2-part and a 1-part direct append, hot rows left.
SIZES = [7, 9, 3, 15, 1, 45, 6, 20, 11, 5]
MBR = 20


@pytest.mark.parametrize("column", list(COLUMNS))
def test_every_dtype_round_trips_through_blocks_hot_rows_and_reopen(store_path: Path, column: str) -> None:
    chunks = _chunks([column], SIZES)
    want = pl.concat(chunks)
    with bt.open(store_path) as store:
        t = store.create_table("t", want.schema, time_column="ts", max_block_rows=MBR)
        for c in chunks:
            assert t.append(c) is not None
        assert t.blocks.height >= 4
        assert 0 < t.hot_rows < MBR
        assert_frame_equal(t.scan().collect(), want)
    with bt.open(store_path) as store:
        t = store.table("t")
        assert t.schema == want.schema  # the exact dtype: unit, zone, categories, precision, nesting
        assert t.recovery.rows_replayed == t.hot_rows > 0
        got = t.scan().collect()
        assert got.schema == want.schema
        assert_frame_equal(got, want)
        # a projection of just this column, and a filter on another one, also keep values and dtype
        assert_frame_equal(t.scan().select(column).collect(), want.select(column))
        assert_frame_equal(t.scan().filter(pl.col("i") % 3 == 0).collect(), want.filter(pl.col("i") % 3 == 0))
        t.flush()  # the replayed hot rows become a block too
    with bt.open(store_path, read_only=True) as store:
        t = store.table("t")
        assert t.hot_rows == 0
        assert_frame_equal(t.scan().collect(), want)


def test_all_dtypes_in_one_table(store_path: Path) -> None:
    cols = list(COLUMNS)
    chunks = _chunks(cols, SIZES)
    want = pl.concat(chunks)
    with bt.open(store_path) as store:
        t = store.create_table("wide", want.schema, time_column="ts", max_block_rows=MBR)
        for c in chunks:
            t.append(c)
    with bt.open(store_path) as store:
        t = store.table("wide")
        assert_frame_equal(t.scan().collect(), want)
        # Nested and decimal/binary columns are stored, not pruned: a filter on them reads every block ...
        for expr in (
            pl.col("list_int").list.len() > 2,
            pl.col("struct").struct.field("a") == -1,
            pl.col("binary") == b"",
            pl.col("decimal_10_2") > decimal.Decimal("1"),
        ):
            report = t.prune(expr)
            assert report.blocks_pruned == 0, report
            # ... and still returns exactly the matching rows.
            assert_frame_equal(t.scan().filter(expr).collect(), want.filter(expr))
        # A prunable column still prunes next to them.
        assert t.prune(pl.col("i") >= 1_000).blocks_pruned == t.blocks.height


# -- the write paths ---------------------------------------------------------------------------------------------


def test_large_append_goes_straight_to_blocks_in_order(store_path: Path) -> None:
    frames = {
        "hot_before": make_orders(30, start=0),
        "big": make_orders(250, start=30),  # >= max_block_rows: 3 parts of 100, 100, 50
        "hot_after": make_orders(40, start=280),
        "exact": make_orders(100, start=320),  # exactly max_block_rows: one part
        "tail": make_orders(7, start=420),
    }
    with bt.open(store_path) as store:
        t = store.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=100)
        lsns = [t.append(f) for f in frames.values()]
        assert lsns == sorted(lsns)
        assert len(set(lsns)) == 5
        blocks = t.blocks.select("first_lsn", "last_lsn", "part", "rows")
        assert blocks.rows() == [
            (lsns[0], lsns[0], 1, 30),  # the hot rows are frozen first, keeping append order
            (lsns[1], lsns[1], 1, 100),
            (lsns[1], lsns[1], 2, 100),
            (lsns[1], lsns[1], 3, 50),
            (lsns[2], lsns[2], 1, 40),
            (lsns[3], lsns[3], 1, 100),
        ]
        assert t.hot_rows == 7
        assert t.wal_state["records"] == 1, "only the small appends go through the WAL"
        assert_frame_equal(t.scan().collect(), pl.concat(frames.values()))
    with bt.open(store_path) as store:
        t = store.table("orders")
        assert t.recovery.records_replayed == 1
        assert_frame_equal(t.scan().collect(), pl.concat(frames.values()))
        assert t.append(make_orders(5, start=427)) == lsns[-1] + 1, "LSNs continue after reopening"


def test_flush_freezes_the_hot_rows(store_path: Path) -> None:
    frames = [make_orders(40, start=i * 40) for i in range(3)]
    with bt.open(store_path) as store:
        t = store.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=1_000)
        assert t.flush() == 0
        assert t.blocks.height == 0, "flushing nothing writes no block"
        for f in frames:
            t.append(f)
        assert t.flush() == 120
        assert (t.hot_rows, t.blocks.height, t.wal_state["records"]) == (0, 1, 0)
        assert t.flush() == 0
        assert t.blocks.height == 1
        t.append(make_orders(5, start=120))
        store.flush()  # the store flushes every open table
        assert t.blocks["rows"].to_list() == [120, 5]
        assert_frame_equal(t.scan().collect(), pl.concat([*frames, make_orders(5, start=120)]))
    with bt.open(store_path) as store:
        t = store.table("orders")
        assert t.recovery.records_replayed == 0
        assert t.hot_rows == 0
        assert_frame_equal(t.scan().collect(), pl.concat([*frames, make_orders(5, start=120)]))


def test_empty_appends_return_none_and_change_nothing(
    store_path: Path, frame_constructor: Callable[[pl.DataFrame], Any]
) -> None:
    with bt.open(store_path) as store:
        t = store.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=100)
        t.append(make_orders(150))  # a block and hot rows
        empty = frame_constructor(make_orders(0))
        if "pandas" in type(empty).__module__:  # the first pandas append records the pandas metadata, once
            assert t.append(frame_constructor(make_orders(0))) is None
        before = (listing(store_path), t.rows, t.hot_rows, t.wal_state, t.blocks)
        assert t.append(empty) is None
        assert store.append("orders", empty) is None
        assert (listing(store_path), t.rows, t.hot_rows, t.wal_state) == before[:4]
        assert_frame_equal(t.blocks, before[4])
        assert t.append(make_orders(3, start=150)) is not None
        assert_frame_equal(t.scan().collect(), pl.concat([make_orders(150), make_orders(3, start=150)]))


def test_drop_table_then_recreate(store_path: Path) -> None:
    with bt.open(store_path) as store:
        t = store.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=50)
        t.append(make_orders(120))
        store.create_table("other", {"x": pl.Int64}).append(pl.DataFrame({"x": [1, 2]}))
        store.drop_table("orders")
        assert store.tables == ["other"]
        assert not (store_path / "orders").exists()
        assert [p.name for p in store_path.iterdir() if p.name.startswith(".")] == []
        with pytest.raises(bt.TableNotFoundError):
            store.table("orders")
        with pytest.raises(bt.StoreClosedError):
            t.append(make_orders(1))
        # Same name, different schema: a new, empty table.
        schema2 = {"ts": pl.Datetime("ns"), "v": pl.Float32}
        t2 = store.create_table("orders", schema2, time_column="ts", max_block_rows=50)
        assert t2.rows == 0
        assert t2.blocks.height == 0
        df = pl.DataFrame({"ts": [dt.datetime(2024, 1, 1)], "v": [1.5]}, schema=schema2)
        t2.append(df)
    with bt.open(store_path) as store:
        assert store.tables == ["orders", "other"]
        assert_frame_equal(store.table("orders").scan().collect(), df)
        assert store.table("other").rows == 2
        store.drop_table("orders")
        store.append("orders", make_orders(10))  # recreated implicitly from the frame
        assert_frame_equal(store.table("orders").scan().collect(), make_orders(10))


def test_store_append_creates_the_table_from_the_frame(store_path: Path) -> None:
    cols = ["string", "int32", "datetime_ns_America_New_York", "list_int"]
    df = typed_frame(cols, 30, 0)
    with bt.open(store_path) as store:
        lsn = store.append("auto", df)
        assert isinstance(lsn, int)
        t = store.table("auto")
        assert t.schema == df.schema
        assert t.time_column == "ts", "the first datetime column is the time column"
        assert store.append("auto", typed_frame(cols, 5, 30))
    with bt.open(store_path) as store:
        t = store.table("auto")
        assert_frame_equal(t.scan().collect(), typed_frame(cols, 35, 0))


def test_create_table_on_an_existing_table_with_the_same_schema_opens_it(store_path: Path) -> None:
    with bt.open(store_path) as store:
        t = store.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=100)
        data = pl.concat([make_orders(60), make_orders(70, start=60)])
        t.append(data[:60])
        t.append(data[60:])  # freezes the first 60 rows; 70 stay hot
        again = store.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=100)
        assert again is t
        assert_frame_equal(again.scan().collect(), data)
    with bt.open(store_path) as store:
        t = store.create_table("orders", dict(ORDERS_SCHEMA), time_column="ts", max_block_rows=100)
        assert t.rows == 130
        assert t.hot_rows == 70
        assert_frame_equal(t.scan().collect(), data)
        with pytest.raises(bt.SchemaMismatchError, match="qty"):
            store.create_table("orders", {**ORDERS_SCHEMA, "qty": pl.Int32}, time_column="ts")
        assert_frame_equal(t.scan().collect(), data)


# -- every input kind --------------------------------------------------------------------------------------------


def test_orders_round_trip_from_every_input_kind(
    store_path: Path, frame_constructor: Callable[[pl.DataFrame], Any]
) -> None:
    sizes = [60, 70, 250, 15, 99]  # max_block_rows 100: freezes, a 3-part direct append, hot rows
    frames, start = [], 0
    for n in sizes:
        frames.append(make_orders(n, start=start))
        start += n
    with bt.open(store_path) as store:
        t = store.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=100)
        for f in frames:
            assert t.append(frame_constructor(f)) is not None
        assert t.hot_rows > 0
        assert t.blocks.height >= 4
        assert_frame_equal(t.scan().collect(), pl.concat(frames))
    with bt.open(store_path) as store:
        t = store.table("orders")
        assert t.schema == pl.Schema(ORDERS_SCHEMA)
        assert_frame_equal(t.scan().collect(), pl.concat(frames))
