"""One writer per store (the LOCK file), and read-only readers beside it (DESIGN.md §2 Readers, §3 LOCK)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import bt_frames as bt
from tests.conftest import ORDERS_SCHEMA, make_orders
from tests.helpers.crash_writer import SCHEMA, TABLE, check_batches
from tests.helpers.procs import Child, listing, run_json

# -- the writer lock ---------------------------------------------------------------------------------------------


def _open_fails_fast(path: Path) -> bt.StoreLockedError:
    t0 = time.perf_counter()
    with pytest.raises(bt.StoreLockedError) as info:
        bt.BacktraceStore(path)
    assert time.perf_counter() - t0 < 1.0, "a second writer must fail at once, not wait for the lock"
    return info.value


def test_opening_an_open_store_again_in_this_process_gives_the_same_store(store_path: Path) -> None:
    """Regression: re-running a notebook cell ``store = bt.open(p)`` raised StoreLockedError naming its own pid.
    Like DuckDB's one database instance per file and process, the second open shares the first."""
    first = bt.BacktraceStore(store_path)
    first.create_table("orders", ORDERS_SCHEMA, time_column="ts").append(make_orders(10))
    again = bt.open(str(store_path))  # the same folder, spelled differently
    assert again is first
    again["orders"].append(make_orders(5, start=10))
    assert first["orders"].rows == 15
    again.close()  # one opener closes: the other keeps writing
    first["orders"].append(make_orders(5, start=15))
    first.close()  # the last opener closes: the lock is free
    with bt.BacktraceStore(store_path) as fresh:
        assert fresh is not first
        assert fresh["orders"].rows == 20


def test_opening_an_open_store_with_other_options_says_this_process_holds_it(store_path: Path) -> None:
    with bt.BacktraceStore(store_path):
        with pytest.raises(bt.StoreLockedError) as info:
            bt.BacktraceStore(store_path, durability="none")
        msg = str(info.value)
        assert f"already open as a writer in this process (pid {os.getpid()})" in msg
        assert "durability='fsync'" in msg
        assert "close it first (store.close())" in msg


def test_context_manager_releases_the_lock_even_on_error(store_path: Path) -> None:
    with pytest.raises(ZeroDivisionError), bt.BacktraceStore(store_path):
        1 / 0  # noqa: B018
    with bt.BacktraceStore(store_path):
        assert _open_in_another_process(store_path) == "StoreLockedError"
    assert _open_in_another_process(store_path) == "opened"


def _open_in_another_process(path: Path) -> str:
    code = (
        "import sys, bt_frames as bt\n"
        "try:\n    bt.BacktraceStore(sys.argv[1]).close(); print('opened')\n"
        "except bt.BtError as e:\n    print(type(e).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_second_writer_in_another_process_is_refused_at_once(store_path: Path) -> None:
    with bt.BacktraceStore(store_path):
        out = run_json("try-lock", "--path", str(store_path))
    assert out["error"] == "StoreLockedError", out
    assert out["seconds"] < 1.0, out
    assert str(store_path) in out["message"]
    assert f"pid={os.getpid()}" in out["message"]
    out = run_json("try-lock", "--path", str(store_path))  # closed: free for the other process
    assert out["error"] is None, out


def test_lock_is_free_after_the_holder_is_killed(store_path: Path, tmp_path: Path) -> None:
    holder = Child("hold", "--path", str(store_path), stderr_path=tmp_path / "stderr.txt")
    try:
        holder.wait_line("locked")
        err = _open_fails_fast(store_path)
        assert f"pid={holder.proc.pid}" in str(err)
    finally:
        holder.kill()
    assert holder.proc.returncode == -9
    t0 = time.perf_counter()
    with bt.BacktraceStore(store_path) as store:  # the kernel dropped the dead process's lock
        assert time.perf_counter() - t0 < 1.0
        store.create_table("orders", ORDERS_SCHEMA, time_column="ts").append(make_orders(3))


# -- read-only stores --------------------------------------------------------------------------------------------


def test_read_only_opens_beside_a_writer_and_never_writes(store_path: Path) -> None:
    writer = bt.BacktraceStore(store_path)
    w = writer.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=1_000)
    first = [make_orders(400, start=i * 400) for i in range(6)]  # 2 blocks of 1,200 (3 appends each)... and hot
    for f in first:
        w.append(f)
    w.append(make_orders(2_500, start=2_400))  # straight to blocks: 3 parts
    w.append(make_orders(300, start=4_900))  # hot, in the WAL only
    first = [*first, make_orders(2_500, start=2_400), make_orders(300, start=4_900)]
    assert w.hot_rows == 300
    assert w.blocks.height >= 4

    files = listing(store_path)
    reader = bt.BacktraceStore(store_path, read_only=True)
    r = reader.table("orders")
    assert r.rows == w.rows
    assert r.hot_rows == 300
    assert_frame_equal(r.scan().collect(), pl.concat(first))
    assert_frame_equal(r.blocks.drop("path"), w.blocks.drop("path"))
    r.prune([("symbol", "==", "BTC")])
    r.scan(where=[("qty", ">", 500)]).collect()
    list(r.iter_rows(columns=["qty"]))
    r.to_pandas()
    assert reader.verify().ok
    reader.refresh()
    assert reader.tables == ["orders"]
    assert listing(store_path) == files, "a read-only store wrote a file"

    # Writes through a read-only store are refused and change nothing.
    for attempt in (
        lambda: r.append(make_orders(1)),
        lambda: r.flush(),
        lambda: r.compact(),
        lambda: reader.append("orders", make_orders(1)),
        lambda: reader.append("new_table", make_orders(1)),
        lambda: reader.create_table("t2", ORDERS_SCHEMA, time_column="ts"),
        lambda: reader.drop_table("orders"),
        lambda: reader.flush(),
    ):
        with pytest.raises(bt.ReadOnlyError, match="read_only=True"):
            attempt()
    assert listing(store_path) == files

    # The writer goes on (a freeze deletes the WAL segment the reader replayed); the reader keeps its snapshot.
    second = [make_orders(400, start=5_200 + i * 400) for i in range(5)]
    for f in second:
        w.append(f)
    assert w.wal_state["records"] < 3, "expected the writer to have frozen the earlier hot rows"
    assert_frame_equal(r.scan().collect(), pl.concat(first), check_row_order=True)
    assert r.rows == sum(f.height for f in first)

    files = listing(store_path)
    reader.refresh()
    assert_frame_equal(r.scan().collect(), pl.concat(first + second))
    assert r.rows == w.rows
    assert r.hot_rows == w.hot_rows
    reader.close()
    assert listing(store_path) == files, "refresh()/close() of a read-only store wrote a file"
    writer.close()


def test_read_only_refuses_a_missing_store(tmp_path: Path) -> None:
    with pytest.raises(bt.BtError, match="does not exist"):
        bt.BacktraceStore(tmp_path / "nope", read_only=True)
    assert not (tmp_path / "nope").exists()


def test_refresh_sees_every_acknowledged_append_while_another_process_writes(tmp_path: Path) -> None:
    """A writer process appends and freezes non-stop (deleting WAL segments); every refresh sees a
    consistent prefix of its batches that includes every batch acknowledged before the refresh began."""
    path = tmp_path / "db"
    mbr = 300  # tiny blocks: a freeze (block written, WAL segments deleted) every ~12 appends
    writer = Child(
        "write", "--path", str(path), "--durability", "none", "--max-block-rows", str(mbr), "--sizes", "small",
        "--pause", "0.001", stderr_path=tmp_path / "stderr.txt",
    )  # fmt: skip
    try:
        writer.wait_line("open")
        writer.wait_for(lambda lines: len(lines) > 20)
        store = bt.BacktraceStore(path, read_only=True)
        table = store.table(TABLE)
        opened = check_batches(table.scan().collect(), mbr, "small")
        time.sleep(0.2)
        assert check_batches(table.scan().collect(), mbr, "small") == opened, "saw appends without refresh()"
        seen = len(opened)
        blocks_seen = set()
        deadline = time.monotonic() + 4.0
        refreshes = 0
        while time.monotonic() < deadline:
            acked_before = len(writer.acked())
            store.refresh()
            refreshes += 1
            df = table.scan().collect()
            ids = check_batches(df, mbr, "small")  # complete batches, in order, none twice
            assert ids == list(range(len(ids))), "not a prefix of the appended batches"
            assert len(ids) >= acked_before, f"refresh missed acknowledged batches {len(ids)}..{acked_before - 1}"
            assert len(ids) >= seen, "a refresh went back in time"
            seen = len(ids)
            blocks_seen.update(table.blocks["path"].to_list())
            time.sleep(0.01)
        store.close()
    finally:
        writer.kill()
    assert refreshes > 20
    assert len(blocks_seen) > 10, "the writer hardly froze anything while the reader refreshed"
    assert seen > len(opened) + 50


def test_read_only_cannot_write_a_new_table_by_append(store_path: Path) -> None:
    bt.BacktraceStore(store_path).close()
    files = listing(store_path)
    with bt.BacktraceStore(store_path, read_only=True) as reader, pytest.raises(bt.ReadOnlyError):
        reader.append(TABLE, pl.DataFrame(schema=SCHEMA))
    assert listing(store_path) == files
    with pytest.raises(bt.StoreClosedError, match=re.escape(str(store_path))):
        reader.tables  # noqa: B018
