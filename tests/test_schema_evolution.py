"""Schema evolution: ``table.add_columns`` and ``append(..., schema_mode="merge")``.

Every result is compared with the same concatenation done in plain Polars
(``pl.concat(..., how="diagonal_relaxed")``, enums cast to the final enum
first, since Polars finds no supertype of two enums). Bad input follows
tests/test_bad_input.py: a clear BtError, nothing changed (schema, table.json,
blocks, rows, WAL, files), then a good append succeeds. Crashes: the k-th
file operation of a schema change fails (tests/helpers/faultfs.py), or a
child process is SIGKILL'd between its steps; either way the next open sees
the old schema everywhere or the new one everywhere.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

import bt_frames as bt
from bt_frames.storage import catalog, fs, layout, recovery, wal
from bt_frames.storage import manifest as mf
from tests.conftest import ORDERS_SCHEMA, make_orders
from tests.helpers.faultfs import FaultFS
from tests.helpers.procs import listing

REPO = Path(__file__).resolve().parent.parent
T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[bt.BacktraceStore]:
    with bt.open(tmp_path / "db") as s:
        yield s


def model(frames: list[pl.DataFrame]) -> pl.DataFrame:
    """The plain Polars answer: a diagonal concatenation, every enum cast to the last (widest) one first."""
    enums: dict[str, pl.DataType] = {}
    for f in frames:
        for c, d in f.schema.items():
            if isinstance(d, pl.Enum):
                enums[c] = d
    cast = [f.with_columns(pl.col(c).cast(d) for c, d in enums.items() if c in f.columns) for f in frames]
    return pl.concat(cast, how="diagonal_relaxed")


def filled(store: bt.BacktraceStore, name: str = "orders") -> tuple[bt.Table, list[pl.DataFrame]]:
    """``name`` with two blocks (a multi-part append) and 30 hot rows in the WAL."""
    t = store.create_table(name, ORDERS_SCHEMA, time_column="ts", max_block_rows=100)
    frames = [make_orders(150), make_orders(30, start=150)]
    for f in frames:
        t.append(f)
    assert (len(t.blocks), t.hot_rows) == (2, 30)
    return t, frames


def state(t: bt.Table) -> dict[str, Any]:
    """Everything a schema change or an append could change."""
    return {
        "schema": t.schema,
        "table.json": (t.path / layout.TABLE_JSON).read_bytes(),
        "manifest": mf.list_versions(t.path),
        "blocks": t.blocks,
        "rows": t.rows,
        "hot_rows": t.hot_rows,
        "wal_state": t.wal_state,
        "contents": t.read(),
        "files": listing(t.path),
    }


def assert_same_state(before: dict[str, Any], after: dict[str, Any]) -> None:
    for key in before:
        if isinstance(before[key], pl.DataFrame):
            assert_frame_equal(after[key], before[key])
        else:
            assert after[key] == before[key], key


def assert_still_writable(t: bt.Table, frames: list[pl.DataFrame]) -> None:
    good = make_orders(7, start=10_000)
    assert isinstance(t.append(good), int)
    expected = model([*frames, good])
    assert_frame_equal(t.read(), expected)
    t.store.close()
    with bt.open(t.store.path) as again:
        assert_frame_equal(again[t.name].read(), expected)


# -- add_columns ------------------------------------------------------------------------------------------


def test_add_columns_then_append_reads_old_rows_as_null_and_prunes_old_blocks(store: bt.BacktraceStore) -> None:
    t, frames = filled(store)
    version = mf.list_versions(t.path)[-1]
    assert t.add_columns({"venue": pl.String, "fee": pl.Float32}) is None
    assert list(t.schema.items())[-2:] == [("venue", pl.String), ("fee", pl.Float32)]
    assert t.hot_rows == 0
    assert len(t.blocks) == 3
    newest = mf.load(t.path)
    assert newest.version > version
    assert newest.schema_version == newest.version
    doc = json.loads((t.path / mf.MANIFEST_DIR / mf.version_name(newest.version)).read_text())
    assert doc["operation"] == "add_columns"
    assert catalog.schema_from_b64(doc["schema"]) == t.schema
    assert catalog.TableMeta.load(t.path / layout.TABLE_JSON).schema == t.schema
    old = t.read()
    assert old.height == 180
    assert old["venue"].null_count() == 180
    assert old["fee"].null_count() == 180

    new = make_orders(20, start=200).with_columns(venue=pl.lit("X"), fee=pl.lit(0.5, dtype=pl.Float32))
    t.append(new)
    frames.append(new)
    assert_frame_equal(t.read(), model(frames))

    got = t.scan().filter(pl.col("venue") == "X").collect()
    assert_frame_equal(got, new)
    plan = t.last_plan
    assert plan is not None
    assert plan.blocks_scanned == 0
    t.flush()
    assert t.prune(pl.col("venue") == "X").blocks_scanned == 1
    assert t.prune(pl.col("venue").is_null()).blocks_scanned == 3
    assert t.prune(pl.col("fee") > 1).blocks_scanned == 0
    assert_frame_equal(t.scan().filter(pl.col("venue").is_null()).collect(), old)
    assert t.scan().select(pl.len()).collect().item() == 200
    assert t.scan().filter(pl.col("venue").is_null()).select(pl.len()).collect().item() == 180
    assert_frame_equal(pl.concat(list(t.iter_batches(batch_size=64))), model(frames))
    blocks = t.blocks
    assert blocks["null_count.venue"].to_list() == [100, 50, 30, 0]
    assert t.time_range() == (frames[0]["ts"][0], new["ts"][-1])

    store.close()
    with bt.open(store.path) as again:
        t2 = again["orders"]
        assert t2.recovery.blocks_from_footer == 0  # the statistics cache survived the schema change
        assert_frame_equal(t2.read(), model(frames))
        assert t2.prune(pl.col("venue") == "X").blocks_scanned == 1
        assert again.verify().ok
        t2.compact(target_rows=1_000, min_rows=1_000)  # an old block merged with the new one: the new schema
        assert t2.blocks["null_count.venue"].to_list() == [100, 50, 30]  # (the parts of an append stay apart)
        assert_frame_equal(t2.read(), model(frames))


def test_add_columns_with_pandas(store: bt.BacktraceStore) -> None:
    idx = pd.DatetimeIndex(pd.date_range("2024-01-01", periods=5, freq="s", tz="UTC"), name="ts")
    first = pd.DataFrame({"px": [1.0, 2.0, 3.0, 4.0, 5.0], "n": pd.array([1, 2, 3, 4, 5], dtype="int32")}, index=idx)
    store.append("p", first)
    t = store["p"]
    t.add_columns({"venue": pl.String})
    idx2 = pd.DatetimeIndex(pd.date_range("2024-01-02", periods=2, freq="s", tz="UTC"), name="ts")
    second = pd.DataFrame({"px": [6.0, 7.0], "n": pd.array([6, 7], dtype="int32"), "venue": ["A", None]}, index=idx2)
    store.append("p", second)
    got = t.to_pandas()
    assert list(got.columns) == ["px", "n", "venue"]
    assert got.index.name == "ts"
    assert len(got) == 7
    pd.testing.assert_frame_equal(got[["px", "n"]], pd.concat([first, second])[["px", "n"]], check_freq=False)
    assert got["venue"].isna().tolist() == [True] * 5 + [False, True]
    assert got["venue"].iloc[5] == "A"
    # a merge from pandas widens n and adds a column: their pandas dtypes come from that frame
    third = pd.DataFrame({"px": [8.0], "n": pd.array([2**40], dtype="int64"), "q": [1.5]},
                         index=pd.DatetimeIndex([pd.Timestamp("2024-01-03", tz="UTC")], name="ts"))  # fmt: skip
    second.bt.append(store, "p", schema_mode="merge")
    third.bt.append(store, "p", schema_mode="merge")
    got = t.to_pandas()
    assert got["n"].dtype == "int64"
    assert got["n"].tolist()[-1] == 2**40
    assert got["q"].dtype == "float64"
    assert got["q"].isna().sum() == 9


def test_a_reader_in_another_process_sees_the_new_schema_after_refresh(store: bt.BacktraceStore) -> None:
    t, _frames = filled(store)
    t.flush()
    code = textwrap.dedent(
        """
        import json, sys
        import polars as pl
        import bt_frames as bt
        s = bt.open(sys.argv[1], read_only=True)
        t = s["orders"]
        print(json.dumps({"cols": t.schema.names(), "rows": t.rows}), flush=True)
        sys.stdin.readline()
        s.refresh()
        df = t.read()
        x = t.scan().filter(pl.col("venue") == "X").collect()
        print(json.dumps({"cols": t.schema.names(), "rows": df.height, "nulls": df["venue"].null_count(),
                          "x": x.height, "scanned": t.last_plan.blocks_scanned}), flush=True)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "BT_FRAMES_PROGRESS": "0"}
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(store.path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert child.stdout is not None
        assert child.stdin is not None
        first = json.loads(child.stdout.readline())
        assert first == {"cols": list(ORDERS_SCHEMA), "rows": 180}
        t.add_columns({"venue": pl.String})
        t.append(make_orders(4, start=500).with_columns(venue=pl.lit("X")))
        child.stdin.write("go\n")
        child.stdin.flush()
        second = json.loads(child.stdout.readline())
    finally:
        child.kill()
        child.communicate()
    assert second == {"cols": [*ORDERS_SCHEMA, "venue"], "rows": 184, "nulls": 180, "x": 4, "scanned": 0}


# -- schema_mode="merge" ------------------------------------------------------------------------------------


def _ts(n: int, start: int) -> pl.Series:
    return pl.Series("ts", [T0 + dt.timedelta(seconds=start + i) for i in range(n)], dtype=pl.Datetime("us", "UTC"))


BASE = {
    "ts": pl.Datetime("us", "UTC"),
    "i": pl.Int32,
    "u": pl.UInt16,
    "f": pl.Float32,
    "d": pl.Decimal(6, 2),
    "e": pl.Enum(["buy", "sell"]),
}


def _base(n: int, start: int) -> pl.DataFrame:
    return pl.DataFrame(
        [
            _ts(n, start),
            pl.Series("i", [start + k for k in range(n)], dtype=pl.Int32),
            pl.Series("u", [k % 7 for k in range(n)], dtype=pl.UInt16),
            pl.Series("f", [k / 4 for k in range(n)], dtype=pl.Float32),
            pl.Series("d", [Decimal(f"{k}.25") for k in range(n)], dtype=pl.Decimal(6, 2)),
            pl.Series("e", [["buy", "sell"][k % 2] for k in range(n)], dtype=pl.Enum(["buy", "sell"])),
        ]
    )


MERGES: dict[str, Any] = {
    "new column": lambda df: df.with_columns(venue=pl.lit("X")),
    "Int32->Int64": lambda df: df.with_columns(pl.col("i").cast(pl.Int64) + 2**40),
    "UInt16->Int32": lambda df: df.with_columns(pl.col("u").cast(pl.Int32) - 5),
    "Float32->Float64": lambda df: df.with_columns(pl.col("f").cast(pl.Float64) + 0.1),
    "Decimal widening": lambda df: df.with_columns(
        pl.Series("d", [Decimal("12345.6789")] * df.height, dtype=pl.Decimal(12, 4))
    ),
    "Enum extension": lambda df: df.with_columns(
        pl.Series("e", ["hold"] * df.height, dtype=pl.Enum(["buy", "sell", "hold"]))
    ),
    "missing column": lambda df: df.drop("f"),
    "all at once": lambda df: df.drop("u").with_columns(
        pl.col("i").cast(pl.Int64),
        pl.col("f").cast(pl.Float64),
        pl.Series("e", ["hold"] * df.height, dtype=pl.Enum(["buy", "sell", "hold"])),
        venue=pl.lit("Y"),
        w=pl.lit(3, dtype=pl.Int8),
    ),
}


@pytest.mark.parametrize("case", list(MERGES))
def test_merge_matches_plain_polars(store: bt.BacktraceStore, case: str) -> None:
    t = store.create_table("m", BASE, time_column="ts", max_block_rows=50)
    frames = [_base(30, 0), _base(10, 60)]  # a block and hot rows
    t.append(frames[0])
    t.flush()
    t.append(frames[1])
    merged = MERGES[case](_base(8, 100))
    t.append(merged, schema_mode="merge")
    frames.append(merged)
    expected = model(frames)
    assert t.schema == expected.schema
    assert_frame_equal(t.read(), expected)
    more = MERGES[case](_base(5, 200))
    mode = "merge" if case in ("missing column", "all at once") else "strict"  # the schema has evolved
    t.append(more, schema_mode=mode)
    frames.append(more)
    expected = model(frames)
    assert_frame_equal(t.read(), expected)  # hot rows of the new schema
    store.close()
    with bt.open(store.path) as s2:  # the WAL replayed
        t2 = s2["m"]
        assert t2.schema == expected.schema
        assert_frame_equal(t2.read(), expected)
        t2.flush()
        assert_frame_equal(t2.read(), expected)
        t2.compact(target_rows=1_000, min_rows=1_000)
        assert len(t2.blocks) == 1
        assert_frame_equal(t2.read(), expected)
        assert_frame_equal(pl.concat(list(t2.iter_batches(batch_size=7))), expected)
        assert s2.verify().ok


def test_merge_via_store_and_the_polars_namespace(store: bt.BacktraceStore) -> None:
    t = store.create_table("m", BASE, time_column="ts")
    a, b, c = _base(3, 0), MERGES["new column"](_base(3, 10)), MERGES["Int32->Int64"](_base(3, 20))
    store.append("m", a)
    store.append("m", b, schema_mode="merge")
    c.bt.append(store, "m", schema_mode="merge")
    assert_frame_equal(t.read(), model([a, b, c]))
    with pytest.raises(bt.BtError, match="schema_mode='loose' is not a schema mode"):
        store.append("m", a, schema_mode="loose")  # type: ignore[arg-type]
    with pytest.raises(bt.BtError, match="is not a schema mode"):
        t.append(a, schema_mode="MERGE")  # type: ignore[arg-type]


def test_wal_records_of_an_older_schema_are_widened_on_replay(tmp_path: Path) -> None:
    """A writer that changed the schema without freezing first (or a crash that left such a WAL): the
    records replay widened, with the columns they lack null."""
    with bt.open(tmp_path / "db") as s:
        t = s.create_table("m", BASE, time_column="ts")
        frames = [_base(4, 0), _base(3, 10)]
        for f in frames:
            t.append(f)
        path = t.path
    new = pl.Schema({**BASE, "i": pl.Int64(), "e": pl.Enum(["buy", "sell", "hold"]), "venue": pl.String()})
    m = mf.Manifest(path, mf.load(path))
    m.commit(mf.Edit("add_columns", schema=catalog.schema_to_b64(new)))  # table.json left behind: a crash
    scan = next(iter(wal.scan_wal(path / layout.WAL_DIR)))
    got = recovery.decode_payload(scan.path, scan.records[0], new)
    assert got.schema == new
    assert got["venue"].null_count() == 4
    with pytest.raises(bt.CorruptionError, match="not the table's"):
        recovery.decode_payload(scan.path, scan.records[0], pl.Schema({**BASE, "i": pl.Int16()}))
    with bt.open(tmp_path / "db", read_only=True) as r:  # a reader takes the manifest's schema
        assert r["m"].schema == new
        assert_frame_equal(r["m"].read(), pl.concat(frames).with_columns(
            pl.col("i").cast(pl.Int64), pl.col("e").cast(new["e"]), venue=pl.lit(None, pl.String)))  # fmt: skip
    with bt.open(tmp_path / "db") as s:
        t = s["m"]
        assert t.schema == new
        assert t.recovery.records_replayed == 2
        assert catalog.TableMeta.load(path / layout.TABLE_JSON).schema == new  # the writer completed it
        extra = MERGES["Enum extension"](_base(2, 50)).with_columns(pl.col("i").cast(pl.Int64), venue=pl.lit("Z"))
        t.append(extra)
        assert_frame_equal(t.read(), model([*frames, extra]))


# -- bad input: a clear BtError, nothing changed, still writable ---------------------------------------------

BAD_MERGES: dict[str, tuple[Any, str, str]] = {
    "narrowing Float64 with fractions into Int64": (
        lambda df: df.with_columns(pl.col("qty").cast(pl.Float64) + 0.5),
        "qty",
        "Float64",
    ),
    "String into Int64": (lambda df: df.with_columns(pl.col("qty").cast(pl.String)), "qty", "String"),
    "Int64 into Float64 with a new column": (
        lambda df: df.with_columns(price=pl.lit(2**53 + 1, dtype=pl.Int64), venue=pl.lit("X")),
        "price",
        "Int64",
    ),
    "Boolean into String": (lambda df: df.with_columns(symbol=pl.lit(True)), "symbol", "Boolean"),
}


@pytest.mark.parametrize("case", list(BAD_MERGES))
def test_merge_refuses_what_is_not_a_widening(store: bt.BacktraceStore, case: str) -> None:
    t, frames = filled(store)
    make, column, frame_type = BAD_MERGES[case]
    before = state(t)
    with pytest.raises(bt.SchemaMismatchError) as exc:
        t.append(make(make_orders(5, start=900)), schema_mode="merge")
    msg = str(exc.value)
    assert exc.value.table == "orders"
    assert column in exc.value.columns
    (line,) = [ln for ln in msg.splitlines() if ln.split()[:1] == [column]]
    assert str(ORDERS_SCHEMA[column]().__class__.__name__) in line
    assert frame_type in line
    assert 'schema_mode="merge" adds columns and widens types only losslessly' in msg
    assert_same_state(before, state(t))
    assert_still_writable(t, frames)


def test_merge_never_fills_the_time_column(store: bt.BacktraceStore) -> None:
    t, frames = filled(store)
    before = state(t)
    with pytest.raises(bt.SchemaMismatchError, match="the time column is missing") as exc:
        t.append(make_orders(3).drop("ts"), schema_mode="merge")
    assert exc.value.columns == ("ts",)
    with pytest.raises(bt.SchemaMismatchError, match="null value"):
        t.append(make_orders(3).with_columns(ts=pl.lit(None, ORDERS_SCHEMA["ts"]), v=pl.lit(1)), schema_mode="merge")
    assert_same_state(before, state(t))
    assert_still_writable(t, frames)


@pytest.mark.parametrize("via", ["table", "store", "namespace"])
def test_strict_append_of_a_new_column_says_how_to_evolve(store: bt.BacktraceStore, via: str) -> None:
    t, frames = filled(store)
    before = state(t)
    bad = make_orders(3, start=900).with_columns(venue=pl.lit("X"))
    appends = {
        "table": lambda: t.append(bad),
        "store": lambda: store.append("orders", bad),
        "namespace": lambda: bad.bt.append(store, "orders"),
    }
    with pytest.raises(bt.SchemaMismatchError) as exc:
        appends[via]()
    msg = str(exc.value)
    assert "venue" in exc.value.columns
    assert "not in the table" in msg
    assert 'schema_mode="merge"' in msg
    assert "table.add_columns" in msg
    assert_same_state(before, state(t))
    assert_still_writable(t, frames)


BAD_ADDS: dict[str, tuple[Any, str]] = {
    "an existing column": ({"qty": pl.Int32}, "'qty' already exist"),
    "an existing and a new column": ({"venue": pl.String, "price": pl.Float64}, "'price' already exist"),
    "a dtype class that needs parameters": ({"when": pl.Datetime}, "is a dtype class, not a dtype"),
    "an Object column": ({"o": pl.Object}, "cannot be stored"),
    "not a dtype": ({"x": "int"}, "invalid schema"),
    "empty": ({}, "needs a non-empty dict"),
    "not a dict": (["venue"], "needs a non-empty dict"),
    "a non-string name": ({3: pl.Int64}, "not non-empty strings"),
}


@pytest.mark.parametrize("case", list(BAD_ADDS))
def test_add_columns_refuses_bad_input(store: bt.BacktraceStore, case: str) -> None:
    t, frames = filled(store)
    columns, message = BAD_ADDS[case]
    before = state(t)
    with pytest.raises(bt.BtError, match=message) as exc:
        t.add_columns(columns)
    assert "'orders'" in str(exc.value)
    assert_same_state(before, state(t))
    assert_still_writable(t, frames)


def test_add_columns_on_a_read_only_store(store: bt.BacktraceStore) -> None:
    t, frames = filled(store)
    t.flush()
    before = state(t)
    with bt.open(store.path, read_only=True) as r, pytest.raises(bt.ReadOnlyError, match="read_only=True"):
        r["orders"].add_columns({"venue": pl.String})
    with bt.open(store.path, read_only=True) as r, pytest.raises(bt.ReadOnlyError):
        r["orders"].append(make_orders(2).with_columns(v=pl.lit(1)), schema_mode="merge")
    assert_same_state(before, state(t))
    assert_still_writable(t, frames)


# -- property: random merges vs the plain Polars model ----------------------------------------------------

LADDERS: dict[str, list[pl.DataType]] = {
    "a": [pl.Int8(), pl.Int16(), pl.Int32(), pl.Int64()],
    "b": [pl.UInt8(), pl.UInt16(), pl.Int32()],
    "c": [pl.Float32(), pl.Float64()],
    "s": [pl.String()],
    "d": [pl.Decimal(5, 2), pl.Decimal(9, 3)],
    "e": [pl.Enum(["x"]), pl.Enum(["x", "y"]), pl.Enum(["x", "y", "z"])],
}


def _values(dtype: pl.DataType, n: int, seed: int) -> pl.Series:
    if isinstance(dtype, pl.Enum):
        cats = dtype.categories.to_list()
        vals: list[Any] = [cats[(seed + k) % len(cats)] for k in range(n)]
    elif isinstance(dtype, pl.Decimal):
        vals = [Decimal(f"{(seed + k) % 100}.{k % 10}") for k in range(n)]
    elif dtype == pl.String:
        vals = [f"v{seed + k}" for k in range(n)]
    elif dtype.is_float():
        vals = [(seed + k) / 8 for k in range(n)]
    else:
        vals = [(seed + k) % 100 for k in range(n)]
    vals = [None if (seed + k) % 5 == 0 else v for k, v in enumerate(vals)]
    return pl.Series(vals, dtype=dtype)


op = st.one_of(
    st.tuples(
        st.just("append"),
        st.integers(1, 12),
        st.lists(st.tuples(st.sampled_from(sorted(LADDERS)), st.integers(0, 3)), max_size=4, unique_by=lambda x: x[0]),
    ),
    st.tuples(st.sampled_from(["flush", "reopen", "compact"]), st.just(0), st.just([])),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(op, min_size=1, max_size=10))
def test_random_merges_match_plain_polars(tmp_path_factory: pytest.TempPathFactory, ops: list[Any]) -> None:
    path = tmp_path_factory.mktemp("prop") / "db"
    s = bt.open(path)
    t = s.create_table("p", {"ts": pl.Datetime("us", "UTC"), "v": pl.Int64}, time_column="ts", max_block_rows=16)
    frames: list[pl.DataFrame] = []
    levels: dict[str, int] = {}
    at = 0
    try:
        for kind, n, cols in ops:
            if kind == "append":
                series = [_ts(n, at), pl.Series("v", range(at, at + n), dtype=pl.Int64)]
                for name, level in cols:
                    ladder = LADDERS[name]
                    lv = min(level, len(ladder) - 1)
                    # a frame narrower than the table is fine (coerced); the table keeps its widest type
                    levels[name] = max(levels.get(name, lv), lv)
                    series.append(_values(ladder[lv], n, at).alias(name))
                f = pl.DataFrame(series)
                t.append(f, schema_mode="merge")
                frames.append(f)
                at += n
            elif kind == "flush":
                t.flush()
            elif kind == "compact":
                t.compact(target_rows=64, min_rows=64)
            else:
                s.close()
                s = bt.open(path)
                t = s["p"]
            if frames:
                final = {c: LADDERS[c][lv] for c, lv in levels.items()}
                want = model(
                    [f.with_columns(pl.col(c).cast(final[c]) for c in f.columns if c in final) for f in frames]
                )
                assert t.schema == want.schema
                assert_frame_equal(t.read(), want)
        s.close()
        with bt.open(path, read_only=True) as r:
            if frames:
                assert_frame_equal(r["p"].read(), want)
    finally:
        s.close()


# -- crashes ------------------------------------------------------------------------------------------------


def _consistent(path: Path, old: pl.Schema, new: pl.Schema, frames: list[pl.DataFrame]) -> pl.Schema:
    """The table opens with the old or the new schema, everywhere (reader, then writer, then table.json),
    holds every row, and takes an append of its schema; returns which schema it has."""
    with bt.open(path, read_only=True) as r:
        seen = r["orders"].schema
        assert seen in (old, new)
        assert_frame_equal(r["orders"].read(), model(frames).select(pl.col(c).cast(d) if c in frames[0].columns
                           else pl.lit(None, d).alias(c) for c, d in seen.items()))  # fmt: skip
    with bt.open(path) as s:
        t = s["orders"]
        assert t.schema == seen
        assert catalog.TableMeta.load(t.path / layout.TABLE_JSON).schema == seen
        extra = make_orders(3, start=5_000)
        if "venue" in seen:
            extra = extra.with_columns(venue=pl.lit("V"))
        t.append(extra)
        assert t.rows == sum(f.height for f in frames) + 3
        assert s.verify().ok
    return seen


@pytest.mark.parametrize("kind", ["replace", "fsync", "write", "fsync_dir", "create"])
def test_a_failing_file_operation_during_add_columns_leaves_one_schema(tmp_path: Path, kind: str) -> None:
    def prepare(base: Path) -> tuple[bt.BacktraceStore, bt.Table, list[pl.DataFrame]]:
        s = bt.open(base / "db")
        t, frames = filled(s)
        return s, t, frames

    s, t, _frames = prepare(tmp_path / "dry")
    counter = FaultFS()
    with fs.use(counter):
        t.add_columns({"venue": pl.String})
    new = t.schema
    s.close()
    n = counter.counts[kind]
    assert n > 0
    outcomes = set()
    for k in range(1, n + 1):
        s, t, frames = prepare(tmp_path / f"k{k}")
        old = t.schema
        ffs = FaultFS(kind, k, 28, root=str(tmp_path / f"k{k}"))  # ENOSPC
        with fs.use(ffs):
            try:
                t.add_columns({"venue": pl.String})
                raised = False
            except bt.BtError:
                raised = True
        assert ffs.injected is not None
        assert t.schema == (old if raised else new), ffs.injected
        s.close()
        outcomes.add(_consistent(tmp_path / f"k{k}" / "db", old, new, frames) == new)
    assert outcomes == ({False, True} if kind in ("replace", "fsync", "write", "create") else outcomes)


CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import polars as pl
    import bt_frames as bt
    from bt_frames.storage import catalog, layout
    from bt_frames.storage import manifest as mf
    point = sys.argv[2]
    s = bt.open(sys.argv[1])
    die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    if point == "before-version":
        commit = mf.Manifest.commit
        mf.Manifest.commit = lambda self, e: die() if e.schema else commit(self, e)
    elif point == "before-table.json":
        write = layout.atomic_write
        layout.atomic_write = lambda p, *a, **k: die() if p.name == layout.TABLE_JSON else write(p, *a, **k)
    elif point == "before-cache":
        cache = catalog.write_cache
        catalog.write_cache = lambda d, stats, schema, *a: die() if "venue" in schema else cache(d, stats, schema, *a)
    s["orders"].add_columns({"venue": pl.String})
    print("done", flush=True)
    """
)


@pytest.mark.parametrize(
    ("point", "changed"),
    [("before-version", False), ("before-table.json", True), ("before-cache", True), ("none", True)],
)
def test_sigkill_during_add_columns_leaves_one_schema(tmp_path: Path, point: str, changed: bool) -> None:
    with bt.open(tmp_path / "db") as s:
        t, frames = filled(s)
        old = t.schema
    new = pl.Schema({**old, "venue": pl.String()})
    env = {**os.environ, "PYTHONPATH": str(REPO), "BT_FRAMES_PROGRESS": "0"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "db"), point], env=env, capture_output=True, text=True, timeout=120
    )
    if point == "none":
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "done"
    else:
        assert out.returncode == -signal.SIGKILL, out.stderr
    if point == "before-table.json":  # the version committed, table.json still old: the manifest wins
        assert catalog.TableMeta.load(tmp_path / "db" / "orders" / layout.TABLE_JSON).schema == old
    assert _consistent(tmp_path / "db", old, new, frames) == (new if changed else old)
