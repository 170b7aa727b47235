"""Bad input: a clear BtError naming the table, the column and the fix; nothing stored is changed; still writable.

DESIGN.md §2 "Bad input" and "Atomicity"; sqlite-utils' test_atomic.py pattern: capture the state, fail, compare,
then append something good and read it back.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pytest
from polars.testing import assert_frame_equal

import bt_frames as bt
from tests.conftest import ORDERS_SCHEMA, make_orders
from tests.helpers.procs import listing


def state(table: bt.Table) -> dict[str, Any]:
    """Everything an append could change: blocks, row counts, WAL state, contents and the files on disk."""
    return {
        "blocks": table.blocks,
        "rows": table.rows,
        "hot_rows": table.hot_rows,
        "wal_state": table.wal_state,
        "contents": table.scan().collect(),
        "files": listing(table.path),
    }


def assert_same_state(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert before.keys() == after.keys()
    for key in before:
        if isinstance(before[key], pl.DataFrame):
            assert_frame_equal(after[key], before[key])
        else:
            assert after[key] == before[key], key


@pytest.fixture
def store(tmp_path: Path) -> Iterator[bt.BacktraceStore]:
    with bt.open(tmp_path / "db") as s:
        yield s


@pytest.fixture
def filled(store: bt.BacktraceStore) -> tuple[bt.Table, pl.DataFrame]:
    """'orders' with two blocks (a multi-part append) and 30 hot rows in the WAL."""
    t = store.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=100)
    data = make_orders(180)
    t.append(data.head(150))
    t.append(data.tail(30))
    assert (len(t.blocks), t.hot_rows) == (2, 30)
    return t, data


def good_frame() -> pl.DataFrame:
    return make_orders(7, start=10_000)


def assert_still_writable(t: bt.Table, data: pl.DataFrame) -> None:
    lsn = t.append(good_frame())
    assert isinstance(lsn, int)
    expected = pl.concat([data, good_frame()])
    assert_frame_equal(t.scan().collect(), expected)
    t.store.close()
    with bt.open(t.store.path) as again:  # and durable: a reopen replays it
        assert_frame_equal(again.table(t.name).scan().collect(), expected)


def _null_ts(df: pl.DataFrame) -> pl.DataFrame:
    return df.with_columns(pl.when(pl.int_range(pl.len()) == 2).then(None).otherwise(pl.col("ts")).alias("ts"))


# id -> (make the bad frame from a good one, the column named, the exact "problem" text for it)
SCHEMA_CASES: dict[str, tuple[Callable[[pl.DataFrame], Any], str, str]] = {
    "missing column": (lambda df: df.drop("qty"), "qty", "missing from the frame"),
    "extra column": (lambda df: df.with_columns(fee=pl.lit(0.1)), "fee", "not in the table"),
    "renamed column": (lambda df: df.rename({"price": "px"}), "price", "missing from the frame"),
    "float -> int (fractional)": (
        lambda df: df.with_columns(pl.col("qty") + 0.5),
        "qty",
        "incompatible types; convert the column first",
    ),
    "float -> int (integral values)": (
        lambda df: df.with_columns(pl.col("qty").cast(pl.Float64)),
        "qty",
        "incompatible types; convert the column first",
    ),
    "string -> int": (
        lambda df: df.with_columns(pl.col("qty").cast(pl.String)),
        "qty",
        "incompatible types; convert the column first",
    ),
    "int -> string": (
        lambda df: df.with_columns(pl.col("symbol").str.len_bytes().cast(pl.Int64)),
        "symbol",
        "incompatible types; convert the column first",
    ),
    "bool -> float": (
        lambda df: df.with_columns(pl.col("price") > 1),
        "price",
        "incompatible types; convert the column first",
    ),
    "time column as string": (
        lambda df: df.with_columns(pl.col("ts").dt.to_string()),
        "ts",
        "incompatible types; convert the column first",
    ),
    "time column as integer": (
        lambda df: df.with_columns(pl.col("ts").dt.epoch("us")),
        "ts",
        "incompatible types; convert the column first",
    ),
    "naive time column": (
        lambda df: df.with_columns(pl.col("ts").dt.replace_time_zone(None)),
        "ts",
        "naive timestamps; say which zone, e.g. .dt.replace_time_zone('UTC')",
    ),
    "time column with sub-microsecond part": (
        lambda df: df.with_columns(pl.col("ts").cast(pl.Datetime("ns", "UTC")) + pl.duration(nanoseconds=1)),
        "ts",
        "would change values",
    ),
}


@pytest.mark.parametrize("case", list(SCHEMA_CASES))
@pytest.mark.parametrize("via", ["table.append", "store.append"])
def test_schema_mismatch_names_table_column_and_fix_and_changes_nothing(
    filled: tuple[bt.Table, pl.DataFrame], case: str, via: str
) -> None:
    t, data = filled
    make, column, problem = SCHEMA_CASES[case]
    bad = make(good_frame())
    before = state(t)
    append = t.append if via == "table.append" else lambda df: t.store.append("orders", df)
    with pytest.raises(bt.SchemaMismatchError) as exc:
        append(bad)
    err = exc.value
    assert isinstance(err, bt.BtError)
    assert isinstance(err, ValueError)
    assert err.table == "orders"
    assert column in err.columns
    msg = str(err)
    assert msg.startswith("table 'orders': the frame does not match the table schema\n")
    (line,) = [ln for ln in msg.splitlines() if ln.split()[:1] == [column]]
    assert problem in line
    assert msg.endswith(
        "Fix: give the frame exactly the table's columns with convertible types (see the problem column), "
        "or append to a new table."
    )
    assert_same_state(before, state(t))
    assert_still_writable(t, data)


SCHEMA_MISMATCH_MESSAGE = """\
table 'orders': the frame does not match the table schema
  column  table                                      frame                                      problem
  ts      Datetime(time_unit='us', time_zone='UTC')  Datetime(time_unit='us', time_zone='UTC')  ok
  symbol  String                                     String                                     ok
  price   Float64                                    String                                     incompatible types; convert the column first
  qty     Int64                                      -                                          missing from the frame
  fee     -                                          Float64                                    not in the table
Schema evolution is explicit: to add new columns or widen types (fee), append with schema_mode="merge", or call table.add_columns({...}) first.
Fix: give the frame exactly the table's columns with convertible types (see the problem column), or append to a new table."""  # noqa: E501


def test_schema_mismatch_full_message_is_pinned(filled: tuple[bt.Table, pl.DataFrame]) -> None:
    t, data = filled
    bad = good_frame().drop("qty").with_columns(pl.col("price").cast(pl.String), fee=pl.lit(1.5))
    before = state(t)
    with pytest.raises(bt.SchemaMismatchError) as exc:
        t.append(bad)
    assert str(exc.value) == SCHEMA_MISMATCH_MESSAGE
    assert exc.value.columns == ("price", "qty", "fee")
    assert_same_state(before, state(t))
    assert_still_writable(t, data)


def test_lossy_int64_to_int32_is_rejected_with_the_first_bad_value(store: bt.BacktraceStore) -> None:
    t = store.create_table("counts", {"ts": pl.Int64, "n": pl.Int32}, time_column="ts")
    t.append(pl.DataFrame({"ts": [1, 2], "n": [5, 6]}, schema=t.schema))
    before = state(t)
    with pytest.raises(bt.SchemaMismatchError) as exc:
        t.append(pl.DataFrame({"ts": [3, 4, 5], "n": [7, 2**31, -(2**40)]}))
    assert str(exc.value) == (
        "table 'counts': the frame does not match the table schema\n"
        "  column  table  frame  problem\n"
        "  ts      Int64  Int64  ok\n"
        "  n       Int32  Int64  would change values, e.g. 2147483648 at row 1\n"
        "Schema evolution is explicit: to add new columns or widen types (n), append with "
        'schema_mode="merge", or call table.add_columns({...}) first.\n'
        "Fix: give the frame exactly the table's columns with convertible types (see the problem column), "
        "or append to a new table."
    )
    assert_same_state(before, state(t))
    assert t.append(pl.DataFrame({"ts": [3], "n": [2**31 - 1]})) == 2  # Int64 values that fit are accepted
    assert t.scan().collect()["n"].to_list() == [5, 6, 2**31 - 1]
    assert t.schema["n"] == pl.Int32


def test_float64_to_float32_loss_is_rejected(store: bt.BacktraceStore) -> None:
    t = store.create_table("f", {"ts": pl.Int64, "x": pl.Float32}, time_column="ts")
    with pytest.raises(bt.SchemaMismatchError, match=r"x\s+Float32\s+Float64\s+would change values, e.g. 0.1 at row 0"):
        t.append(pl.DataFrame({"ts": [1], "x": [0.1]}))
    assert t.append(pl.DataFrame({"ts": [1], "x": [0.5]})) == 1  # exactly representable: fine
    assert t.rows == 1


@pytest.mark.parametrize("null_row", [0, 2, 6])
def test_null_in_the_time_column_is_rejected_naming_the_row(
    filled: tuple[bt.Table, pl.DataFrame], null_row: int
) -> None:
    t, data = filled
    bad = good_frame().with_columns(
        pl.when(pl.int_range(pl.len()).is_in([null_row, 6])).then(None).otherwise(pl.col("ts")).alias("ts")
    )
    before = state(t)
    with pytest.raises(bt.SchemaMismatchError) as exc:
        t.append(bad)
    nulls = 1 if null_row == 6 else 2
    assert str(exc.value) == (
        f"table 'orders', column 'ts': the time column has {nulls} null value(s) (first at row {null_row}). "
        "Fix: drop or fill those rows before appending."
    )
    assert exc.value.columns == ("ts",)
    assert_same_state(before, state(t))
    assert_still_writable(t, data)


def test_null_time_column_from_pandas_nat(filled: tuple[bt.Table, pl.DataFrame]) -> None:
    t, data = filled
    pdf = good_frame().to_pandas()
    pdf.loc[3, "ts"] = pd.NaT
    before = state(t)
    with pytest.raises(
        bt.SchemaMismatchError, match=r"column 'ts': the time column has 1 null value\(s\) \(first at row 3\)"
    ):
        t.append(pdf)
    assert_same_state(before, state(t))
    assert_still_writable(t, data)


def test_nulls_in_other_columns_are_fine(filled: tuple[bt.Table, pl.DataFrame]) -> None:
    t, data = filled
    frame = good_frame().with_columns(pl.lit(None, dtype=pl.Float64).alias("price"))
    assert t.append(frame) is not None
    assert_frame_equal(t.scan().collect(), pl.concat([data, frame]))


# -- not a frame at all ------------------------------------------------------------------------------------------------

NOT_FRAMES: dict[str, Callable[[], Any]] = {
    "LazyFrame": lambda: good_frame().lazy(),
    "list of dicts": lambda: good_frame().to_dicts(),
    "dict of lists": lambda: good_frame().to_dict(as_series=False),
    "None": lambda: None,
    "numpy array": lambda: np.zeros((3, 4)),
    "pandas Series (has __arrow_c_stream__)": lambda: good_frame().to_pandas()["qty"],
    "pyarrow Array": lambda: good_frame()["qty"].to_arrow(),
    "string": lambda: "orders.csv",
}


@pytest.mark.parametrize("kind", list(NOT_FRAMES))
def test_unsupported_input_is_a_typeerror_naming_the_table(filled: tuple[bt.Table, pl.DataFrame], kind: str) -> None:
    t, data = filled
    before = state(t)
    for append in (t.append, lambda x: t.store.append("orders", x)):
        with pytest.raises(bt.UnsupportedInputError) as exc:
            append(NOT_FRAMES[kind]())
        assert isinstance(exc.value, bt.BtError)
        assert isinstance(exc.value, TypeError)
        msg = str(exc.value)
        assert msg.startswith("table 'orders': ")
        if kind == "LazyFrame":
            assert "call .collect() first" in msg
        else:
            assert "pass a polars.DataFrame, pandas.DataFrame, pyarrow.Table/RecordBatch or an Arrow C stream" in msg
    assert_same_state(before, state(t))
    assert_still_writable(t, data)


def test_unsupported_input_does_not_create_a_table(store: bt.BacktraceStore) -> None:
    with pytest.raises(bt.UnsupportedInputError):
        store.append("new_table", [{"ts": 1}])
    assert store.tables == []
    assert sorted(p.name for p in store.path.iterdir()) == ["LOCK", "bt_frames.json"]


# -- table names -------------------------------------------------------------------------------------------------------

BAD_NAMES = ["", "..", "../orders", "orders/../../etc", "/tmp/x", ".hidden", "a b", "ordérs", "x" * 129]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_invalid_table_names_are_refused_everywhere_before_touching_disk(
    filled: tuple[bt.Table, pl.DataFrame], name: str
) -> None:
    t, data = filled
    store = t.store
    files = listing(store.path.parent)
    calls: list[Callable[[], object]] = [
        lambda: store.append(name, good_frame()),
        lambda: store.create_table(name, ORDERS_SCHEMA, time_column="ts"),
        lambda: store.table(name),
        lambda: store[name],
        lambda: store.drop_table(name),
    ]
    for call in calls:
        with pytest.raises(bt.InvalidTableNameError) as exc:
            call()
        assert isinstance(exc.value, bt.BtError)
        assert repr(name) in str(exc.value)
        assert "Fix: use a name like 'orders'" in str(exc.value)
    assert name not in store
    assert listing(store.path.parent) == files
    assert_still_writable(t, data)


# -- closed and read-only stores ---------------------------------------------------------------------------------------


def test_appending_to_a_closed_store_is_refused(filled: tuple[bt.Table, pl.DataFrame]) -> None:
    t, data = filled
    store = t.store
    store.close()  # (records the table's last LSN in its manifest)
    files = listing(store.path)
    with pytest.raises(bt.StoreClosedError) as exc:
        t.append(good_frame())
    assert isinstance(exc.value, bt.BtError)
    assert (
        str(exc.value)
        == f"table 'orders' of store {str(store.path)!r} is closed; open the store again with bt.open(path)"
    )
    with pytest.raises(bt.StoreClosedError, match=r"is closed; open it again with bt.open\(path\)"):
        store.append("orders", good_frame())
    with pytest.raises(bt.StoreClosedError):
        store.create_table("other", ORDERS_SCHEMA)
    assert listing(store.path) == files
    with bt.open(store.path) as again:
        t2 = again.table("orders")
        assert_frame_equal(t2.scan().collect(), data)
        assert_still_writable(t2, data)


def test_appending_through_a_read_only_store_is_refused(filled: tuple[bt.Table, pl.DataFrame]) -> None:
    t, data = filled
    before = state(t)
    with bt.open(t.store.path, read_only=True) as ro:
        rt = ro.table("orders")
        with pytest.raises(bt.ReadOnlyError) as exc:
            rt.append(good_frame())
        assert isinstance(exc.value, bt.BtError)
        assert str(exc.value) == (
            f"table 'orders': the store {str(t.store.path)!r} was opened with read_only=True; "
            "open it without read_only to write."
        )
        for call in (
            lambda: ro.append("orders", good_frame()),
            lambda: ro.append("brand_new", good_frame()),
            lambda: ro.create_table("brand_new", ORDERS_SCHEMA),
            lambda: ro.drop_table("orders"),
            rt.flush,
            rt.compact,
        ):
            with pytest.raises(bt.ReadOnlyError):
                call()
        assert_frame_equal(rt.scan().collect(), data)
    assert_same_state(before, state(t))
    assert_still_writable(t, data)


# -- create_table with another schema ----------------------------------------------------------------------------------


CREATE_MISMATCH_MESSAGE = """\
table 'orders': exists with a different schema (table = existing, frame = requested)
  column  table                                      frame                                      problem
  ts      Datetime(time_unit='us', time_zone='UTC')  Datetime(time_unit='ns', time_zone='UTC')  different type
  symbol  String                                     String                                     ok
  price   Float64                                    -                                          only in the existing table
  qty     Int64                                      Int32                                      different type
  venue   -                                          String                                     only in the new schema
Fix: open it with the existing schema, drop it first (store.drop_table), or use another name."""  # noqa: E501


def test_create_table_with_a_different_schema_is_refused_with_the_differences(
    filled: tuple[bt.Table, pl.DataFrame],
) -> None:
    t, data = filled
    store = t.store
    before = state(t)
    table_json = (t.path / "table.json").read_bytes()
    other = {"ts": pl.Datetime("ns", "UTC"), "symbol": pl.String, "qty": pl.Int32, "venue": pl.String}
    with pytest.raises(bt.SchemaMismatchError) as exc:
        store.create_table("orders", other, time_column="ts", max_block_rows=100)
    assert str(exc.value) == CREATE_MISMATCH_MESSAGE
    assert exc.value.columns == ("ts", "price", "qty", "venue")
    with pytest.raises(bt.SchemaMismatchError, match=r"\(time_column\)\s+ts\s+None\s+different time column"):
        store.create_table("orders", ORDERS_SCHEMA, time_column=None)
    reordered = dict(reversed(list(ORDERS_SCHEMA.items())))
    with pytest.raises(bt.SchemaMismatchError):
        store.create_table("orders", reordered, time_column="ts")
    with pytest.raises(bt.TableExistsError, match="table 'orders' already exists"):
        store.create_table("orders", ORDERS_SCHEMA, time_column="ts", exist_ok=False)
    assert (t.path / "table.json").read_bytes() == table_json
    assert_same_state(before, state(t))
    assert store.create_table("orders", ORDERS_SCHEMA, time_column="ts") is t  # the same schema opens it
    assert_still_writable(t, data)


@pytest.mark.parametrize(
    ("kwargs", "exc_type", "text"),
    [
        ({"schema": None}, bt.SchemaMismatchError, "create_table needs a schema"),
        ({"schema": {}}, bt.SchemaMismatchError, "a table needs at least one column"),
        ({"schema": {"ts": pl.Object}}, bt.SchemaMismatchError, "column 'ts': dtype Object cannot be stored"),
        # Parquet cannot write them: accepted, the rows would wait in the WAL for a flush that always fails
        ({"schema": {"s": pl.Struct({})}}, bt.SchemaMismatchError, "column 's': dtype Struct({}) cannot be stored"),
        ({"schema": {"s": pl.List(pl.Struct({}))}}, bt.SchemaMismatchError, "a struct with no fields"),
        ({"schema": {"s": pl.Struct({"o": pl.Object})}}, bt.SchemaMismatchError, "field 'o' holds Python objects"),
        ({"schema": {"s": pl.List(pl.Object)}}, bt.SchemaMismatchError, "its elements are Python objects"),
        # Arrow IPC (the WAL, table.json's schema) cannot read a fixed-size array of width 0
        ({"schema": {"a": pl.Array(pl.Int64, 0)}}, bt.SchemaMismatchError, "column 'a': dtype Array(Int64"),
        ({"schema": {"a": pl.List(pl.Array(pl.Int8, (2, 0)))}}, bt.SchemaMismatchError, "width 0"),
        (
            {"schema": ORDERS_SCHEMA, "time_column": "time"},
            bt.SchemaMismatchError,
            "time_column 'time' is not a column",
        ),
        ({"schema": ORDERS_SCHEMA, "time_column": "symbol"}, bt.SchemaMismatchError, "a time column must be a date"),
        ({"schema": ORDERS_SCHEMA, "max_block_rows": 0}, bt.BtError, "max_block_rows must be a positive integer"),
        ({"schema": "ts int"}, bt.UnsupportedInputError, "schema must be a dict of column -> polars dtype"),
    ],
)
def test_bad_create_table_arguments_create_nothing(
    store: bt.BacktraceStore, kwargs: dict[str, Any], exc_type: type[Exception], text: str
) -> None:
    with pytest.raises(exc_type) as exc:
        store.create_table("t", **kwargs)
    assert isinstance(exc.value, bt.BtError)
    assert "table 't'" in str(exc.value)
    assert text in str(exc.value)
    assert store.tables == []
    assert sorted(p.name for p in store.path.iterdir()) == ["LOCK", "bt_frames.json"]


@pytest.mark.parametrize(
    ("dtype", "why"),
    [(pl.Struct({}), "struct with no fields"), (pl.Array(pl.Int64, 0), "fixed-size array of width 0")],
)
def test_a_column_parquet_cannot_write_is_refused_when_added_and_the_table_is_unchanged(
    filled: tuple[bt.Table, pl.DataFrame], dtype: pl.DataType, why: str
) -> None:
    t, data = filled
    before = state(t)
    with pytest.raises(bt.SchemaMismatchError, match=rf"table 'orders', column 'e': .*{why}"):
        t.add_columns({"e": dtype})
    merged = good_frame().head(2).with_columns(pl.lit(None, dtype).alias("e"))
    with pytest.raises(bt.SchemaMismatchError, match=rf"table 'orders', column 'e': .*{why}"):
        t.append(merged, schema_mode="merge")
    assert_same_state(before, state(t))
    assert_still_writable(t, data)


# -- empty frames ------------------------------------------------------------------------------------------------------


EMPTY_FRAMES: dict[str, Callable[[], Any]] = {
    "typed polars": lambda: good_frame().head(0),
    "untyped polars (all-null dtypes)": lambda: pl.DataFrame({c: [] for c in ORDERS_SCHEMA}),
    "pandas with object columns": lambda: pd.DataFrame(columns=list(ORDERS_SCHEMA)),
    "pyarrow": lambda: good_frame().head(0).to_arrow(),
}


@pytest.mark.parametrize("kind", list(EMPTY_FRAMES))
def test_empty_frame_with_the_right_columns_is_a_no_op_returning_none(
    filled: tuple[bt.Table, pl.DataFrame], kind: str
) -> None:
    # What users expect from pandas/Polars concat of nothing: accepted, nothing written, no LSN used.
    t, data = filled
    before = state(t)
    assert t.append(EMPTY_FRAMES[kind]()) is None
    assert_same_state(before, state(t))
    next_lsn = before["wal_state"]["next_lsn"]
    assert t.append(good_frame()) == next_lsn
    assert_frame_equal(t.scan().collect(), pl.concat([data, good_frame()]))


def test_empty_frame_with_the_wrong_columns_is_still_an_error(filled: tuple[bt.Table, pl.DataFrame]) -> None:
    # No rows, but the caller's code is wrong: say so now, not on the first non-empty batch.
    t, data = filled
    before = state(t)
    with pytest.raises(bt.SchemaMismatchError, match=r"qty\s+Int64\s+-\s+missing from the frame"):
        t.append(good_frame().head(0).drop("qty"))
    with pytest.raises(bt.SchemaMismatchError, match="incompatible types"):
        t.append(good_frame().head(0).with_columns(pl.col("qty").cast(pl.String)))
    assert_same_state(before, state(t))
    assert_still_writable(t, data)


# -- a good append after many bad ones ---------------------------------------------------------------------------------


def test_a_burst_of_bad_appends_leaves_the_table_exactly_as_it_was(filled: tuple[bt.Table, pl.DataFrame]) -> None:
    t, data = filled
    before = state(t)
    bad_inputs: list[Any] = [make(good_frame()) for make, _c, _p in SCHEMA_CASES.values()]
    bad_inputs += [make() for make in NOT_FRAMES.values()]
    bad_inputs.append(_null_ts(good_frame()))
    for bad in bad_inputs:
        with pytest.raises(bt.BtError):
            t.append(bad)
    assert_same_state(before, state(t))
    assert t.wal_state["next_lsn"] == before["wal_state"]["next_lsn"]  # no LSN was used up
    frame = good_frame().with_columns(pl.col("ts") + dt.timedelta(days=1))
    assert t.append(frame) == before["wal_state"]["next_lsn"]
    assert_frame_equal(t.scan().collect(), pl.concat([data, frame]))
