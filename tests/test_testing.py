"""``bt_frames.testing.assert_table_equal``: the verdict of polars/pandas testing, with an explanation first."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pytest

import bt_frames as bt
from bt_frames.testing import TableAssertionError, assert_table_equal

T0 = dt.datetime(2024, 1, 1)


def _frame(n: int = 6) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "ts": [T0 + dt.timedelta(minutes=i) for i in range(n)],
            "sym": ["BTC", "ETH", "SOL"] * (n // 3),
            "px": [float(i) + 0.5 for i in range(n)],
            "qty": list(range(n)),
        }
    )


@pytest.fixture
def table(bt_store: bt.BacktraceStore) -> bt.Table:
    bt_store.append("orders", _frame(), max_block_rows=4)  # rows in blocks of at most 4 rows
    bt_store.append("orders", _frame().with_columns(pl.col("qty") + 100))
    return bt_store["orders"]


def _expected() -> pl.DataFrame:
    return pl.concat([_frame(), _frame().with_columns(pl.col("qty") + 100)])


def _explanation(err: pytest.ExceptionInfo[Any]) -> str:
    """The message up to the library's own part (which we do not pin)."""
    return str(err.value).split("\npolars.testing says:")[0].split("\npandas.testing says:")[0]


# -- equal --------------------------------------------------------------------------------


def test_equal_table_passes_with_polars_pandas_and_lazy_expectations(table: bt.Table) -> None:
    assert_table_equal(table, _expected())
    assert_table_equal(table, _expected().lazy())
    assert_table_equal(table, _expected().to_arrow())
    assert_table_equal(table, table.to_pandas())  # pandas expectation: compared with to_pandas()
    assert_table_equal(table.scan().filter(pl.col("qty") > 100), _expected().filter(pl.col("qty") > 100))
    assert_table_equal(table.read(), _expected())


def test_order_is_ignored_with_check_order_false(table: bt.Table) -> None:
    shuffled = _expected().sample(fraction=1.0, shuffle=True, seed=1)
    assert_table_equal(table, shuffled, check_order=False)
    with pytest.raises(TableAssertionError, match=r"compared rows differ"):
        assert_table_equal(table, shuffled)


def test_dtypes_and_column_order_can_be_relaxed(table: bt.Table) -> None:
    other = _expected().with_columns(pl.col("qty").cast(pl.Int32)).select("qty", "ts", "sym", "px")
    assert_table_equal(table, other, check_dtypes=False, check_column_order=False)
    with pytest.raises(TableAssertionError):
        assert_table_equal(table, other, check_dtypes=False)
    with pytest.raises(TableAssertionError):
        assert_table_equal(table, other, check_column_order=False)


def test_floats_compare_with_tolerance_and_nan_equals_nan(bt_store: bt.BacktraceStore) -> None:
    bt_store.append("f", pl.DataFrame({"x": [1.0, float("nan"), None]}))
    assert_table_equal(bt_store["f"], pl.DataFrame({"x": [1.0 + 1e-9, float("nan"), None]}))
    with pytest.raises(TableAssertionError) as err:
        assert_table_equal(bt_store["f"], pl.DataFrame({"x": [1.0 + 1e-9, float("nan"), None]}), check_exact=True)
    assert "row  column  table  expected\n    0    x       1.0    1.000000001" in str(err.value)


# -- explained failures (explanations pinned) -------------------------------------------------


def test_row_count_difference(table: bt.Table) -> None:
    with pytest.raises(TableAssertionError) as err:
        assert_table_equal(table, _expected().head(10))
    assert _explanation(err) == "table 'orders' differs from the expected frame\n  rows: 12 in the table, 10 expected"
    assert "polars.testing says: DataFrames are different (height (row count) mismatch)" in str(err.value)


def test_value_differences_show_the_first_rows(table: bt.Table) -> None:
    expected = _expected().with_columns(
        pl.when(pl.col("qty").is_in([2, 104])).then(pl.col("px") * 2).otherwise(pl.col("px")).alias("px"),
        pl.when(pl.col("qty") == 104).then(pl.lit("XRP")).otherwise(pl.col("sym")).alias("sym"),
    )
    with pytest.raises(TableAssertionError) as err:
        assert_table_equal(table, expected)
    assert _explanation(err) == (
        "table 'orders' differs from the expected frame\n"
        "  2 of 12 compared rows differ; the first 2:\n"
        "    row  column  table  expected\n"
        "    2    px      2.5    5.0\n"
        "    10   sym     'ETH'  'XRP'\n"
        "    10   px      4.5    9.0"
    )


def test_null_versus_value_is_a_difference(bt_store: bt.BacktraceStore) -> None:
    bt_store.append("n", pl.DataFrame({"k": ["a", None]}))
    with pytest.raises(TableAssertionError) as err:
        assert_table_equal(bt_store["n"], pl.DataFrame({"k": ["a", "b"]}))
    assert "    1    k       None   'b'" in str(err.value)


def test_columns_and_dtypes_differences(table: bt.Table) -> None:
    expected = _expected().drop("sym").with_columns(pl.col("qty").cast(pl.Int32), venue=pl.lit("x"))
    with pytest.raises(TableAssertionError) as err:
        assert_table_equal(table, expected)
    assert _explanation(err) == (
        "table 'orders' differs from the expected frame\n"
        "  columns missing from the table: 'venue'\n"
        "  columns not expected: 'sym'\n"
        "  dtypes that differ:\n"
        "    column  table  expected\n"
        "    qty     Int64  Int32"
    )


def test_unordered_difference_lists_rows_on_each_side(table: bt.Table) -> None:
    expected = (
        _expected()
        .with_columns(pl.when(pl.col("qty") == 1).then(pl.lit(7)).otherwise(pl.col("qty")).alias("qty"))
        .reverse()
    )
    with pytest.raises(TableAssertionError) as err:
        assert_table_equal(table, expected, check_order=False)
    assert _explanation(err) == (
        "table 'orders' differs from the expected frame\n"
        "  1 rows in the table but not expected (ignoring order); the first:\n"
        "    ts                   sym    px   qty  times\n"
        "    2024-01-01 00:01:00  'ETH'  1.5  1    1\n"
        "  1 expected rows missing from the table (ignoring order); the first:\n"
        "    ts                   sym    px   qty  times\n"
        "    2024-01-01 00:01:00  'ETH'  1.5  7    1"
    )


def test_failure_is_an_assertion_error_and_a_bt_error(table: bt.Table) -> None:
    with pytest.raises(AssertionError) as err:
        assert_table_equal(table, _expected().head(0))
    assert isinstance(err.value, bt.BtError)
    assert str(err.value).startswith(
        "table 'orders' differs from the expected frame\n  rows: 12 in the table, 0 expected"
    )


def test_query_results_are_named_the_frame(table: bt.Table) -> None:
    with pytest.raises(TableAssertionError, match=r"^the frame differs from the expected frame\n  rows: 6 in"):
        assert_table_equal(table.scan().filter(pl.col("qty") < 100), _expected())


def test_unsupported_inputs_are_a_type_error(table: bt.Table) -> None:
    with pytest.raises(TypeError, match=r"the expected frame must be a bt_frames Table, .* not builtins.dict"):
        assert_table_equal(table, {"qty": [1]})


# -- pandas expectations ----------------------------------------------------------------------


@pytest.fixture
def pandas_table(bt_store: bt.BacktraceStore) -> tuple[bt.Table, pd.DataFrame]:
    df = pd.DataFrame(
        {"px": [1.5, 2.5, np.nan], "venue": pd.Categorical(["x", "y", "x"], categories=["y", "x"])},
        index=pd.DatetimeIndex(["2024-01-01 09:30", "2024-01-01 09:31", "2024-01-01 09:32"], name="ts", tz="UTC"),
    )
    df.bt.append(bt_store, "ticks")
    return bt_store["ticks"], df


def test_pandas_expectation_is_compared_the_pandas_way(pandas_table: tuple[bt.Table, pd.DataFrame]) -> None:
    t, df = pandas_table
    assert_table_equal(t, df)
    assert_table_equal(t, df.iloc[::-1], check_order=False)
    with pytest.raises(TableAssertionError) as err:  # the categories' order is part of a pandas dtype
        assert_table_equal(t, df.assign(venue=df.venue.cat.reorder_categories(["x", "y"])))
    assert "pandas.testing says:" in str(err.value)
    assert "category" in str(err.value)


def test_pandas_index_and_dtype_differences_are_explained(pandas_table: tuple[bt.Table, pd.DataFrame]) -> None:
    t, df = pandas_table
    with pytest.raises(TableAssertionError) as err:
        assert_table_equal(t, df.reset_index(drop=True).astype({"px": "float32"}))
    assert _explanation(err) == (
        "table 'ticks' differs from the expected frame\n"
        f"  index: table DatetimeIndex(dtype={df.index.dtype}, name='ts', nlevels=1), "  # [us, UTC] in pandas 3
        "expected RangeIndex(start=0, stop=3, step=1, name=None)\n"
        "  dtypes that differ:\n"
        "    column  table    expected\n"
        "    px      float64  float32\n"
        "  columns not expected: 'ts'"
    )


def test_pandas_value_difference_names_the_row(pandas_table: tuple[bt.Table, pd.DataFrame]) -> None:
    t, df = pandas_table
    with pytest.raises(TableAssertionError) as err:
        assert_table_equal(t, df.assign(px=[1.5, 2.75, np.nan]))
    assert (
        "1 of 3 compared rows differ; the first:\n    row  column  table  expected\n    1    px      2.5    2.75"
        in (str(err.value))
    )
    assert "pandas.testing says:" in str(err.value)
