"""``table.to_dask()`` and ``table.files()`` on a real ``distributed.LocalCluster`` (two worker processes).

The contract is in ``bt_frames/_dask.py``: one partition per surviving block (read on the workers) plus the
hot rows, ``compute()`` equal to ``to_pandas()`` (a default index keeps each row's table position under a
filter), known divisions on a range index or a sorted time index, and a BtError naming a block file
deleted before ``compute()``.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pytest

import bt_frames as bt
from bt_frames import prune as _prune

from .conftest import ORDERS_SCHEMA, T0, make_orders

dask = pytest.importorskip("dask")
dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    # dask turns string columns into string[pyarrow] by default; bt_frames gives the dtypes of to_pandas(),
    # which these tests compare exactly (test_dask_string_conversion_is_dasks_own checks the default)
    with (
        dask.config.set({"dataframe.convert-string": False}),
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=40
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


@pytest.fixture
def store(tmp_path: Path) -> Iterator[bt.BacktraceStore]:
    """No fsync: these tests are about reading (and appends are the bulk of their time)."""
    with bt.open(tmp_path / "db", durability="none") as s:
        yield s


def _table(store: bt.BacktraceStore, *, rows: int = 4_500, name: str = "orders") -> bt.Table:
    """4 blocks of 1,000 rows (one hour apart per 3,600 rows), the last 500 rows hot."""
    t = store.create_table(name, ORDERS_SCHEMA, time_column="ts", max_block_rows=1_000)
    for start in range(0, rows, 500):
        t.append(make_orders(500, start=start))
    return t


def _expected(t: bt.Table, where: Any, columns: list[str] | None) -> pd.DataFrame:
    """``to_pandas()`` restricted to the rows matching ``where``, keeping their positions as the index."""
    full = t.to_pandas(columns=columns)
    expr = _prune.to_expr(where, t.schema, table=t.name)
    if expr is None:
        return full
    mask = t.read().select(expr.fill_null(False)).to_series().to_numpy()
    return full[mask]


WHERES: list[Any] = [
    None,
    pl.col("ts") < T0 + dt.timedelta(seconds=1_500),  # prunes the last blocks and the hot rows
    pl.col("ts") >= T0 + dt.timedelta(seconds=2_200),  # prunes the first blocks
    (pl.col("symbol") == "BTC") & (pl.col("qty") > 500),  # prunes nothing: filtered inside each partition
    [("ts", ">=", T0 + dt.timedelta(seconds=1_000)), ("symbol", "in", ["ETH", "SOL"])],  # DNF tuples
]
COLUMNS: list[list[str] | None] = [None, ["price"], ["qty", "ts"]]  # "ts": asked for after "qty"


CASES = [(None, c) for c in COLUMNS] + [(w, COLUMNS[i % 3]) for i, w in enumerate(WHERES) if w is not None]


@pytest.mark.parametrize(("where", "columns"), CASES, ids=[f"{i}" for i in range(len(CASES))])
def test_compute_equals_to_pandas_of_the_matching_rows(
    client: Any, store: bt.BacktraceStore, where: Any, columns: list[str] | None
) -> None:
    t = _table(store)
    assert t.hot_rows == 500
    ddf = t.to_dask(where, columns=columns)
    got = ddf.compute()
    pd.testing.assert_frame_equal(got, _expected(t, where, columns))
    if where is None:
        pd.testing.assert_frame_equal(got, t.to_pandas(columns=columns))  # exactly to_pandas(), index too
    else:  # renumbered, it is to_pandas(where)
        pd.testing.assert_frame_equal(got.reset_index(drop=True), t.to_pandas(where, columns=columns))
    assert ddf.known_divisions  # a range index: row positions


@pytest.mark.parametrize("where", WHERES, ids=[str(i) for i in range(len(WHERES))])
def test_partitions_are_the_surviving_blocks_plus_the_matching_hot_rows(store: bt.BacktraceStore, where: Any) -> None:
    t = _table(store)
    report = t.prune(where)
    expr = _prune.to_expr(where, t.schema, table=t.name)
    hot = t.read().tail(t.hot_rows)
    hot_match = hot.height if expr is None else hot.filter(expr).height
    ddf = t.to_dask(where)
    assert ddf.npartitions == report.blocks_scanned + (1 if hot_match else 0)
    assert len(t.files(where)) == report.blocks_scanned
    if where is WHERES[1]:
        assert report.blocks_scanned == 2
        assert hot_match == 0


def test_without_hot_rows_there_is_no_hot_partition(client: Any, store: bt.BacktraceStore) -> None:
    t = _table(store, rows=4_000)
    t.flush()
    assert t.hot_rows == 0
    ddf = t.to_dask()
    assert ddf.npartitions == 4
    assert ddf.divisions == (0, 1_000, 2_000, 3_000, 3_999)
    pd.testing.assert_frame_equal(ddf.compute(), t.to_pandas())


def test_a_filtered_range_index_keeps_row_positions_and_known_divisions(client: Any, store: bt.BacktraceStore) -> None:
    t = _table(store)
    where = pl.col("ts") >= T0 + dt.timedelta(seconds=2_200)
    ddf = t.to_dask(where)
    assert ddf.divisions == (2_000, 3_000, 4_000, 4_499)  # blocks 3 and 4, then the hot rows
    got = ddf.compute()
    assert got.index[0] == 2_200
    assert got.index[-1] == 4_499
    assert ddf.loc[2_990:3_010].compute().index.tolist() == list(range(2_990, 3_011))


def _ticks(start: int, n: int) -> pd.DataFrame:
    idx = pd.date_range("2024-01-01", periods=start + n, freq="s", tz="UTC", name="ts")[start:]
    rng = np.random.default_rng(start)
    return pd.DataFrame(
        {"px": rng.uniform(1, 2, n), "n": np.arange(start, start + n, dtype=np.int32), "side": ["b", "s"] * (n // 2)},
        index=idx,
    )


TICKS = {"ts": pl.Datetime("ns", "UTC"), "px": pl.Float64, "n": pl.Int32, "side": pl.String}


def _ticks_table(store: bt.BacktraceStore) -> bt.Table:
    return store.create_table("ticks", TICKS, time_column="ts", max_block_rows=1_000)


def test_a_time_index_gets_divisions_from_the_block_statistics(client: Any, store: bt.BacktraceStore) -> None:
    t = _ticks_table(store)
    for start in range(0, 3_500, 500):
        _ticks(start, 500).bt.append(store, "ticks")
    t.flush()
    _ticks(3_500, 500).bt.append(store, "ticks")
    assert len(t.files()) == 4
    assert t.hot_rows == 500
    ddf = t.to_dask()
    assert ddf.known_divisions
    assert ddf.divisions[0] == pd.Timestamp("2024-01-01", tz="UTC")
    assert ddf.divisions[-1] == pd.Timestamp("2024-01-01", tz="UTC") + pd.Timedelta(seconds=3_999)
    got = ddf.compute()
    pd.testing.assert_frame_equal(got, t.to_pandas(), check_freq=False)
    window = ddf.loc["2024-01-01 00:58:10":"2024-01-01 00:58:20"].compute()
    pd.testing.assert_frame_equal(window, t.to_pandas().loc["2024-01-01 00:58:10":"2024-01-01 00:58:20"])


def test_an_unsorted_time_index_is_refused_with_known_divisions_and_read_without(
    client: Any, store: bt.BacktraceStore
) -> None:
    t = _ticks_table(store)
    first = _ticks(0, 1_000)
    first = first.iloc[np.r_[1, 0, 2:1_000]]  # two rows swapped: the block's time range is still [0 s, 999 s]
    first.bt.append(store, "ticks")
    _ticks(1_000, 1_000).bt.append(store, "ticks")
    assert len(t.files()) == 2
    ddf = t.to_dask()
    assert ddf.known_divisions  # the statistics cannot tell the block is unsorted
    with pytest.raises(bt.BtError, match=r"the time index of .*\.parquet is not sorted.*divisions=False"):
        ddf.compute()
    plain = t.to_dask(divisions=False)
    assert not plain.known_divisions
    pd.testing.assert_frame_equal(plain.compute(), t.to_pandas(), check_freq=False)


def test_overlapping_blocks_give_unknown_divisions_and_unsorted_rows_are_fine(
    client: Any, store: bt.BacktraceStore
) -> None:
    t = _ticks_table(store)
    _ticks(0, 1_000).iloc[::-1].bt.append(store, "ticks")  # one block, newest first
    _ticks(500, 1_000).bt.append(store, "ticks")  # overlaps the first block's time range
    _ticks(100, 10).iloc[::-1].bt.append(store, "ticks")  # hot, unsorted
    assert len(t.files()) == 2
    ddf = t.to_dask()
    assert not ddf.known_divisions
    pd.testing.assert_frame_equal(ddf.compute(), t.to_pandas(), check_freq=False)


def _mixed(start: int, n: int, cats: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "cat": pd.Categorical(np.resize(cats, n), categories=cats),
            "obj": pd.Series(["x", None] * (n // 2), dtype=object),
            "i32": np.arange(start, start + n, dtype=np.int32),
            "flag": np.resize([True, False], n),
            "n": np.arange(n, dtype=np.int64),
        }
    )


def test_pandas_dtypes_survive_including_new_categories_and_nulls_from_polars(
    client: Any, store: bt.BacktraceStore
) -> None:
    schema = {"cat": pl.Categorical(), "obj": pl.String, "i32": pl.Int32, "flag": pl.Boolean, "n": pl.Int64}
    t = store.create_table("mixed", schema, max_block_rows=100)
    _mixed(0, 200, ["a", "b"]).bt.append(store, "mixed")
    _mixed(200, 100, ["a", "b", "z"]).bt.append(store, "mixed")  # a category the first append did not have
    rows = {"cat": ["b"] * 30, "obj": ["y"] * 30, "i32": range(30), "flag": [None] * 30, "n": [None] * 30}
    t.append(pl.DataFrame(rows, schema=schema))  # from Polars: nulls where pandas had int64 and bool
    ddf = t.to_dask()
    assert ddf.npartitions == 4  # three blocks and the hot rows
    assert not ddf["cat"].cat.known  # later appends may add categories: Dask's unknown categories
    assert ddf.dtypes["n"] == pd.Int64Dtype()  # nulls in the hot rows: the nullable dtype, as to_pandas() gives
    pd.testing.assert_frame_equal(ddf.compute(), t.to_pandas())
    where = pl.col("i32") >= 150  # only rows from pandas (the hot rows do not match): no nulls, plain dtypes
    got = t.to_dask(where).compute()
    assert got["n"].dtype == np.int64
    assert got.index[0] == 150  # row positions in the table
    pd.testing.assert_frame_equal(got.reset_index(drop=True), t.to_pandas(where))


def test_old_blocks_without_a_new_column_after_compaction_and_delete(client: Any, store: bt.BacktraceStore) -> None:
    t = _table(store, rows=3_000)
    t.flush()
    t.add_columns({"venue": pl.String, "fee": pl.Int64})
    for start, venue, fee in [(3_000, "XNAS", 7), (3_300, "ARCA", 3), (3_600, "XNAS", 5)]:
        t.append(make_orders(300, start=start).with_columns(venue=pl.lit(venue), fee=pl.lit(fee, pl.Int64)))
        if start < 3_600:
            t.flush()
    assert t.delete((pl.col("fee") == 3) & (pl.col("qty") < 500)) > 0  # rewrites one new block, freezes the hot
    assert t.compact(target_rows=2_000, min_rows=1_000).merges == 1  # merges the small new blocks
    assert t.hot_rows == 0
    files = t.files()
    assert sum("fee" not in pl.read_parquet_schema(f) for f in files) == 3  # blocks from before the change
    for where, columns in [
        (None, None),
        (pl.col("fee") > 5, ["venue", "price"]),
        (pl.col("venue").is_null(), ["fee"]),
        (pl.col("ts") >= T0 + dt.timedelta(seconds=2_500), None),
    ]:
        ddf = t.to_dask(where, columns=columns)
        assert ddf.npartitions == len(t.files(where))
        got = ddf.compute()
        pd.testing.assert_frame_equal(got, _expected(t, where, columns))
        if columns is None or "fee" in columns:  # nulls in old blocks: the nullable dtype in every partition
            assert got["fee"].dtype == t.to_pandas()["fee"].dtype == np.float64


def test_a_pruned_away_block_is_never_opened(client: Any, store: bt.BacktraceStore, tmp_path: Path) -> None:
    t = _table(store, rows=4_000)
    t.flush()
    first = t.files()[0]
    where = pl.col("ts") >= T0 + dt.timedelta(seconds=1_000)
    assert first not in t.files(where)
    want = _expected(t, where, None)
    ddf, everything = t.to_dask(where), t.to_dask()
    shutil.move(first, tmp_path / "elsewhere.parquet")
    try:
        pd.testing.assert_frame_equal(ddf.compute(), want)
        with pytest.raises(bt.BtError, match=Path(first).name):  # the unpruned frame does need it
            everything.compute()
    finally:
        shutil.move(tmp_path / "elsewhere.parquet", first)


def test_a_block_vacuumed_before_compute_is_a_bterror_naming_it(client: Any, tmp_path: Path) -> None:
    with bt.open(tmp_path / "db", retired_grace=0) as store:
        t = _table(store, rows=4_000)
        t.flush()
        before = t.read().to_pandas()
        ddf = t.to_dask()
        old = t.files()
        t.compact(target_rows=4_000, min_rows=2_000)
        assert t.files() != old
        pd.testing.assert_frame_equal(ddf.compute(), before)  # retired, not deleted: the snapshot still reads
        t.vacuum()
        assert not any(os.path.exists(f) for f in old)
        names = "|".join(Path(f).name for f in old)  # whichever partition fails first
        with pytest.raises(bt.BtError, match=rf"block file .*({names}) is gone.*to_dask\(\) again"):
            ddf.compute()
        pd.testing.assert_frame_equal(t.to_dask().compute(), before)


def test_bad_columns_and_where_are_refused_before_anything_is_read(store: bt.BacktraceStore) -> None:
    t = _table(store, rows=1_000)
    with pytest.raises(bt.SchemaMismatchError, match="no column 'nope'"):
        t.to_dask(columns=["price", "nope"])
    with pytest.raises(bt.BtError, match="nope"):
        t.to_dask(pl.col("nope") > 1)
    with pytest.raises(bt.BtError):
        t.to_dask([("qty", "~~", 3)])


def test_without_dask_to_dask_says_which_extra_to_install(
    store: bt.BacktraceStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = _table(store, rows=500)
    monkeypatch.setitem(sys.modules, "dask.dataframe", None)  # what an environment without dask imports
    with pytest.raises(bt.MissingOptionalDependencyError, match=r"pip install 'bt_frames\[dask\]'"):
        t.to_dask()


def test_an_empty_result_is_an_empty_frame_of_the_right_dtypes(client: Any, store: bt.BacktraceStore) -> None:
    t = _table(store, rows=1_500)
    where = pl.col("ts") > T0 + dt.timedelta(days=30)
    ddf = t.to_dask(where)
    got = ddf.compute()
    assert len(got) == 0
    assert got.dtypes.to_dict() == t.to_pandas(where).dtypes.to_dict()


def test_dask_string_conversion_is_dasks_own(client: Any, store: bt.BacktraceStore) -> None:
    t = _table(store, rows=1_500)
    with dask.config.set({"dataframe.convert-string": True}):
        got = t.to_dask().compute()
    assert got["symbol"].dtype == pd.StringDtype("pyarrow")  # dask's default conversion, not bt_frames'
    want = t.to_pandas()
    pd.testing.assert_series_equal(got["symbol"].astype(want["symbol"].dtype), want["symbol"])


def test_files_are_absolute_paths_that_duckdb_reads_as_the_table(store: bt.BacktraceStore) -> None:
    duckdb = pytest.importorskip("duckdb")
    t = _table(store)
    t.flush()
    where = pl.col("ts") >= T0 + dt.timedelta(seconds=2_200)
    files = t.files(where)
    assert all(os.path.isabs(f) for f in files)
    assert len(files) == 3
    assert files == [str(Path(f).resolve()) for f in t.blocks.get_column("path").to_list()[2:]]
    got = duckdb.sql(f"SELECT * FROM read_parquet({files!r}) WHERE ts >= TIMESTAMPTZ '2024-01-01 00:36:40+00'").pl()
    assert_same(got, t.read(where))


def assert_same(got: pl.DataFrame, want: pl.DataFrame) -> None:
    from polars.testing import assert_frame_equal

    got = got.with_columns(pl.col("ts").dt.convert_time_zone("UTC"))  # DuckDB and Spark name UTC differently
    assert_frame_equal(got.sort("ts"), want.sort("ts"))


def test_spark_reads_the_file_list_as_the_table(store: bt.BacktraceStore) -> None:
    pytest.importorskip("pyspark")  # not in CI (needs a JVM); runs where pyspark is installed
    from pyspark.sql import SparkSession

    t = _table(store)
    t.flush()
    spark = SparkSession.builder.master("local[1]").appName("bt_frames").getOrCreate()
    try:
        got = pl.from_pandas(spark.read.parquet(*t.files()).toPandas())
    finally:
        spark.stop()
    assert_same(got, t.read())


@pytest.fixture(scope="module")
def evolved(tmp_path_factory: pytest.TempPathFactory) -> Iterator[bt.Table]:
    """Blocks from before and after ``add_columns`` (old ones lack ``fee``), a compaction, and hot rows."""
    with bt.open(tmp_path_factory.mktemp("dask-hyp") / "db", durability="none") as s:
        t = s.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=400, auto_compact=False)
        for start in range(0, 1_200, 300):
            t.append(make_orders(300, start=start))
            t.flush()
        t.add_columns({"fee": pl.Int64})
        for start in range(1_200, 2_000, 200):
            df = make_orders(200, start=start)
            t.append(df.with_columns(fee=pl.when(pl.col("qty") % 3 == 0).then(None).otherwise(pl.col("qty") % 7)))
            if start < 1_800:
                t.flush()
        assert t.compact(target_rows=600, min_rows=300).merges >= 1
        assert t.hot_rows == 200
        yield t


@pytest.mark.hypothesis
def test_random_predicates_and_columns_equal_to_pandas(client: Any, evolved: bt.Table) -> None:
    from hypothesis import HealthCheck, given, note, settings
    from hypothesis import strategies as st

    t = evolved
    names = list(t.schema.names())

    def atom(draw: Any) -> pl.Expr:
        col = draw(st.sampled_from(names))
        op = draw(st.sampled_from(["<", ">=", "==", "is_null"]))
        if op == "is_null":
            return pl.col(col).is_null()
        if col == "ts":
            value: Any = T0 + dt.timedelta(seconds=draw(st.integers(-10, 2_100)))
        elif col == "symbol":
            value = draw(st.sampled_from(["BTC", "ETH", "SOL", "ZZZ"]))
        elif col == "price":
            value = draw(st.floats(0, 60_000, allow_nan=False))
        else:
            value = draw(st.integers(-1, 1_001))
        e = pl.col(col)
        return e < value if op == "<" else e >= value if op == ">=" else e == value

    @settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data())
    def run(data: Any) -> None:
        draw = data.draw
        where: pl.Expr | None = None
        for _ in range(draw(st.integers(0, 3))):
            e = atom(draw)
            where = e if where is None else (where & e if draw(st.booleans()) else where | e)
        columns = draw(st.none() | st.lists(st.sampled_from(names), min_size=1, max_size=len(names), unique=True))
        note(f"where={where} columns={columns}")
        ddf = t.to_dask(where, columns=columns)
        parts = dask.compute(*ddf.to_delayed())
        got = pd.concat(parts) if len(parts) > 1 else parts[0]
        # dtypes: nullable where a surviving block holds nulls (the module doc), so only the values here
        pd.testing.assert_frame_equal(got, _expected(t, where, columns), check_dtype=False)
        pd.testing.assert_frame_equal(
            got.reset_index(drop=True), t.to_pandas(where, columns=columns), check_dtype=False
        )
        assert ddf.npartitions - len(t.files(where)) in (0, 1)  # the surviving blocks (+ the hot rows)
        assert ddf.known_divisions or not len(got)  # a range index: row positions
        for k, part in enumerate(parts):  # each partition within its divisions
            if len(part):
                assert ddf.divisions[k] <= part.index.min()
                last = k == len(parts) - 1
                assert part.index.max() <= ddf.divisions[k + 1] if last else part.index.max() < ddf.divisions[k + 1]

    run()


def test_a_predicate_over_the_whole_table_gives_the_rows_of_to_pandas(client: Any, store: bt.BacktraceStore) -> None:
    """A predicate that is not row by row (an aggregation, a window, a running sum) is evaluated over the
    whole table, as to_pandas(where) does: evaluated in each partition it would pick other rows."""
    t = _table(store, rows=2_500)  # 2 blocks, 500 hot rows: the whole table is blocks then hot rows
    for where in (
        pl.col("qty") == pl.col("qty").max(),
        pl.col("qty").rank("ordinal") < 3,
        pl.col("qty").cum_sum() < 5_000,
        pl.col("qty") > pl.col("qty").mean(),
        pl.col("ts") == pl.col("ts").max(),  # the newest row: a hot one
    ):
        got = t.to_dask(where).compute()
        want = t.to_pandas(where)
        assert 0 < len(want) < len(t)
        pd.testing.assert_frame_equal(got.reset_index(drop=True), want)
