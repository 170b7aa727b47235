"""The lifecycle operations one by one: pruning, bad input, time travel, vacuum, retention, LazyFrame chains.

- pruning: a delete, update or upsert opens only the blocks whose statistics
  cannot decide it (``table.last_change.blocks_read``), retires blocks where
  every row goes without reading them, and leaves every other block file as
  it was; a change that matches nothing commits no version;
- bad input: a clear ``bt.BtError`` naming the table and the problem, and
  nothing changed (schema, rows, blocks, versions, WAL, files); the table then
  takes an append; a read-only store refuses every write;
- time travel and vacuum: ``scan(as_of=)`` by version, datetime and ISO
  string; vacuum frees exactly the bytes of the files it deletes and never a
  live block, one a running read pins, or one younger than ``retired_grace``;
  ``keep_versions`` purges by itself;
- retention, relative to the newest time value (the data are from 2015);
- LazyFrame chains over ``scan()`` after deletes/updates/upserts equal the same
  chains over the model frame.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import bt_frames as bt
from tests.helpers.procs import listing

SCHEMA = pl.Schema(
    {
        "id": pl.Int64(),
        "ts": pl.Datetime("us", "UTC"),
        "symbol": pl.String(),
        "qty": pl.Int64(),
        "price": pl.Float64(),
    }
)
T0 = dt.datetime(2015, 6, 1, tzinfo=dt.UTC)
SYMS = ["A", "B", "C", None]


def rows(start: int, n: int, *, step_s: int = 1) -> pl.DataFrame:
    """Rows ``start..start+n-1``: id = the row number, ts = T0 + id * step_s, nulls in symbol and qty."""
    ids = list(range(start, start + n))
    return pl.DataFrame(
        {
            "id": ids,
            "ts": [T0 + dt.timedelta(seconds=i * step_s) for i in ids],
            "symbol": [SYMS[i % 4] for i in ids],
            "qty": [None if i % 7 == 3 else i % 10 for i in ids],
            "price": [i * 0.25 for i in ids],
        },
        schema=SCHEMA,
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[bt.BacktraceStore]:
    with bt.open(tmp_path / "db", retired_grace=0) as s:
        yield s


def blocky(
    store: bt.BacktraceStore, nblocks: int = 50, per: int = 20, name: str = "t"
) -> tuple[bt.Table, pl.DataFrame]:
    """A table of ``nblocks`` time-ordered single-LSN blocks of ``per`` rows (one append + flush each)."""
    t = store.create_table(name, SCHEMA, time_column="ts", max_block_rows=1_000, auto_compact=False)
    for b in range(nblocks):
        t.append(rows(b * per, per))
        t.flush()
    assert t.blocks.height == nblocks
    return t, rows(0, nblocks * per)


def names(t: bt.Table) -> list[str]:
    return t.blocks["block"].to_list()


def files(t: bt.Table) -> set[str]:
    return {p.name for p in (t.path / "blocks").iterdir() if p.suffix == ".parquet"}


# -- pruning ----------------------------------------------------------------------------------------------------


def test_delete_before_a_cutoff_reads_at_most_one_block(store: bt.BacktraceStore) -> None:
    t, model = blocky(store)
    before = names(t)
    cutoff = T0 + dt.timedelta(seconds=17 * 20 + 9)  # inside block 17
    n = t.delete(pl.col("ts") < cutoff)
    assert n == 17 * 20 + 9
    c = t.last_change
    assert c is not None
    assert (c.operation, c.rows_removed, c.rows_added) == ("delete", n, 0)
    assert c.blocks_read <= 1, c
    assert c.blocks_replaced == 18, c  # 17 retired unread + the one read
    after = names(t)
    assert after[-32:] == before[-32:], "blocks after the cutoff were rewritten"
    assert set(before[:18]).isdisjoint(after), "a block holding deleted rows is still live"
    assert len(after) == 34, "a run of emptied blocks is replaced by one empty block"
    assert_frame_equal(t.scan().collect(), model.filter(pl.col("ts") >= cutoff))
    assert t.versions.filter(pl.col("operation") == "delete")["rows_removed"].to_list() == [n]


def test_delete_on_a_block_boundary_reads_nothing(store: bt.BacktraceStore) -> None:
    t, model = blocky(store)
    cutoff = T0 + dt.timedelta(seconds=10 * 20)
    assert t.delete(pl.col("ts") < cutoff) == 200
    c = t.last_change
    assert c is not None
    assert c.blocks_read == 0, c
    assert c.blocks_replaced == 10
    assert_frame_equal(t.scan().collect(), model.slice(200))


def test_a_delete_matching_nothing_commits_no_version(store: bt.BacktraceStore) -> None:
    t, model = blocky(store, 10)
    t.update(rows(5, 2).with_columns(qty=pl.lit(99, pl.Int64)))  # last_change is an update now
    model = t.scan().collect()
    versions, blocks_before, on_disk = t.versions, t.blocks, files(t)
    assert t.delete(pl.col("ts") > T0 + dt.timedelta(days=30)) == 0
    c = t.last_change
    assert c is not None
    assert (c.operation, c.version, c.rows_removed, c.blocks_read, c.blocks_replaced) == ("delete", 0, 0, 0, 0), c
    assert t.delete(pl.col("qty") == 12345) == 0  # the statistics cannot rule it out: blocks read, nothing changes
    assert t.last_change is not None
    assert t.last_change.version == 0
    assert_frame_equal(t.versions, versions)
    assert_frame_equal(t.blocks, blocks_before)
    assert files(t) == on_disk, "a change that committed nothing left or removed files"
    assert_frame_equal(t.scan().collect(), model)


@pytest.mark.parametrize("operation", ["update", "upsert"])
def test_rows_replaced_by_equal_rows_are_counted_and_committed(store: bt.BacktraceStore, operation: str) -> None:
    """Found by the model test: an upsert of a row equal to the stored one reported 0 rows and no version.

    As a database counts the rows an UPDATE sets to their own values, the change counts what it matched and
    records a version -- one that changes no block (the rewrite has the same content, so the same name).
    """
    t, model = blocky(store, 4)
    versions, blocks_before, on_disk = t.versions, t.blocks, files(t)
    same = model.slice(25, 3)
    c = t.update(same) if operation == "update" else t.upsert(same, on=["id"])
    assert (c.operation, c.rows_added, c.rows_removed, c.blocks_replaced, c.bytes_written) == (
        operation,
        3,
        3,
        0,
        0,
    ), c
    assert c.version == versions.height + 1, c
    row = t.versions.row(-1, named=True)
    assert (row["version"], row["operation"], row["rows_added"], row["rows_removed"], row["rows"]) == (
        c.version,
        operation,
        3,
        3,
        model.height,
    ), row
    assert_frame_equal(t.blocks, blocks_before)
    assert files(t) == on_disk, "a rewrite to the same content left or removed files"
    assert_frame_equal(t.scan().collect(), model)
    assert_frame_equal(t.scan(as_of=c.version).collect(), model)
    assert t.upsert(same.clear(), on=["id"]).version == 0, "an empty frame still changes nothing"


@pytest.mark.parametrize("everything", [pl.lit(True), pl.lit(value=True) | pl.col("qty").is_null()])
def test_delete_everything_counts_every_row(store: bt.BacktraceStore, everything: pl.Expr) -> None:
    """delete's own error message says: to delete every row, pass pl.lit(True)."""
    t, model = blocky(store, 6)
    t.append(rows(120, 5))  # and hot rows
    assert t.delete(everything) == model.height + 5
    c = t.last_change
    assert c is not None
    assert c.rows_removed == model.height + 5
    assert t.rows == 0
    assert t.scan().collect().height == 0
    last = t.versions.row(-1, named=True)
    assert (last["operation"], last["rows_removed"], last["rows"]) == ("delete", model.height + 5, 0)
    assert t.delete(pl.lit(False)) == 0
    t.append(rows(200, 3))
    assert t.delete(pl.lit(False)) == 0
    assert_frame_equal(t.scan().collect(), rows(200, 3))


def test_update_of_a_narrow_range_touches_only_its_blocks(store: bt.BacktraceStore) -> None:
    t, model = blocky(store)
    before = names(t)
    new = rows(30 * 20 + 4, 5).with_columns(qty=pl.lit(-1, pl.Int64), price=pl.lit(-1.0))
    c = t.update(new)
    assert (c.rows_added, c.rows_removed) == (5, 5)
    assert c.blocks_read <= 1, c
    assert c.blocks_replaced == 1, c
    after = names(t)
    assert [b for b in after if b not in before] != []
    assert len(set(before) - set(after)) == 1
    assert set(before) - set(after) == {before[30]}
    expected = pl.concat([model.slice(0, 604), new, model.slice(609)])
    assert_frame_equal(t.scan().collect(), expected)


def test_update_spanning_two_blocks_reads_at_most_two(store: bt.BacktraceStore) -> None:
    t, model = blocky(store)
    new = rows(30 * 20 + 15, 10).with_columns(qty=pl.lit(-1, pl.Int64))
    c = t.update(new)
    assert c.blocks_read <= 2, c
    assert c.blocks_replaced == 2, c
    assert_frame_equal(t.scan().collect(), pl.concat([model.slice(0, 615), new, model.slice(625)]))


@pytest.mark.parametrize("on", [["id"], ["ts", "symbol"]])
def test_upsert_reads_only_the_blocks_of_its_keys(store: bt.BacktraceStore, on: list[str]) -> None:
    t, model = blocky(store)
    before = names(t)
    hit = rows(20 * 20 + 4, 3).with_columns(qty=pl.lit(-5, pl.Int64))  # symbols A, B, C: no null key
    c = t.upsert(hit, on=on)
    assert (c.rows_added, c.rows_removed) == (3, 3)
    assert c.blocks_read <= 1, c
    assert c.blocks_replaced == 1, c
    assert set(before) - set(names(t)) == {before[20]}
    model = pl.concat([model.slice(0, 404), hit, model.slice(407)])
    assert_frame_equal(t.scan().collect(), model)


@pytest.mark.parametrize("on", [["id"], ["ts", "symbol"]])
def test_upsert_of_new_keys_after_the_table_reads_no_block(store: bt.BacktraceStore, on: list[str]) -> None:
    t, model = blocky(store)
    before = names(t)
    new = rows(5_000, 3)
    c = t.upsert(new, on=on)
    assert (c.rows_added, c.rows_removed, c.blocks_replaced) == (3, 0, 0)
    assert c.blocks_read == 0, f"new keys outside every block's statistics, yet {c.blocks_read} blocks were read"
    assert names(t)[:50] == before
    assert_frame_equal(t.scan().collect(), pl.concat([model, new]))


# -- bad input --------------------------------------------------------------------------------------------------


def state(t: bt.Table) -> dict[str, Any]:
    return {
        "schema": t.schema,
        "contents": t.scan().collect(),
        "rows": t.rows,
        "hot_rows": t.hot_rows,
        "blocks": t.blocks,
        "versions": t.versions.height,
        "wal_state": t.wal_state,
        "options": t.options,
        "files": listing(t.path),
    }


def assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    for key in before:
        if isinstance(before[key], pl.DataFrame):
            assert_frame_equal(after[key], before[key])
        else:
            assert after[key] == before[key], key


@pytest.fixture
def filled(store: bt.BacktraceStore) -> tuple[bt.Table, pl.DataFrame]:
    """'orders': three blocks and 7 hot rows."""
    t = store.create_table("orders", SCHEMA, time_column="ts", max_block_rows=10, auto_compact=False)
    data = rows(0, 37)
    t.append(data.head(30))
    t.append(data.tail(7))
    assert (t.blocks.height, t.hot_rows) == (3, 7)
    return t, data


def still_writable(t: bt.Table, data: pl.DataFrame) -> None:
    more = rows(1_000, 3)
    assert t.append(more) is not None
    assert_frame_equal(t.scan().collect(), pl.concat([data, more]))
    path = t.store.path
    t.store.close()
    with bt.open(path) as again:
        assert_frame_equal(again.table(t.name).scan().collect(), pl.concat([data, more]))


BAD: dict[str, tuple[Callable[[bt.Table], object], type[bt.BtError], str]] = {
    "delete on an unknown column": (
        lambda t: t.delete(pl.col("nope") > 1),
        bt.BtError,
        r"(?s)'orders'.*nope",
    ),
    "delete a DNF tuple on an unknown column": (
        lambda t: t.delete([("nope", "==", 1)]),
        bt.BtError,
        r"(?s)'orders'.*nope",
    ),
    "delete(None)": (lambda t: t.delete(None), bt.BtError, r"(?s)'orders'.*delete needs a filter"),
    "delete([])": (lambda t: t.delete([]), bt.BtError, r"(?s)'orders'.*delete needs a filter"),
    "update with a missing column": (
        lambda t: t.update(rows(3, 2).drop("qty")),
        bt.SchemaMismatchError,
        r"(?s)'orders'.*qty",
    ),
    "update with an extra column": (
        lambda t: t.update(rows(3, 2).with_columns(extra=pl.lit(1))),
        bt.SchemaMismatchError,
        r"(?s)'orders'.*extra",
    ),
    "update with a column of the wrong type": (
        lambda t: t.update(rows(3, 2).with_columns(qty=pl.lit("many"))),
        bt.SchemaMismatchError,
        r"(?s)'orders'.*qty",
    ),
    "update with nulls in the time column": (
        lambda t: t.update(rows(3, 2).with_columns(ts=pl.lit(None, SCHEMA["ts"]))),
        bt.BtError,
        r"(?s)'orders'.*ts",
    ),
    "upsert on a key not in the table": (
        lambda t: t.upsert(rows(3, 2), on=["nope"]),
        bt.SchemaMismatchError,
        r"(?s)'orders'.*nope",
    ),
    "upsert on no key": (lambda t: t.upsert(rows(3, 2), on=[]), bt.BtError, r"(?s)'orders'.*on=\[\]"),
    "upsert on a key named twice": (
        lambda t: t.upsert(rows(3, 2), on=["id", "id"]),
        bt.BtError,
        r"(?s)'orders'.*twice",
    ),
    "upsert with duplicate keys in the frame": (
        lambda t: t.upsert(pl.concat([rows(3, 2), rows(3, 1)]), on=["id"]),
        bt.BtError,
        r"(?s)'orders'.*repeated.*id",
    ),
    "upsert with a frame of the wrong schema": (
        lambda t: t.upsert(rows(3, 2).drop("price"), on=["id"]),
        bt.SchemaMismatchError,
        r"(?s)'orders'.*price",
    ),
    "set_options with an unknown option": (
        lambda t: t.set_options(retension=dt.timedelta(days=1)),
        bt.BtError,
        r"(?s)'orders'.*retension",
    ),
    "set_options with a negative retention": (
        lambda t: t.set_options(retention=dt.timedelta(days=-1)),
        bt.BtError,
        r"(?s)'orders'.*retention.*>= 0",
    ),
    "set_options with a retention of the wrong type": (
        lambda t: t.set_options(retention="1 day"),
        bt.BtError,
        r"(?s)'orders'.*retention",
    ),
    "set_options with max_block_rows=0": (
        lambda t: t.set_options(max_block_rows=0),
        bt.BtError,
        r"(?s)'orders'.*max_block_rows",
    ),
    "set_options with a NaN keep_versions": (
        lambda t: t.set_options(keep_versions=float("nan")),
        bt.BtError,
        r"(?s)'orders'.*keep_versions",
    ),
    "set_options with auto_compact=1": (
        lambda t: t.set_options(auto_compact=1),
        bt.BtError,
        r"(?s)'orders'.*auto_compact",
    ),
    "set_options with one good and one bad option": (
        lambda t: t.set_options(max_block_rows=5, retention=dt.timedelta(days=-1)),
        bt.BtError,
        r"(?s)'orders'.*retention",
    ),
    "scan(as_of=0)": (lambda t: t.scan(as_of=0), bt.BtError, r"(?s)'orders'.*versions 1 to \d+.*not 0"),
    "scan(as_of=-1)": (lambda t: t.scan(as_of=-1), bt.BtError, r"(?s)'orders'.*not -1"),
    "scan(as_of=a version too large)": (
        lambda t: t.scan(as_of=10_000),
        bt.BtError,
        r"(?s)'orders'.*versions 1 to \d+.*not 10000",
    ),
    "scan(as_of=a time before the table)": (
        lambda t: t.scan(as_of=dt.datetime(2001, 1, 1)),
        bt.BtError,
        r"(?s)'orders'.*did not exist yet.*2001",
    ),
    "scan(as_of=a string not ISO)": (
        lambda t: t.scan(as_of="yesterday"),
        bt.BtError,
        r"(?s)'orders'.*'yesterday'.*ISO",
    ),
    "scan(as_of=True)": (lambda t: t.scan(as_of=True), bt.BtError, r"(?s)'orders'.*as_of"),
    "scan(as_of=a float)": (lambda t: t.scan(as_of=2.0), bt.BtError, r"(?s)'orders'.*as_of"),
    "vacuum(older_than=-1)": (lambda t: t.vacuum(older_than=-1), bt.BtError, r"(?s)'orders'.*older_than"),
    "vacuum(older_than=-1 day)": (
        lambda t: t.vacuum(older_than=dt.timedelta(days=-1)),
        bt.BtError,
        r"(?s)'orders'.*older_than",
    ),
    "vacuum(older_than=a string)": (lambda t: t.vacuum(older_than="1d"), bt.BtError, r"(?s)'orders'.*older_than"),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_changes_nothing(filled: tuple[bt.Table, pl.DataFrame], case: str) -> None:
    t, data = filled
    call, error, pattern = BAD[case]
    before = state(t)
    with pytest.raises(error, match=pattern):
        call(t)
    assert_same(before, state(t))
    still_writable(t, data)


def test_update_without_a_time_column(store: bt.BacktraceStore) -> None:
    t = store.create_table("plain", SCHEMA, auto_compact=False)
    t.append(rows(0, 5))
    before = state(t)
    with pytest.raises(bt.BtError, match=r"(?s)'plain' has no time column.*upsert"):
        t.update(rows(1, 2))
    with pytest.raises(bt.BtError, match=r"(?s)'plain' has no time column.*retention"):
        t.set_options(retention=dt.timedelta(days=1))
    assert_same(before, state(t))
    t.set_options(retention=None)  # turning it off is not an error
    assert t.retention is None
    c = t.upsert(rows(1, 1).with_columns(qty=pl.lit(-1, pl.Int64)), on="id")  # the way it points to
    assert (c.rows_added, c.rows_removed) == (1, 1)


def test_as_of_of_another_type_is_refused(filled: tuple[bt.Table, pl.DataFrame]) -> None:
    t, _ = filled
    with pytest.raises(bt.BtError, match="as_of"):
        t.scan(as_of=[1])  # type: ignore[arg-type]


READ_ONLY_OPS: dict[str, Callable[[bt.Table], object]] = {
    "append": lambda t: t.append(rows(900, 1)),
    "delete": lambda t: t.delete(pl.col("qty") > 3),
    "delete nothing": lambda t: t.delete(pl.col("qty") > 10_000),
    "update": lambda t: t.update(rows(3, 2)),
    "update an empty frame": lambda t: t.update(rows(0, 0)),
    "upsert": lambda t: t.upsert(rows(3, 2), on=["id"]),
    "upsert an empty frame": lambda t: t.upsert(rows(0, 0), on=["id"]),
    "set_options": lambda t: t.set_options(keep_versions=dt.timedelta(days=1)),
    "set_options unchanged": lambda t: t.set_options(auto_compact=False),
    "vacuum": lambda t: t.vacuum(),
    "enforce_retention": lambda t: t.enforce_retention(),
    "flush": lambda t: t.flush(),
    "compact": lambda t: t.compact(),
}


@pytest.mark.parametrize("op", list(READ_ONLY_OPS))
def test_a_read_only_store_refuses_every_write(tmp_path: Path, op: str) -> None:
    with bt.open(tmp_path / "db") as w:
        t = w.create_table("orders", SCHEMA, time_column="ts", max_block_rows=10, auto_compact=False)
        t.append(rows(0, 25))
        t.delete(pl.col("id") == 4)
    on_disk = listing(tmp_path / "db")
    with bt.open(tmp_path / "db", read_only=True) as ro:
        r = ro.table("orders")
        before = r.scan().collect()
        with pytest.raises(bt.ReadOnlyError, match=r"(?s)'orders'.*read_only"):
            READ_ONLY_OPS[op](r)
        assert_frame_equal(r.scan().collect(), before)
        assert r.versions.height >= 3  # reading the history and time travel work read-only
        assert_frame_equal(r.scan(as_of=int(r.versions["version"].max())).collect(), before)
    assert listing(tmp_path / "db") == on_disk


# -- time travel and vacuum ---------------------------------------------------------------------------------------


def test_as_of_by_version_datetime_and_string(store: bt.BacktraceStore) -> None:
    t = store.create_table("tt", SCHEMA, time_column="ts", max_block_rows=1_000, auto_compact=False)
    t.append(rows(0, 30))
    t.flush()
    seen: dict[int, pl.DataFrame] = {}
    v1 = int(t.versions["version"].max())
    seen[v1] = t.scan().collect()
    time.sleep(0.01)
    assert t.delete(pl.col("symbol") == "A") > 0
    seen[t.last_change.version] = t.scan().collect()  # type: ignore[union-attr]
    time.sleep(0.01)
    t.update(rows(10, 5).with_columns(qty=pl.lit(-3, pl.Int64)))
    seen[t.last_change.version] = t.scan().collect()  # type: ignore[union-attr]
    time.sleep(0.01)
    t.upsert(rows(2, 3).with_columns(price=pl.lit(0.0)), on=["id"])
    seen[t.last_change.version] = t.scan().collect()  # type: ignore[union-attr]
    assert len({df.height for df in seen.values()} | {id(df) for df in seen.values()}) > 1
    hist = t.versions
    for v, df in seen.items():
        assert_frame_equal(t.scan(as_of=v).collect(), df)
        when = hist.filter(pl.col("version") == v)["time"][0]
        assert_frame_equal(t.scan(as_of=when).collect(), df)
        later = when + dt.timedelta(microseconds=1)  # between this version and the next
        if v < int(hist["version"].max()) and hist.filter(pl.col("version") == v + 1)["time"][0] > later:
            assert_frame_equal(t.scan(as_of=later).collect(), df)
        assert_frame_equal(t.scan(as_of=when.isoformat()).collect(), df)
        naive = when.replace(tzinfo=None)  # naive: UTC
        assert_frame_equal(t.scan(as_of=naive).collect(), df)
        # the chain is pushed down into the old version too
        got = t.scan(as_of=v).filter(pl.col("qty") > 2).select("id", "qty").collect()
        assert_frame_equal(got, df.filter(pl.col("qty") > 2).select("id", "qty"))
    assert_frame_equal(t.scan(as_of=dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).collect(), t.scan().collect())


def test_a_vacuumed_version_raises_a_clear_error(store: bt.BacktraceStore) -> None:
    t, model = blocky(store, 4)
    v_before = int(t.versions["version"].max())
    t.delete(pl.col("id") < 25)
    assert_frame_equal(t.scan(as_of=v_before).collect(), model)
    freed = t.vacuum()
    assert freed > 0
    with pytest.raises(bt.BtError, match=rf"(?s)'t'.*version {v_before} needs block.*vacuum") as e:
        t.scan(as_of=v_before)
    assert not isinstance(e.value, bt.CorruptionError), "a vacuumed version is not corruption"
    assert_frame_equal(t.scan().collect(), model.slice(25))  # the table itself is fine
    assert store.verify().ok


def _sizes(t: bt.Table) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in (t.path / "blocks").iterdir() if p.suffix == ".parquet"}


def test_vacuum_frees_exactly_the_retired_files(store: bt.BacktraceStore) -> None:
    t, model = blocky(store, 8)
    t.delete(pl.col("id") % 20 == 0)  # every block rewritten
    t.update(rows(50, 3).with_columns(qty=pl.lit(0, pl.Int64)))
    t.compact(target_rows=1_000)
    model = t.scan().collect()
    live = set(names(t))
    sizes = _sizes(t)
    retired = set(sizes) - live
    assert len(retired) >= 8
    freed = t.vacuum()
    assert freed == sum(sizes[f] for f in retired)
    assert files(t) == live, "vacuum deleted a live block or kept a retired one"
    assert t.versions["operation"][-1] == "vacuum"
    assert f"bytes={freed}" in t.versions["detail"][-1]
    assert t.vacuum() == 0, "a second vacuum has nothing left to free"
    assert t.versions["operation"][-1] == "vacuum"
    assert t.versions.filter(pl.col("operation") == "vacuum").height == 1, "a vacuum that freed nothing committed"
    assert_frame_equal(t.scan().collect(), model)
    t.store.close()
    with bt.open(t.store.path) as again:
        assert_frame_equal(again.table("t").scan().collect(), model)
        assert again.verify().ok


def test_vacuum_respects_older_than_and_retired_grace(tmp_path: Path) -> None:
    with bt.open(tmp_path / "db", retired_grace=3_600) as s:
        t, _ = blocky(s, 3)
        t.delete(pl.col("id") < 30)
        on_disk = files(t)
        assert len(on_disk) > len(names(t))
        assert t.vacuum() == 0, "vacuum deleted a block retired less than retired_grace ago"
        assert t.vacuum(older_than=dt.timedelta(0)) == 0
        assert files(t) == on_disk
    with bt.open(tmp_path / "db", retired_grace=0) as s:
        t = s.table("t")
        assert t.vacuum(older_than=dt.timedelta(hours=1)) == 0, "vacuum ignored older_than"
        assert files(t) != set(names(t))
        time.sleep(0.05)
        assert t.vacuum(older_than=0.01) > 0
        assert files(t) == set(names(t))


def test_vacuum_spares_blocks_a_running_read_uses(store: bt.BacktraceStore) -> None:
    t, model = blocky(store, 6)
    old = set(names(t))
    reader = t.iter_batches(batch_size=7)
    first = next(reader)  # the read's snapshot is pinned now
    assert t.delete(pl.lit(True)) == model.height
    assert t.rows == 0
    assert t.vacuum() == 0, "vacuum freed blocks an open iter_batches still reads"
    assert old <= files(t), "vacuum deleted a block an open iter_batches still reads"
    rest = pl.concat([first, *reader])  # the generator finishes: it read the version it started on
    assert_frame_equal(rest, model)
    freed = t.vacuum()
    assert freed > 0
    assert not (old & files(t)), "the blocks were kept after the read ended"


def test_keep_versions_purges_retired_blocks_by_itself(store: bt.BacktraceStore) -> None:
    t, model = blocky(store, 5)
    t.set_options(keep_versions=dt.timedelta(0))
    assert t.keep_versions == dt.timedelta(0)
    v = int(t.versions["version"].max())
    t.delete(pl.col("id") < 50)
    assert files(t) == set(names(t)), "keep_versions=0 (and retired_grace=0) kept retired blocks"
    with pytest.raises(bt.BtError, match="vacuum"):
        t.scan(as_of=v)
    assert_frame_equal(t.scan().collect(), model.slice(50))
    t.set_options(keep_versions=dt.timedelta(days=1))
    v = int(t.versions["version"].max())
    t.delete(pl.col("id") < 70)
    assert files(t) > set(names(t)), "keep_versions=1 day deleted blocks retired just now"
    assert_frame_equal(t.scan(as_of=v).collect(), model.slice(50))


def test_options_persist_and_are_in_the_history(tmp_path: Path) -> None:
    with bt.open(tmp_path / "db") as s:
        t = s.create_table("o", SCHEMA, time_column="ts", auto_compact=False)
        t.set_options(max_block_rows=7, keep_versions=dt.timedelta(hours=2), retention=dt.timedelta(days=30))
        assert t.versions["operation"].to_list().count("set_options") == 1
        t.set_options(max_block_rows=7)  # unchanged: no version
        assert t.versions["operation"].to_list().count("set_options") == 1
    with bt.open(tmp_path / "db") as s:
        t = s.table("o")
        assert t.options == {
            "max_block_rows": 7,
            "retention": dt.timedelta(days=30),
            "keep_versions": dt.timedelta(hours=2),
            "auto_compact": False,
        }
        t.append(rows(0, 15))
        assert t.blocks.height >= 1, "max_block_rows=7 was not used"


# -- retention --------------------------------------------------------------------------------------------------

DAY = 86_400


def daily(store: bt.BacktraceStore, days: int, per_day: int = 24, **opts: Any) -> tuple[bt.Table, pl.DataFrame]:
    """One block per day of 2015 data (rows every hour)."""
    t = store.create_table("r", SCHEMA, time_column="ts", max_block_rows=10_000, auto_compact=False, **opts)
    for d in range(days):
        t.append(rows(d * per_day, per_day, step_s=3_600))
        t.flush()
    return t, rows(0, days * per_day, step_s=3_600)


def test_enforce_retention_is_relative_to_the_newest_time_value(store: bt.BacktraceStore) -> None:
    t, model = daily(store, 10)
    newest = model["ts"].max()
    assert isinstance(newest, dt.datetime)
    t.set_options(retention=dt.timedelta(days=3, hours=5))  # set_options enforces it at once
    cutoff = newest - dt.timedelta(days=3, hours=5)
    expected = model.filter(pl.col("ts") >= cutoff)
    assert expected.height > 0, "retention measured against the wall clock would drop every 2015 row"
    assert_frame_equal(t.scan().collect(), expected)
    c = t.last_change
    assert c is not None
    assert c.operation == "retention"
    assert c.rows_removed == model.height - expected.height
    assert c.blocks_read <= 1, c
    assert t.enforce_retention() == 0  # nothing older left
    more = rows(10 * 24, 24, step_s=3_600)
    t.append(more)
    removed = t.enforce_retention()
    assert removed == 24, "a day more of data moves the cutoff a day"
    assert_frame_equal(t.scan().collect(), pl.concat([expected, more]).slice(24))


def test_retention_drops_old_whole_blocks_when_blocks_are_frozen(store: bt.BacktraceStore) -> None:
    """set_options' documentation: older rows are dropped when blocks are frozen, whole blocks first."""
    t, model = daily(store, 4, retention=dt.timedelta(days=2))
    newest = model["ts"].max()
    assert isinstance(newest, dt.datetime)
    whole = model.filter(pl.col("ts").dt.truncate("1d") >= (newest - dt.timedelta(days=2)).replace(hour=0))
    assert t.rows <= whole.height, f"after flushes, blocks entirely older than the retention are still there: {t.rows}"
    assert t.scan().collect().height >= model.filter(pl.col("ts") >= newest - dt.timedelta(days=2)).height


@pytest.mark.parametrize("auto_compact", [False, True])
def test_retention_drops_whole_blocks_frozen_in_the_background(store: bt.BacktraceStore, auto_compact: bool) -> None:
    """No flush() here: the hot rows reach max_block_rows, the block writer freezes them in the background,
    and the housekeeping round after each publish retires the blocks past the retention (whole, unread)."""
    t = store.create_table(
        "bg", SCHEMA, time_column="ts", max_block_rows=24, retention=dt.timedelta(days=2), auto_compact=auto_compact
    )
    for d in range(6):  # a day of hourly rows per append: each fills the hot buffer, a block per day
        t.append(rows(d * 24, 12, step_s=3_600))
        t.append(rows(d * 24 + 12, 12, step_s=3_600))
    t._wait_compacted()  # the housekeeping thread has run its rounds
    model = rows(0, 6 * 24, step_s=3_600)
    newest = model["ts"].max()
    assert isinstance(newest, dt.datetime)
    got = t.scan().collect()
    kept = model.filter(pl.col("ts") >= newest - dt.timedelta(days=2))
    assert got.height < model.height, "no block was dropped although 3 whole days are past the retention"
    assert got.height >= kept.height, "retention dropped rows within the retention"
    assert_frame_equal(got, model.tail(got.height))  # whole blocks, oldest first, nothing else touched
    ops = t.versions["operation"].to_list()
    assert "retention" in ops
    assert t.health.ok, t.health


def test_retention_drops_partial_blocks_at_compact(store: bt.BacktraceStore) -> None:
    """enforce_retention's documentation: retention runs by itself when blocks are compacted (partial ones too)."""
    t, model = daily(store, 4, retention=dt.timedelta(days=2, hours=6))
    t.append(rows(4 * 24, 12, step_s=3_600))  # half a day more
    t.flush()
    model = pl.concat([model, rows(4 * 24, 12, step_s=3_600)])
    t.compact(target_rows=10_000)
    newest = model["ts"].max()
    assert isinstance(newest, dt.datetime)
    expected = model.filter(pl.col("ts") >= newest - dt.timedelta(days=2, hours=6))
    assert_frame_equal(t.scan().collect(), expected, check_row_order=True)


def test_retention_on_an_integer_time_column_counts_its_units(store: bt.BacktraceStore) -> None:
    t = store.create_table("ints", {"t": pl.Int64, "v": pl.Float64}, time_column="t", auto_compact=False)
    t.append(pl.DataFrame({"t": list(range(1_000)), "v": [0.5] * 1_000}))
    t.flush()
    t.set_options(retention=100)  # 100 units of t
    got = t.scan().collect()
    assert got["t"].to_list() == list(range(899, 1_000))
    t.set_options(retention=None)
    t.append(pl.DataFrame({"t": [5_000], "v": [1.0]}))
    assert t.enforce_retention() == 0, "retention=None still dropped rows"


# -- LazyFrame chains ---------------------------------------------------------------------------------------------

CHAINS: dict[str, Callable[[pl.LazyFrame], pl.LazyFrame]] = {
    "head then filter": lambda lf: lf.head(33).filter(pl.col("qty") > 4),
    "filter then head": lambda lf: lf.filter(pl.col("symbol") == "B").head(9),
    "slice": lambda lf: lf.slice(17, 41),
    "negative slice": lambda lf: lf.slice(-23, 11),
    "tail": lambda lf: lf.tail(13),
    "with_row_index then filter": lambda lf: lf.with_row_index("n").filter(pl.col("n") % 11 == 3),
    "filter then with_row_index": lambda lf: lf.filter(pl.col("qty").is_null()).with_row_index("n"),
    "group_by": lambda lf: lf.group_by("symbol").agg(pl.len(), pl.col("qty").sum(), pl.col("id").max()).sort("symbol"),
    "sort": lambda lf: lf.sort(["qty", "id"], descending=[True, False], nulls_last=True),
    "select len": lambda lf: lf.select(pl.len()),
    "filter select len": lambda lf: lf.filter(pl.col("ts") < T0 + dt.timedelta(seconds=150)).select(pl.len()),
    "projection": lambda lf: lf.select("price", "id").filter(pl.col("id") > 50),
    "cum_sum": lambda lf: lf.select(pl.col("qty").cum_sum(), "id"),
    "unique": lambda lf: lf.select("symbol").unique(maintain_order=True),
    "head(0)": lambda lf: lf.head(0),
}


@pytest.fixture(scope="module")
def changed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[bt.Table, pl.DataFrame]]:
    """A table after deletes, updates and upserts (blocks of 16 rows, some emptied, plus hot rows), and its model."""
    with bt.open(tmp_path_factory.mktemp("chains") / "db") as s:
        t = s.create_table("c", SCHEMA, time_column="ts", max_block_rows=16, auto_compact=False)
        t.append(rows(0, 200))
        t.append(rows(200, 10))
        model = rows(0, 210)
        assert t.delete(pl.col("id").is_between(20, 60)) == 41  # whole blocks and parts of others
        model = model.filter(~pl.col("id").is_between(20, 60))
        upd = rows(100, 8).with_columns(qty=pl.lit(None, pl.Int64), symbol=pl.lit("Z"))
        t.update(upd)
        model = pl.concat([model.filter(pl.col("id") < 100), upd, model.filter(pl.col("id") >= 108)])
        ups = pl.concat([rows(150, 2).with_columns(price=pl.lit(-2.0)), rows(400, 3)])
        t.upsert(ups, on=["id"])
        model = pl.concat(
            [model.filter(pl.col("id") < 150), ups.head(2), model.filter(pl.col("id") >= 152), ups.tail(3)]
        )
        assert t.delete(pl.col("qty") == 9) > 0
        model = model.filter(~(pl.col("qty") == 9).fill_null(False))
        t.append(rows(500, 5))  # hot rows after the changes
        model = pl.concat([model, rows(500, 5)])
        assert t.hot_rows == 5
        assert_frame_equal(t.scan().collect(), model)
        yield t, model


@pytest.mark.parametrize("engine", ["in-memory", "streaming"])
@pytest.mark.parametrize("chain", list(CHAINS))
def test_chains_after_changes_equal_the_model(changed: tuple[bt.Table, pl.DataFrame], chain: str, engine: str) -> None:
    t, model = changed
    f = CHAINS[chain]
    want = f(model.lazy()).collect()
    got = f(t.scan()).collect(engine=engine)  # type: ignore[call-overload]
    assert_frame_equal(got, want)


# -- found by review: predicates that are not row by row, and raw errors ------------------------------------


@pytest.mark.parametrize(
    "predicate",
    [
        pl.col("id") == pl.col("id").max(),
        pl.col("id").is_first_distinct(),
        pl.int_range(pl.len()) < 3,
        pl.col("id").cum_sum() > 20,
        pl.col("id").max().over(pl.lit(1)) == pl.col("id"),
        (pl.col("id") < 5) & (pl.col("id") == pl.col("id").max()),
    ],
    ids=["eq_max", "first_distinct", "int_range", "cum_sum", "over", "and_max"],
)
def test_delete_of_a_predicate_over_the_whole_table_is_the_one_polars_applies(
    store: bt.BacktraceStore, predicate: pl.Expr
) -> None:
    """A predicate whose value for a row depends on the other rows (an aggregate, a window, a running sum)
    is evaluated over the whole table, as Polars' filter would be -- never block by block."""
    t = store.create_table("w", SCHEMA, time_column="ts", max_block_rows=4, auto_compact=False)
    model = rows(0, 12)
    t.append(model)
    t.flush()
    assert t.blocks.height == 3
    expected = model.filter(~predicate.fill_null(False))
    n = t.delete(predicate)
    assert n == model.height - expected.height
    assert_frame_equal(t.scan().collect(), expected)


def test_bad_arguments_found_by_review_are_bt_errors_and_change_nothing(store: bt.BacktraceStore) -> None:
    t = store.create_table("b", SCHEMA, time_column="ts", max_block_rows=1_000, auto_compact=False)
    t.append(rows(0, 10))
    versions, files = t.versions.height, sorted(p.name for p in t.path.rglob("*"))
    with pytest.raises(bt.BtError, match="'b'"):
        t.delete([("id", "=", [1, 2])])  # a list compared with an integer column
    for on in (5, None, [["id"]]):
        with pytest.raises(bt.BtError, match="on="):
            t.upsert(rows(0, 1), on=on)  # type: ignore[arg-type]
    with pytest.raises(bt.BtError, match="older_than"):
        t.vacuum(None)  # type: ignore[arg-type]
    assert t.hot_rows == 10, "a refused delete froze the hot rows"
    assert t.versions.height == versions
    assert sorted(p.name for p in t.path.rglob("*")) == files
    t.set_options(retention=dt.timedelta(days=999_999_999))  # a cutoff before year 1: nothing is older
    assert len(t) == 10
    t.set_options(keep_versions=5.0)
    assert t.keep_versions == dt.timedelta(seconds=5)
    assert t.health.ok, t.health
    import numpy as np

    assert t.scan(as_of=np.int64(1)).collect().height == 0


def test_upsert_works_beside_columns_named_like_its_helper_columns(store: bt.BacktraceStore) -> None:
    t = store.create_table("h", {"k": pl.Int64, "__bt_frames_source_row": pl.Int64, "__bt_frames_position": pl.Int64})
    t.append(pl.DataFrame({"k": [1, 2], "__bt_frames_source_row": [10, 20], "__bt_frames_position": [5, 6]}))
    t.upsert(pl.DataFrame({"k": [2, 3], "__bt_frames_source_row": [21, 31], "__bt_frames_position": [7, 8]}), on="k")
    assert t.read().rows() == [(1, 10, 5), (2, 21, 7), (3, 31, 8)]


def test_two_threads_of_one_process_never_share_a_temporary_file() -> None:
    """compact() and a background merge of the same rows write the same block name at once."""
    import threading

    from bt_frames.storage import layout

    target = Path("/x/blocks/a.parquet")
    names: list[Path] = []
    th = threading.Thread(target=lambda: names.append(layout.tmp_path(target)))
    th.start()
    th.join()
    assert names[0] != layout.tmp_path(target)
    assert layout.is_tmp(names[0].name)
    assert layout.is_tmp(layout.tmp_path(target).name)
