"""The Delta log of every table (bt_frames/storage/delta.py): other engines read the published blocks.

Readers: ``pl.scan_delta``, ``deltalake.DeltaTable(...).to_pyarrow_dataset()`` and DuckDB's ``delta_scan``
(delta-kernel-rs: an independent implementation), loaded offline from the ``duckdb-extension-delta`` wheel.
"""

from __future__ import annotations

import datetime as dt
import decimal
import glob
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import duckdb
import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable
from polars.testing import assert_frame_equal

import bt_frames as bt
from bt_frames.storage import delta
from bt_frames.verify import verify_store
from tests.conftest import ORDERS_SCHEMA, T0, make_orders

ROOT = Path(__file__).resolve().parent.parent


def _delta_extension() -> str:
    import duckdb_extension_delta

    found = glob.glob(os.path.join(os.path.dirname(duckdb_extension_delta.__file__), "**", "*.duckdb_extension"),
                      recursive=True)  # fmt: skip
    assert found, "duckdb-extension-delta ships its loadable file in the wheel"
    return found[0]


def _plain(df: pl.DataFrame) -> pl.DataFrame:
    """Rows as every reader returns them: categoricals as strings, instants in UTC, sorted (Delta promises no
    order)."""
    df = df.with_columns(
        pl.col(pl.Categorical).cast(pl.String),
        pl.col(pl.Datetime("us", "America/New_York")).dt.convert_time_zone("UTC"),
    )
    return df.sort(df.columns, nulls_last=True)


def _uri(t: bt.Table) -> str:
    return str(t.path / "blocks")


def read_polars(t: bt.Table) -> pl.DataFrame:
    return pl.scan_delta(_uri(t)).collect()


def read_pyarrow(t: bt.Table) -> pl.DataFrame:
    got = pl.from_arrow(DeltaTable(_uri(t)).to_pyarrow_dataset().to_table())
    assert isinstance(got, pl.DataFrame)
    return got


def read_duckdb(t: bt.Table) -> pl.DataFrame:
    con = duckdb.connect()
    try:
        con.execute(f"LOAD '{_delta_extension()}'")
        con.execute("SET TimeZone = 'UTC'")
        return con.execute(f"SELECT * FROM delta_scan('{_uri(t)}')").pl()
    finally:
        con.close()


READERS = [read_polars, read_pyarrow, read_duckdb]


def assert_readers_match(t: bt.Table) -> None:
    """Every reader sees the rows of ``t.scan()`` (all flushed), and the log's files are the live blocks."""
    assert t.hot_rows == 0
    want = _plain(t.scan().collect())
    for read in READERS:
        got = read(t)
        got = got.cast({c: want.schema[c] for c in got.columns if c in want.schema}, strict=False)  # type: ignore[arg-type]
        assert_frame_equal(_plain(got), want, check_dtypes=read is not read_duckdb, check_exact=True), read.__name__
    status = t.delta_log
    assert status.ok, status
    assert status.txn_version == t._manifest.state.version or status.state == "up to date"  # type: ignore[union-attr]
    assert_files_are_the_live_blocks(t)


def add_actions(t: bt.Table) -> dict[str, dict[str, Any]]:
    dtab = DeltaTable(_uri(t))
    rows = pa.table(dtab.get_add_actions(flatten=True)).to_pylist()
    return {r["path"]: r for r in rows}


def assert_files_are_the_live_blocks(t: bt.Table) -> None:
    actions = add_actions(t)
    for b in t._manifest.state.blocks:  # type: ignore[union-attr]
        a = actions.pop(b.block)
        assert a["size_bytes"] == b.bytes
        assert a["num_records"] == b.rows
    assert not actions, f"files in the Delta log that are not live blocks: {sorted(actions)}"


def log_entries(t: bt.Table, version: int | None = None) -> list[dict[str, Any]]:
    """The actions of one Delta commit (the newest by default)."""
    files = sorted(glob.glob(str(t.path / "blocks" / "_delta_log" / "*.json")))
    path = files[-1] if version is None else str(t.path / "blocks" / "_delta_log" / f"{version:020d}.json")
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def txn(t: bt.Table) -> int | None:
    return DeltaTable(_uri(t)).transaction_version(f"bt_frames:{t.name}")


def _orders_table(s: bt.BacktraceStore, **kw: Any) -> bt.Table:
    return s.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=10_000, auto_compact=False, **kw)


def _fill(t: bt.Table, n_blocks: int = 4, rows: int = 50) -> pl.DataFrame:
    frames = []
    for i in range(n_blocks):
        df = make_orders(rows, start=i * rows)
        t.append(df)
        t.flush()
        frames.append(df)
    return pl.concat(frames)


# -- readers see the published rows -----------------------------------------------------------------------


def test_every_reader_sees_the_published_rows_after_each_operation(store_path: Path) -> None:
    with bt.open(store_path, retired_grace=0) as s:
        t = _orders_table(s)
        _fill(t)
        assert txn(t) == t._manifest.state.version  # type: ignore[union-attr]
        assert_readers_match(t)
        t.append(make_orders(10, start=1000))  # hot rows are not published: not in the log
        assert len(read_polars(t)) == 200
        t.flush()
        assert_readers_match(t)

        t.compact()
        assert_readers_match(t)
        assert txn(t) == t._manifest.state.version  # type: ignore[union-attr]

        assert t.delete(pl.col("symbol") == "BTC") > 0
        assert_readers_match(t)
        assert txn(t) == t._manifest.state.version  # type: ignore[union-attr]

        upd = make_orders(5, start=20).with_columns(pl.lit(1.5).alias("price"))
        t.update(upd)
        assert_readers_match(t)

        t.upsert(make_orders(3, start=2000).with_columns(pl.lit(7).alias("qty")), on="ts")
        assert_readers_match(t)

        t.add_columns({"venue": pl.String})
        assert txn(t) == t._manifest.state.version  # type: ignore[union-attr]
        t.append(make_orders(4, start=3000).with_columns(pl.lit("X").alias("venue")))
        t.flush()
        assert_readers_match(t)
        assert "venue" in DeltaTable(_uri(t)).schema().to_arrow().names  # type: ignore[attr-defined]

        assert t.vacuum() > 0  # the retired blocks' files go; the log's live files stay
        assert_readers_match(t)


def test_a_widened_column_reads_through_every_reader(store_path: Path) -> None:
    with bt.open(store_path) as s:
        t = s.create_table("w", {"ts": pl.Datetime("us", "UTC"), "n": pl.Int32}, time_column="ts", auto_compact=False)
        t.append(pl.DataFrame({"ts": [T0], "n": pl.Series([1], dtype=pl.Int32)}))
        t.flush()
        t.append(pl.DataFrame({"ts": [T0 + dt.timedelta(1)], "n": [2**40]}), schema_mode="merge")
        t.flush()
        assert t.schema["n"] == pl.Int64
        assert_readers_match(t)


def test_a_time_zone_inside_a_list_or_struct_is_an_instant_in_utc_in_the_log(store_path: Path) -> None:
    """Delta's timestamp has no zone: a zoned column is UTC in the log's schema, nested ones too (a nested
    zone made every commit fail, so the table had no log)."""
    paris = pl.Datetime("us", "Europe/Paris")
    when = dt.datetime(2024, 1, 1, 12, tzinfo=dt.UTC)
    df = pl.DataFrame(
        {"k": [1, 2], "l": [[when], None], "s": [{"t": when}, {"t": None}]},
        schema={"k": pl.Int64, "l": pl.List(paris), "s": pl.Struct({"t": paris})},
    )
    with bt.open(store_path) as s:
        t = s.create_table("t", df.schema)
        t.append(df)
        t.flush()
        assert t.delta_log.ok, t.delta_log
        got = read_polars(t).sort("k")
        utc = pl.Datetime("us", "UTC")
        assert got.schema == pl.Schema({"k": pl.Int64, "l": pl.List(utc), "s": pl.Struct({"t": utc})})
        assert_frame_equal(got, df.cast({"l": pl.List(utc), "s": pl.Struct({"t": utc})}))


def test_add_actions_carry_the_blocks_statistics(store_path: Path) -> None:
    with bt.open(store_path) as s:
        t = _orders_table(s)
        _fill(t, n_blocks=2)
        stats = {r["block"]: r for r in t._stats().iter_rows(named=True)}
        for e in log_entries(t, 1), log_entries(t, 2):
            adds = [a["add"] for a in e if "add" in a]
            assert len(adds) == 1
            add = adds[0]
            st = json.loads(add["stats"])
            row = stats[add["path"]]
            assert st["numRecords"] == row["rows"]
            assert st["minValues"]["price"] == row["min.price"]
            assert st["maxValues"]["qty"] == row["max.qty"]
            assert st["minValues"]["symbol"] == row["min.symbol"]
            assert dt.datetime.fromisoformat(st["minValues"]["ts"]) == row["min.ts"]
            assert dt.datetime.fromisoformat(st["maxValues"]["ts"]) == row["max.ts"]
            assert st["nullCount"] == {"ts": 0, "symbol": 0, "price": 0, "qty": 0}
            assert add["dataChange"] is True


def test_scan_delta_skips_files_by_statistics(store_path: Path, tmp_path: Path) -> None:
    with bt.open(store_path) as s:
        t = _orders_table(s)
        _fill(t, n_blocks=3)
        last = t._manifest.state.blocks[-1].block  # type: ignore[union-attr]
        cutoff = make_orders(1, start=100)["ts"][0]  # the third block starts at row 100
        want = t.scan().filter(pl.col("ts") < cutoff).collect()
        shutil.move(str(t.path / "blocks" / last), tmp_path / last)  # a file the predicate rules out
        try:
            got = pl.scan_delta(_uri(t)).filter(pl.col("ts") < cutoff).collect()
            assert_frame_equal(_plain(got), _plain(want))
            with pytest.raises(Exception, match=r"(?i)no such file|not found|os error"):
                pl.scan_delta(_uri(t)).collect()  # the unfiltered read needs it: skipping was real
        finally:
            shutil.move(tmp_path / last, t.path / "blocks" / last)


# -- how versions map ------------------------------------------------------------------------------------


def test_compaction_commits_remove_and_add_without_data_change(store_path: Path) -> None:
    with bt.open(store_path) as s:
        t = _orders_table(s)
        _fill(t, n_blocks=4)
        before = set(add_actions(t))
        t.compact()
        entries = log_entries(t)
        adds = [e["add"] for e in entries if "add" in e]
        removes = [e["remove"] for e in entries if "remove" in e]
        assert {r["path"] for r in removes} == before
        assert len(adds) == 1
        assert all(a["dataChange"] is False for a in adds)
        assert all(r["dataChange"] is False for r in removes)
        assert [e["txn"] for e in entries if "txn" in e] == [
            {"appId": "bt_frames:orders", "version": t._manifest.state.version}  # type: ignore[union-attr]
        ]
        t.delete(pl.col("qty") > 500)
        assert all(e["remove"]["dataChange"] is True for e in log_entries(t) if "remove" in e)


def test_versions_that_change_no_block_make_no_commit(store_path: Path) -> None:
    with bt.open(store_path) as s:
        t = _orders_table(s)
        _fill(t, n_blocks=1)
        n = len(glob.glob(str(t.path / "blocks" / "_delta_log" / "*.json")))
        t.append(make_orders(3, start=500))  # no version, or only a rotation: nothing published
        assert len(glob.glob(str(t.path / "blocks" / "_delta_log" / "*.json"))) == n
        assert t.delta_log.ok


def test_retention_configuration_follows_keep_versions(store_path: Path) -> None:
    with bt.open(store_path, retired_grace=0) as s:
        t = _orders_table(s)
        _fill(t, n_blocks=1)
        conf = DeltaTable(_uri(t)).metadata().configuration
        assert conf["delta.deletedFileRetentionDuration"] == delta.FOREVER  # kept until vacuum
        t.set_options(keep_versions=dt.timedelta(days=2))
        conf = DeltaTable(_uri(t)).metadata().configuration
        assert conf["delta.deletedFileRetentionDuration"] == "interval 172800 seconds"
        assert conf["delta.logRetentionDuration"] == "interval 172800 seconds"
        assert txn(t) == t._manifest.state.version  # type: ignore[union-attr]
        t.compact()
        # another engine's VACUUM keeps the retired files bt_frames keeps (retired less than 2 days ago)
        assert DeltaTable(_uri(t)).vacuum(dry_run=True) == []


# -- derived: catch-up, rebuild, never failing a write -------------------------------------------------------


def test_a_log_behind_the_manifest_catches_up_on_open(store_path: Path) -> None:
    with bt.open(store_path) as s:
        t = _orders_table(s)
        _fill(t, n_blocks=4)
        t.compact()
        n = len(glob.glob(str(t.path / "blocks" / "_delta_log" / "*.json")))
    logdir = store_path / "orders" / "blocks" / "_delta_log"
    for f in sorted(logdir.glob("*.json"))[-3:]:  # the newest commits are lost
        f.unlink()
    with bt.open(store_path, read_only=True) as s:  # a reader never writes it
        assert s["orders"].delta_log.state == "behind"
    assert len(list(logdir.glob("*.json"))) == n - 3
    with bt.open(store_path) as s:
        t = s["orders"]
        assert t.delta_log.ok
        assert_readers_match(t)
    with bt.open(store_path, read_only=True) as s:
        assert s["orders"].delta_log.ok  # up to date: the close version after it needs no commit


CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import bt_frames as bt
    from bt_frames.storage import delta
    from tests.conftest import ORDERS_SCHEMA, make_orders

    def die(self, src):  # after the manifest version, before its Delta commit
        os.kill(os.getpid(), signal.SIGKILL)

    s = bt.open(sys.argv[1])
    t = s.create_table("orders", ORDERS_SCHEMA, time_column="ts", auto_compact=False)
    for i in range(3):
        t.append(make_orders(10, start=10 * i))
        t.flush()
    delta.DeltaLog.sync = die
    t.append(make_orders(10, start=100))
    t.flush()
    """
)


@pytest.mark.crash
def test_sigkill_between_the_manifest_version_and_the_delta_commit_is_caught_up_on_open(store_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(store_path)], cwd=ROOT, capture_output=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    dtab = DeltaTable(str(store_path / "orders" / "blocks"))
    behind = dtab.transaction_version("bt_frames:orders")
    assert len(pl.scan_delta(str(store_path / "orders" / "blocks")).collect()) == 30  # the 4th block is missing
    with bt.open(store_path) as s:
        t = s["orders"]
        assert t.rows == 40
        assert t.delta_log.ok
        caught_up = txn(t)
        assert caught_up is not None
        assert behind is not None
        assert caught_up > behind
        assert_readers_match(t)


def test_rebuild_delta_log_writes_it_again_from_the_manifest(store_path: Path) -> None:
    with bt.open(store_path) as s:
        t = _orders_table(s)
        _fill(t, n_blocks=3)
        t.compact()
        (t.path / "blocks" / "_delta_log" / "00000000000000000000.json").write_text("garbage")
        status = t.rebuild_delta_log()
        assert status.ok
        assert len(list((t.path / "blocks" / "_delta_log").glob("*.json"))) == 1  # one commit: the live blocks
        assert txn(t) == t._manifest.state.version  # type: ignore[union-attr]
        assert_readers_match(t)


def test_a_damaged_log_is_rebuilt_on_the_next_open(store_path: Path) -> None:
    with bt.open(store_path) as s:
        t = _orders_table(s)
        _fill(t, n_blocks=2)
    for f in (store_path / "orders" / "blocks" / "_delta_log").glob("*.json"):
        f.write_text("{not json")
    with pytest.raises(Exception, match=r"(?i)json"):
        pl.scan_delta(str(store_path / "orders" / "blocks")).collect()
    with bt.open(store_path) as s:
        t = s["orders"]
        assert t.delta_log.ok
        assert_readers_match(t)
        t.append(make_orders(5, start=900))
        t.flush()
        assert_readers_match(t)


def test_a_file_in_place_of_the_log_never_fails_a_write_and_is_reported(
    store_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with bt.open(store_path) as s:
        t = _orders_table(s)
        _fill(t, n_blocks=1)
        logdir = t.path / "blocks" / "_delta_log"
        shutil.rmtree(logdir)
        logdir.write_text("not ours")
        with caplog.at_level(logging.WARNING, logger="bt_frames"):
            t.append(make_orders(5, start=900))
            t.flush()
            t.delete(pl.col("qty") > 900)
            t.compact()
        assert logdir.read_text() == "not ours"  # never deleted: the store did not write it
        status = t.delta_log
        assert status.state == "failed"
        assert "not a folder" in (status.error or "")
        assert sum("Delta log" in r.getMessage() for r in caplog.records) == 1  # once, not at every version
        assert t.health.ok
        with pytest.raises(bt.BtError, match="rebuild the Delta log"):
            t.rebuild_delta_log()
        logdir.unlink()
        t.append(make_orders(5, start=950))
        t.flush()
        assert_readers_match(t)
        rows = t.rows
    with bt.open(store_path) as s:  # and a reopen (recovery) never trips over it
        assert s["orders"].rows == rows
        assert s["orders"].delta_log.ok


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_log_folder_never_fails_a_write(store_path: Path) -> None:
    with bt.open(store_path) as s:
        t = _orders_table(s)
        _fill(t, n_blocks=1)
        logdir = t.path / "blocks" / "_delta_log"
        logdir.chmod(0o500)
        try:
            t.append(make_orders(5, start=900))
            t.flush()
            assert t.delta_log.state == "failed"
        finally:
            logdir.chmod(0o700)
        t.append(make_orders(5, start=950))
        t.flush()
        assert_readers_match(t)


def test_open_verify_and_recovery_leave_the_log_alone(store_path: Path) -> None:
    with bt.open(store_path) as s:
        t = _orders_table(s)
        _fill(t, n_blocks=2)
        names = sorted(os.listdir(t.path / "blocks" / "_delta_log"))
    rep = verify_store(store_path)
    assert rep.ok, rep
    assert not rep.leftovers
    with bt.open(store_path) as s:
        t = s["orders"]
        assert t.recovery.tmp_files_removed == 0
        assert t.rows == 100
    assert set(names) <= set(os.listdir(store_path / "orders" / "blocks" / "_delta_log"))


def test_no_log_when_the_store_turns_it_off(store_path: Path) -> None:
    with bt.open(store_path, delta_log=False) as s:
        t = _orders_table(s)
        _fill(t, n_blocks=1)
        assert t.delta_log.state == "off"
        assert not (t.path / "blocks" / "_delta_log").exists()


def test_a_log_left_from_before_delta_log_false_never_shows_stale_rows(store_path: Path) -> None:
    # a writer that turns the log off leaves no log that other engines would read as the table: the rows
    # it changes would be missing there (and vacuumed files named)
    with bt.open(store_path) as s:
        _fill(_orders_table(s), n_blocks=2)
    with bt.open(store_path, delta_log=False) as s:
        t = s["orders"]
        t.delete(pl.col("qty") > 500)
        t.append(make_orders(5, start=900))
        t.flush()
        assert t.delta_log.state == "off"
    assert not (store_path / "orders" / "blocks" / "_delta_log").exists()
    with bt.open(store_path) as s:  # on again: written from the manifest
        assert_readers_match(s["orders"])


# -- types ------------------------------------------------------------------------------------------------

UNSUPPORTED = {
    "UInt8": (pl.UInt8(), [1, 2]),
    "UInt64": (pl.UInt64(), [1, 2]),
    "Enum": (pl.Enum(["a", "b"]), ["a", "b"]),
    "Duration": (pl.Duration("us"), [dt.timedelta(1), dt.timedelta(2)]),
    "Time": (pl.Time(), [dt.time(1), dt.time(2)]),
    "Datetime-ns": (pl.Datetime("ns"), [dt.datetime(2020, 1, 1), dt.datetime(2020, 1, 2)]),
    "Array": (pl.Array(pl.Int32, 2), [[1, 2], [3, 4]]),
    "List-of-UInt16": (pl.List(pl.UInt16), [[1], [2]]),
    "Struct-with-Time": (pl.Struct({"t": pl.Time}), [{"t": dt.time(1)}, {"t": dt.time(2)}]),
}


@pytest.mark.parametrize("name", list(UNSUPPORTED))
def test_a_type_delta_cannot_represent_warns_and_the_table_still_works(store_path: Path, name: str) -> None:
    dtype, values = UNSUPPORTED[name]
    with bt.open(store_path) as s:
        with pytest.warns(bt.DeltaIncompatibleWarning, match=r"column 'x' is .* not be|will not be readable") as w:
            t = s.create_table("t", {"ts": pl.Datetime("us", "UTC"), "x": dtype}, time_column="ts", auto_compact=False)
        assert w[0].filename == __file__  # points at the user's line
        assert "'x'" in str(w[0].message)
        for i, v in enumerate(values):
            t.append(pl.DataFrame({"ts": [T0 + dt.timedelta(i)], "x": pl.Series([v], dtype=dtype)}))
            t.flush()
        t.compact()
        got = t.scan().collect()
        assert got["x"].to_list() == values
        assert t.delta_log.state == "unsupported"
        assert list(t.delta_log.unsupported) == ["x"]
        assert not (t.path / "blocks" / "_delta_log").exists()


def test_adding_an_unsupported_column_warns_and_removes_the_log(store_path: Path) -> None:
    with bt.open(store_path) as s:
        t = _orders_table(s)
        _fill(t, n_blocks=1)
        assert (t.path / "blocks" / "_delta_log").is_dir()
        with pytest.warns(bt.DeltaIncompatibleWarning, match="'n'"):
            t.add_columns({"n": pl.UInt32})
        assert t.delta_log.state == "unsupported"
        assert not (t.path / "blocks" / "_delta_log").exists()
        t.append(make_orders(3, start=700).with_columns(pl.lit(3, dtype=pl.UInt32).alias("n")))
        t.flush()
        assert t.rows == 53


SUPPORTED = {
    "Int8": (pl.Int8(), [1, -2, None]),
    "Int16": (pl.Int16(), [1, -2, None]),
    "Int32": (pl.Int32(), [1, -2, None]),
    "Int64": (pl.Int64(), [1, -(2**40), None]),
    "Float32": (pl.Float32(), [1.5, -2.0, None]),
    "Float64": (pl.Float64(), [1.5, float("nan"), None]),
    "Boolean": (pl.Boolean(), [True, False, None]),
    "String": (pl.String(), ["a", "é", None]),
    "Binary": (pl.Binary(), [b"a", b"\x00", None]),
    "Categorical": (pl.Categorical(), ["a", "b", None]),
    "Decimal": (pl.Decimal(10, 2), [decimal.Decimal("1.25"), decimal.Decimal("-3.50"), None]),
    "Date": (pl.Date(), [dt.date(2020, 1, 1), dt.date(1969, 12, 31), None]),
    "Datetime-us-UTC": (pl.Datetime("us", "UTC"), [T0, T0 + dt.timedelta(microseconds=7), None]),
    "Datetime-us-New-York": (
        pl.Datetime("us", "America/New_York"),
        [T0.astimezone(ZoneInfo("America/New_York")), T0.astimezone(ZoneInfo("America/New_York")), None],
    ),
    "Datetime-ms": (pl.Datetime("ms"), [dt.datetime(2020, 1, 1), dt.datetime(2020, 1, 2, 3), None]),
    "List": (pl.List(pl.Int64), [[1, 2], [], None]),
    "Struct": (pl.Struct({"a": pl.Int32, "b": pl.String}), [{"a": 1, "b": "x"}, {"a": None, "b": "y"}, None]),
}


@pytest.mark.parametrize("name", list(SUPPORTED))
def test_a_supported_type_round_trips_through_every_reader(store_path: Path, name: str) -> None:
    dtype, values = SUPPORTED[name]
    with bt.open(store_path) as s:
        t = s.create_table("t", {"ts": pl.Datetime("us", "UTC"), "x": dtype}, time_column="ts", auto_compact=False)
        for i, v in enumerate(values):
            t.append(pl.DataFrame({"ts": [T0 + dt.timedelta(i)], "x": pl.Series([v], dtype=dtype)}))
            t.flush()
        want = _plain(t.scan().collect())
        for read in READERS:
            got = _plain(read(t))
            if read is read_duckdb:  # DuckDB's own types: compare the values
                assert got["ts"].to_list() == want["ts"].to_list(), read.__name__
                gx, wx = got["x"].to_list(), want["x"].to_list()
                if name in ("Float64", "Float32"):
                    gx, wx = [str(v) for v in gx], [str(v) for v in wx]
                assert gx == wx, (read.__name__, gx, wx)
            else:
                assert_frame_equal(got, want, check_dtypes=False), read.__name__
        assert_files_are_the_live_blocks(t)


@pytest.mark.parametrize("name", [n for n in SUPPORTED if n not in ("List", "Struct", "Binary", "Boolean")])
def test_scan_delta_filters_on_the_statistics_give_the_rows_of_a_full_read(store_path: Path, name: str) -> None:
    dtype, values = SUPPORTED[name]
    with bt.open(store_path) as s:
        t = s.create_table("t", {"ts": pl.Datetime("us", "UTC"), "x": dtype}, time_column="ts", auto_compact=False)
        for i, v in enumerate(values):  # one block per value: statistics that differ per file
            t.append(pl.DataFrame({"ts": [T0 + dt.timedelta(i)], "x": pl.Series([v], dtype=dtype)}))
            t.flush()
        pivot = _plain(pl.DataFrame({"x": pl.Series([values[0]], dtype=dtype)}))["x"]  # as Delta types it
        lf = pl.scan_delta(_uri(t))
        for expr in (pl.col("x") == pivot[0], pl.col("x") > pivot[0], pl.col("x") <= pivot[0]):
            got = _plain(lf.filter(expr).collect())
            full = _plain(lf.collect().filter(expr))
            assert_frame_equal(got, full), (name, expr)
        assert lf.filter(pl.col("x") == pivot[0]).collect().height >= 1


def test_unsupported_columns_names_each_reason() -> None:
    bad = delta.unsupported_columns({"a": pl.UInt8(), "b": pl.Int64(), "c": pl.List(pl.Enum(["x"]))})
    assert list(bad) == ["a", "c"]
    assert "unsigned" in bad["a"]
    assert "Enum" in bad["c"]


def test_cli_delta_log_prints_the_state_and_rebuilds(store_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bt_frames.__main__ import main

    with bt.open(store_path) as s:
        t = _orders_table(s)
        _fill(t, n_blocks=2)
    shutil.rmtree(store_path / "orders" / "blocks" / "_delta_log")
    assert main(["delta-log", str(store_path), "orders"]) == 0
    out = capsys.readouterr().out
    assert ": behind" in out  # the status alone opens the store read-only: it writes nothing
    assert "txn version None" in out
    assert not (store_path / "orders" / "blocks" / "_delta_log").exists()
    assert main(["delta-log", str(store_path), "orders", "--rebuild"]) == 0
    out = capsys.readouterr().out
    assert ": up to date" in out
    assert len(pl.scan_delta(str(store_path / "orders" / "blocks")).collect()) == 100


def test_rebuilding_the_log_deletes_only_the_delta_files_it_holds(store_path: Path) -> None:
    # the store made _delta_log/ and its commits; a file someone else put there is not the store's to delete
    with bt.open(store_path) as s:
        t = _orders_table(s)
        _fill(t, n_blocks=2)
        logdir = t.path / "blocks" / "_delta_log"
        (logdir / "NOTES.md").write_text("who reads this table, and why")
        (logdir / "sub").mkdir()
        (logdir / "sub" / "keep.txt").write_text("mine")
        assert t.rebuild_delta_log().ok
        assert (logdir / "NOTES.md").read_text() == "who reads this table, and why"
        assert (logdir / "sub" / "keep.txt").read_text() == "mine"
        assert_readers_match(t)
    (logdir / "00000000000000000000.json").write_text("{not json")  # damaged: rebuilt at the next open
    with bt.open(store_path) as s:
        t = s["orders"]
        assert t.delta_log.ok
        assert_readers_match(t)
    assert (logdir / "NOTES.md").exists()
    assert (logdir / "sub" / "keep.txt").exists()


def test_a_log_ahead_of_a_restored_manifest_is_reconciled_on_open(store_path: Path, tmp_path: Path) -> None:
    # a backup of the table restored under a newer log: the log names blocks the manifest never had
    with bt.open(store_path) as s:
        t = _orders_table(s)
        _fill(t, n_blocks=2)
    backup = tmp_path / "backup"
    shutil.copytree(store_path / "orders", backup, ignore=shutil.ignore_patterns("_delta_log"))
    with bt.open(store_path) as s:
        t = s["orders"]
        t.append(make_orders(50, start=500))
        t.flush()
        t.compact()
        newer = txn(t)
    logdir = store_path / "orders" / "blocks" / "_delta_log"
    shutil.copytree(logdir, tmp_path / "log")
    shutil.rmtree(store_path / "orders")
    shutil.copytree(backup, store_path / "orders")
    shutil.copytree(tmp_path / "log", logdir)
    with bt.open(store_path) as s:
        t = s["orders"]
        assert t._manifest.state.version < newer  # type: ignore[union-attr]
        assert t.rows == 100
        assert_readers_match(t)
        t.append(make_orders(5, start=900))  # and it goes on from there
        t.flush()
        assert_readers_match(t)
