"""Usability: inputs people actually pass, and the errors they get when something is off.

Every error here is a ``bt.BtError`` whose message names the table/column/file and
says what to do; the tests pin that text.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import polars as pl
import pytest

import bt_frames as bt
from bt_frames.__main__ import UsageError, filter_where

UTC = dt.UTC
T0 = dt.datetime(2024, 1, 1, tzinfo=UTC)


# -- 1. time literals in where= ------------------------------------------------------


@pytest.fixture
def times(store: bt.BacktraceStore) -> bt.Table:
    """10 rows a minute apart from 2024-01-01 00:00 UTC; two blocks of 5 (so pruning is exercised)."""
    t = store.create_table(
        "times",
        {"ts": pl.Datetime("us", "UTC"), "ny": pl.Datetime("ns", "America/New_York"), "d": pl.Date, "x": pl.Int64},
        time_column="ts",
        max_block_rows=5,
    )
    ts = pl.datetime_range(T0, T0 + dt.timedelta(minutes=9), "1m", eager=True, time_zone="UTC")
    t.append(
        pl.DataFrame(
            {
                "ts": ts,
                "ny": ts.dt.convert_time_zone("America/New_York").dt.cast_time_unit("ns"),
                "d": [dt.date(2024, 1, 1)] * 5 + [dt.date(2024, 1, 2)] * 5,
                "x": range(10),
            }
        )
    )
    t.flush()
    return t


# The same instant, 2024-01-01 00:05 UTC, written every way people write it.
SAME_INSTANT = [
    pytest.param(dt.datetime(2024, 1, 1, 0, 5), id="naive-datetime"),
    pytest.param(dt.datetime(2024, 1, 1, 0, 5, tzinfo=UTC), id="utc-datetime"),
    pytest.param(dt.datetime(2024, 1, 1, 1, 5, tzinfo=ZoneInfo("Europe/Paris")), id="paris-datetime"),
    pytest.param(pd.Timestamp("2024-01-01 00:05"), id="naive-timestamp"),
    pytest.param(pd.Timestamp("2023-12-31 19:05", tz="America/New_York"), id="ny-timestamp"),
    pytest.param(np.datetime64("2024-01-01T00:05"), id="datetime64"),
    pytest.param(np.datetime64("2024-01-01T00:05:00.000000000"), id="datetime64-ns"),
    pytest.param("2024-01-01T00:05", id="iso-naive"),
    pytest.param("2024-01-01 00:05:00", id="iso-space"),
    pytest.param("2024-01-01T00:05:00Z", id="iso-z"),
    pytest.param("2024-01-01T01:05:00+01:00", id="iso-offset"),
]


@pytest.mark.parametrize("value", SAME_INSTANT)
def test_where_tuple_time_literals_on_a_utc_column(times: bt.Table, value: Any) -> None:
    assert times.read([("ts", ">=", value)])["x"].to_list() == [5, 6, 7, 8, 9]
    assert times.read([("ts", "==", value)])["x"].to_list() == [5]
    assert times.read([("ts", "in", [value, T0])])["x"].to_list() == [0, 5]
    assert times.read([("ts", "not in", [value])]).height == 9
    # the statistics understood the literal: the first block (00:00-00:04) is never read
    assert times.prune([("ts", ">=", value)]).blocks_pruned == 1


def test_where_naive_values_are_wall_clock_time_in_the_columns_zone(times: bt.Table) -> None:
    # 19:05 in New York on Dec 31 is 00:05 UTC
    assert times.read([("ny", ">=", dt.datetime(2023, 12, 31, 19, 5))])["x"].to_list() == [5, 6, 7, 8, 9]
    assert times.read([("ny", "==", "2023-12-31 19:05")])["x"].to_list() == [5]
    assert times.read([("ny", "==", T0 + dt.timedelta(minutes=5))])["x"].to_list() == [5]
    assert times.read([("ny", "in", [np.datetime64("2023-12-31T19:05")])])["x"].to_list() == [5]


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(dt.date(2024, 1, 2), id="date"),
        pytest.param(dt.datetime(2024, 1, 2), id="datetime-midnight"),
        pytest.param(pd.Timestamp("2024-01-02"), id="timestamp-midnight"),
        pytest.param(np.datetime64("2024-01-02"), id="datetime64-day"),
        pytest.param("2024-01-02", id="iso-date"),
        pytest.param("2024-01-02T00:00:00", id="iso-midnight"),
    ],
)
def test_where_tuple_date_literals(times: bt.Table, value: Any) -> None:
    assert times.read([("d", "==", value)])["x"].to_list() == [5, 6, 7, 8, 9]
    assert times.read([("d", "in", [value])]).height == 5
    assert times.prune([("d", ">=", value)]).blocks_pruned == 1


@pytest.mark.parametrize(
    ("column", "value", "needles"),
    [
        pytest.param("ts", "soon", ["not an ISO 8601 date/time", "'2024-01-02T13:45:00+00:00'"], id="bad-string"),
        pytest.param("ts", 5, ["(int): not a date or time"], id="int"),
        pytest.param("ts", pd.NaT, ["NaT is not a time", "'is_null'"], id="nat"),
        pytest.param("d", "2024-01-02 12:00", ["it is not at midnight", "a datetime.date"], id="date-noon"),
        pytest.param("d", dt.datetime(2024, 1, 2, tzinfo=UTC), ["a Date column holds no time zone"], id="date-aware"),
        pytest.param(
            "ny", "2024-03-10 02:30", ["ambiguous or does not exist in America/New_York"], id="nonexistent-wall-time"
        ),
    ],
)
def test_where_tuple_uninterpretable_time_raises_a_bt_error(
    times: bt.Table, column: str, value: Any, needles: list[str]
) -> None:
    with pytest.raises(bt.SchemaMismatchError) as e:
        times.read([(column, ">=", value)])
    msg = str(e.value)
    assert msg.startswith(f"table 'times', column {column!r} (")
    assert "Pass " in msg
    for n in needles:
        assert n in msg, msg
    assert e.value.columns == (column,)
    with pytest.raises(bt.SchemaMismatchError, match="cannot compare with"):
        times.read([(column, "in", [value])])


def test_where_tuple_aware_value_on_a_naive_column_says_what_to_pass(store: bt.BacktraceStore) -> None:
    t = store.create_table("naive", {"ts": pl.Datetime("us"), "x": pl.Int64}, time_column="ts")
    t.append(pl.DataFrame({"ts": [dt.datetime(2024, 1, 1)], "x": [1]}))
    assert t.read([("ts", "==", "2024-01-01")]).height == 1
    assert t.read([("ts", "==", np.datetime64("2024-01-01"))]).height == 1
    with pytest.raises(bt.SchemaMismatchError) as e:
        t.read([("ts", "==", T0)])
    assert "it has a time zone and the column has none" in str(e.value)
    assert "use .replace(tzinfo=None) or .tz_localize(None)" in str(e.value)


def test_where_expression_with_a_mismatched_literal_is_a_bt_error_before_reading(times: bt.Table) -> None:
    with pytest.raises(bt.SchemaMismatchError) as e:
        times.scan(pl.col("ts") >= dt.datetime(2024, 1, 1, 0, 5))
    msg = str(e.value)
    assert msg.startswith("table 'times': where= expression")
    assert "cannot be applied to the table's columns" in msg
    assert "datetime(2024, 1, 2, tzinfo=ZoneInfo('UTC'))" in msg
    assert "where=[('ts', '>=', '2024-01-02')]" in msg
    with pytest.raises(bt.SchemaMismatchError, match="fix the column name"):
        times.read(pl.col("nope") > 1)
    # a correct expression is untouched
    assert times.read(pl.col("ts") >= dt.datetime(2024, 1, 1, 0, 5, tzinfo=UTC)).height == 5


def test_cli_where_parses_times_like_where_tuples(times: bt.Table) -> None:
    schema = times.schema
    for text, value in [
        ("2024-01-01T00:05", "2024-01-01T00:05"),
        ("2024-01-01 01:05+01:00", "2024-01-01 01:05+01:00"),
        ("2024-01-01T00:05:00Z", "2024-01-01T00:05:00Z"),
    ]:
        cli = filter_where(times.scan(), f"ts >= '{text}'", schema, table="times").collect()
        api = times.read([("ts", ">=", value)])
        assert cli["x"].to_list() == api["x"].to_list() == [5, 6, 7, 8, 9]
    ny = filter_where(times.scan(), "'2023-12-31 19:05' = ny", schema, table="times").collect()
    assert ny["x"].to_list() == [5]
    between = filter_where(times.scan(), "ts between '2024-01-01 00:02' and '2024-01-01T00:04Z'", schema, table="times")
    assert between.collect()["x"].to_list() == [2, 3, 4]
    dates = filter_where(times.scan(), "d in ('2024-01-02T00:00', '2023-01-01')", schema, table="times")
    assert dates.collect().height == 5
    with pytest.raises(UsageError) as e:
        filter_where(times.scan(), "d = '2024-01-02 12:00'", schema, table="times")
    assert "cannot be applied to table 'times'" in str(e.value)
    assert "column 'd' (Date): cannot compare with '2024-01-02 12:00' (str): it is not at midnight" in str(e.value)


# -- 3. create_table / append options on an existing table ------------------------------

SCHEMA = {"ts": pl.Datetime("us", "UTC"), "x": pl.Int64}


def test_create_table_with_a_different_max_block_rows_is_refused(store: bt.BacktraceStore) -> None:
    store.create_table("t", SCHEMA, time_column="ts", max_block_rows=1_000)
    # omitted or equal: opens the table as it is
    assert store.create_table("t", SCHEMA, time_column="ts").max_block_rows == 1_000
    assert store.create_table("t", SCHEMA, time_column="ts", max_block_rows=1_000).max_block_rows == 1_000
    with pytest.raises(bt.SchemaMismatchError) as e:
        store.create_table("t", SCHEMA, time_column="ts", max_block_rows=5_000)
    msg = str(e.value)
    assert msg.splitlines()[0] == (
        "table 't': exists with a different max_block_rows (table = existing, frame = requested)"
    )
    assert re.search(r"\(max_block_rows\) +1,000 +5,000 +different max_block_rows", msg), msg
    assert msg.splitlines()[-1] == (
        "Fix: leave out max_block_rows to use the table's own (see store['t']), drop the table first "
        "(store.drop_table), or use another name."
    )
    with pytest.raises(bt.SchemaMismatchError, match="different row_group_rows"):
        store.create_table("t", SCHEMA, time_column="ts", row_group_rows=7)


def test_create_table_with_the_default_max_block_rows_on_a_table_created_otherwise(
    store: bt.BacktraceStore,
) -> None:
    from bt_frames.table import DEFAULT_MAX_BLOCK_ROWS

    store.create_table("t", SCHEMA, time_column="ts", max_block_rows=10)
    with pytest.raises(bt.SchemaMismatchError, match="different max_block_rows"):
        store.create_table("t", SCHEMA, time_column="ts", max_block_rows=DEFAULT_MAX_BLOCK_ROWS)
    assert store.create_table("u", SCHEMA, time_column="ts").max_block_rows == DEFAULT_MAX_BLOCK_ROWS


def test_append_with_a_different_time_column_than_the_existing_tables_is_refused(store: bt.BacktraceStore) -> None:
    df = pl.DataFrame({"ts": [T0], "t2": [T0], "x": [1]})
    store.append("t", df, time_column="ts")
    assert store.append("t", df, time_column="ts") is not None  # the same: fine
    assert store.append("t", df) is not None  # omitted: fine
    with pytest.raises(bt.SchemaMismatchError) as e:
        store.append("t", df, time_column="t2")
    msg = str(e.value)
    assert msg.splitlines()[0] == "table 't': exists with a different time_column (table = existing, frame = requested)"
    assert re.search(r"\(time_column\) +ts +t2 +different time column", msg), msg
    assert "Fix: leave out time_column to use the table's own" in msg
    with pytest.raises(bt.SchemaMismatchError, match="different max_block_rows"):
        store.append("t", df, max_block_rows=3)
    assert store["t"].rows == 3  # the refused appends wrote nothing


# -- 4. raw errors that leaked ----------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "instead"),
    [
        (pl.Categorical, "Write pl.Categorical() instead."),
        (pl.Datetime, 'Write pl.Datetime("us", "UTC") (or pl.Datetime("us") for naive times) instead.'),
        (pl.Decimal, "Write pl.Decimal(precision, scale), e.g. pl.Decimal(18, 4) instead."),
        (pl.List, "Write pl.List(pl.Int64) (its element type) instead."),
    ],
)
def test_schema_with_a_bare_dtype_class_says_what_to_write(
    store: bt.BacktraceStore, dtype: type[pl.DataType], instead: str
) -> None:
    with pytest.raises(bt.SchemaMismatchError) as e:
        store.create_table("t", {"ts": pl.Datetime("us", "UTC"), "c": dtype}, time_column="ts")
    assert str(e.value) == (
        f"table 't', column 'c': pl.{dtype.__name__} is a dtype class, not a dtype; Polars wants it called "
        f"with its parameters. {instead}"
    )
    assert e.value.columns == ("c",)
    assert "t" not in store.tables
    # classes that need no parameters keep working
    assert store.create_table("ok", {"a": pl.Int64, "b": pl.String, "d": pl.Date}).schema["a"] == pl.Int64


def test_pyarrow_table_with_duplicate_column_names_names_them(store: bt.BacktraceStore) -> None:
    import pyarrow as pa

    data = pa.table([[1], [2], [3], [4]], names=["a", "b", "a", "a"])
    for obj, what in [(data, "pyarrow Table"), (data.to_batches()[0], "pyarrow RecordBatch")]:
        with pytest.raises(bt.SchemaMismatchError) as e:
            store.append("t", obj)
        assert str(e.value) == (
            f"table 't': the {what} has duplicate column names: 'a' (3 times). A table's columns must have "
            "unique names. Fix: rename them first, e.g. data.rename_columns([...]) with distinct names."
        )
        assert e.value.columns == ("a",)
    assert "t" not in store.tables


def _stats_dir_store(path: Path) -> None:
    with bt.open(path) as s:
        t = s.create_table("t", {"ts": pl.Datetime("us", "UTC"), "x": pl.Int64}, time_column="ts", max_block_rows=2)
        t.append(pl.DataFrame({"ts": [T0, T0, T0], "x": [1, 2, 3]}, schema=t.schema))
        t.flush()
    cache = path / "t" / "stats.arrow"
    cache.unlink()
    cache.mkdir()


def test_stats_cache_that_is_a_directory_never_fails_an_open(
    store_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _stats_dir_store(store_path)
    with caplog.at_level("WARNING", logger="bt_frames"):
        with bt.open(store_path, read_only=True) as ro:
            assert ro["t"].read()["x"].to_list() == [1, 2, 3]
            assert ro["t"].recovery.stats_cache == "corrupt"
        with bt.open(store_path) as s:
            t = s["t"]  # a writer rewrites a corrupt cache on open: that fails too, and is only logged
            assert t.read()["x"].to_list() == [1, 2, 3]
            t.append(pl.DataFrame({"ts": [T0, T0], "x": [4, 5]}, schema=t.schema))
            t.flush()
            assert t.rows == 5
    text = caplog.text
    assert "stats.arrow cannot be read" in text
    assert "treating it as corrupt and reading block footers" in text
    assert "stats.arrow cannot be written" in text
    assert (store_path / "t" / "stats.arrow").is_dir()


def _table_json(store_path: Path) -> Path:
    with bt.open(store_path) as s:
        s.create_table("t", {"ts": pl.Datetime("us", "UTC"), "x": pl.Int64}, time_column="ts", max_block_rows=10)
    return store_path / "t" / "table.json"


def test_table_json_has_a_checksum_and_an_edit_is_corruption_naming_the_file(store_path: Path) -> None:
    import json

    path = _table_json(store_path)
    doc = json.loads(path.read_text())
    assert isinstance(doc["checksum"], str)
    doc["max_block_rows"] = 11  # parses, and is plausible: only the checksum can tell
    path.write_text(json.dumps(doc))
    with bt.open(store_path) as s, pytest.raises(bt.CorruptionError) as e:
        s["t"]
    msg = str(e.value)
    assert e.value.path == path
    assert msg.startswith(f"corrupt table metadata {path}: its checksum ")
    assert "does not match its content" in msg
    assert "Restore table.json from a backup" in msg
    assert f"run `python -m bt_frames verify {store_path}`" in msg


def test_table_json_without_a_checksum_is_accepted(store_path: Path) -> None:
    import json

    path = _table_json(store_path)
    doc = json.loads(path.read_text())
    del doc["checksum"]  # as written by older versions (tests/fixtures/legacy_store_* has none either)
    path.write_text(json.dumps(doc, indent=2))
    with bt.open(store_path) as s:
        assert s["t"].max_block_rows == 10


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (lambda d: d.__setitem__("time_column", "nope"), "time_column 'nope' is not a column of the schema"),
        (lambda d: d.__setitem__("max_block_rows", 0), "max_block_rows is 0, not a positive integer"),
        (lambda d: d.__setitem__("row_group_rows", "7"), "row_group_rows is '7', not a positive integer"),
        (lambda d: d.__setitem__("pandas", [1]), "pandas is a list, not an object"),
        (lambda d: d.__setitem__("name", None), "name is None, not a table name"),
    ],
)
def test_table_json_with_impossible_fields_is_corruption(store_path: Path, edit: Any, why: str) -> None:
    import json

    path = _table_json(store_path)
    doc = json.loads(path.read_text())
    edit(doc)
    del doc["checksum"]  # even without a checksum to catch it
    path.write_text(json.dumps(doc))
    with bt.open(store_path) as s, pytest.raises(bt.CorruptionError) as e:
        s["t"]
    assert str(e.value).startswith(f"corrupt table metadata {path}: bad table metadata ({why}). Nothing was changed")


# -- 5. a dropped table, a read-only store -------------------------------------------------


def test_a_table_object_after_drop_table_says_dropped(store: bt.BacktraceStore) -> None:
    t = store.create_table("t", {"ts": pl.Datetime("us", "UTC"), "x": pl.Int64}, time_column="ts")
    t.append(pl.DataFrame({"ts": [T0], "x": [1]}, schema=t.schema))
    store.drop_table("t")
    want = (
        f"table 't' was dropped from store {str(store.path)!r} (store.drop_table); this Table object has no data "
        "any more. If you meant to keep using a table of that name, create it again (store.create_table('t', ...) "
        "or store.append('t', df)) and use the Table that returns."
    )
    for use in (lambda: t.rows, lambda: len(t), lambda: t.hot_rows, lambda: t.scan(), lambda: t.read(), t.snapshot):
        with pytest.raises(bt.TableDroppedError) as e:
            use()
        assert str(e.value) == want
        assert isinstance(e.value, bt.StoreClosedError)  # handlers of "closed" keep working
    with pytest.raises(bt.TableDroppedError):
        t.append(pl.DataFrame({"ts": [T0], "x": [2]}, schema=t.schema))
    assert repr(t) == "<bt_frames.Table 't' (dropped)>"
    # a closed (not dropped) table still says closed
    u = store.create_table("u", {"x": pl.Int64})
    store.close()
    with pytest.raises(bt.StoreClosedError, match="is closed") as e2:
        u.scan()
    assert not isinstance(e2.value, bt.TableDroppedError)


def test_table_not_found_on_a_read_only_store_does_not_suggest_create_table(store_path: Path) -> None:
    with bt.open(store_path) as s:
        s.create_table("orders", {"x": pl.Int64})
    with bt.open(store_path, read_only=True) as ro, pytest.raises(bt.TableNotFoundError) as e:
        ro["order"]
    msg = str(e.value)
    assert msg.startswith(f"store {str(store_path)!r} has no table 'order' (tables: 'orders'). Check the name")
    assert "This store was opened with read_only=True and cannot create tables" in msg
    assert "Create it with store.create_table" not in msg


def test_table_not_found_message_follows_the_store_mode() -> None:
    ro = bt.TableNotFoundError("db", "x", ["a"], read_only=True)
    assert str(ro) == (
        "store 'db' has no table 'x' (tables: 'a'). Check the name. This store was opened with read_only=True and "
        "cannot create tables: create it through a writer (bt.open(path)); a read-only store sees it once it exists."
    )
    rw = bt.TableNotFoundError("db", "x", [], read_only=False)
    assert str(rw) == (
        "store 'db' has no table 'x' (tables: none). Create it with store.create_table(...) or store.append(name, df)."
    )


# -- 6. the README links only to files the repository has -----------------------------------


def test_readme_references_only_files_that_exist() -> None:
    root = Path(__file__).resolve().parents[1]
    text = (root / "README.md").read_text()
    names = set(re.findall(r"`([\w./-]+\.(?:md|py))`", text)) | set(re.findall(r"\]\(([\w./-]+\.(?:md|py))\)", text))
    assert "DESIGN.md" not in text
    missing = sorted(n for n in names if not (root / n).exists())
    assert missing == [], f"README.md names files that do not exist: {missing}"


def test_a_script_that_never_closes_its_store_still_exits(tmp_path: Path) -> None:
    """Opening a store starts the WAL's zeroer (durability "fsync"), which writes and syncs 1 MiB of zeros
    ahead. A script that exits at once leaves the store to its finaliser, at interpreter exit, when Python
    has already ended that daemon thread mid-chunk: the close used to wait for the chunk forever."""
    import subprocess
    import sys

    db = tmp_path / "db"
    with bt.open(db) as s:
        t = s.create_table("o", {"x": pl.Int64}, max_block_rows=1_000_000)
        t.append(pl.DataFrame({"x": range(100)}))
    script = f"import bt_frames as bt\ns = bt.open({str(db)!r})\nprint(len(s['o']))\n"
    for _ in range(3):  # the zeroer is mid-chunk at exit nearly every time; three tries make it certain
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip() == "100"
    with bt.open(db) as s:
        assert len(s["o"]) == 100
        assert s.verify().ok
