"""Freezing hot rows into blocks, which a background writer does while appends go on.

The contract: an append is acknowledged once its WAL record is durable; the
block write that follows a full hot buffer happens in the background, and
until the block is durable its rows stay hot (in the WAL, seen by scans).
Everything a user can observe (blocks, row counts, WAL state, snapshots)
waits for the writer, so it reads as if freezing were synchronous.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import bt_frames as bt
from bt_frames.storage import layout
from tests.conftest import ORDERS_SCHEMA, make_orders


def _break_blocks_dir(table: bt.Table) -> Path:
    """Make block writes fail (ENOTDIR) the way a full or broken disk would, without root-proof chmod."""
    blocks = table.path / layout.BLOCKS_DIR
    aside = table.path / "blocks.aside"
    blocks.rename(aside)
    blocks.write_text("not a directory")
    return aside


def _repair_blocks_dir(table: bt.Table, aside: Path) -> None:
    blocks = table.path / layout.BLOCKS_DIR
    blocks.unlink()
    aside.rename(blocks)


def test_observers_see_the_block_as_soon_as_the_append_returns(orders: bt.Table) -> None:
    data = make_orders(2_500)
    for start in range(0, 2_500, 250):
        orders.append(data.slice(start, 250))
    # max_block_rows=1,000: two blocks are written (in the background) and 500 rows are hot
    assert orders.blocks.height == 2
    assert (orders.cold_rows, orders.hot_rows, orders.rows) == (2_000, 500, 2_500)
    assert orders.wal_state["records"] == 2  # the two appends of the hot rows; the rest went with their blocks
    assert len(list((orders.path / layout.WAL_DIR).iterdir())) == 1
    assert_frame_equal(orders.scan().collect(), data)


def test_a_failed_block_write_keeps_the_rows_and_is_retried(store_path: Path) -> None:
    store = bt.BacktraceStore(store_path)
    t = store.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=1_000)
    data = make_orders(3_400)
    aside = _break_blocks_dir(t)
    lsns = [t.append(data.slice(start, 200)) for start in range(0, 1_000, 200)]
    assert lsns == [1, 2, 3, 4, 5]  # acknowledged although the block write behind them fails
    assert (t.cold_rows, t.hot_rows) == (0, 1_000)  # (waits for the writer: its failure is recorded)
    assert_frame_equal(t.scan().collect(), data.head(1_000))  # the rows are still readable

    # Later appends still succeed (their records committed): the failure is in health, never raised.
    assert not t.health.ok
    assert t.health.problems[0].startswith("writing the block of LSNs 1-5 failed: [Errno 20] Not a directory")
    assert t.health.pending_rows == 1_000
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning at the user's append either
        for start in range(1_000, 2_000, 200):
            t.append(data.slice(start, 200))
    assert t.blocks.height == 0, "a later block must not be published before an earlier one"
    with pytest.raises(bt.BtError, match=r"writing the block of LSNs 1-5 failed .*Fix: free disk space"):
        t.flush()  # an explicit flush says why
    assert_frame_equal(t.scan().collect(), data.head(2_000))

    _repair_blocks_dir(t, aside)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the retry succeeds: no warning
        for start in range(2_000, 3_400, 200):
            t.append(data.slice(start, 200))
    t.flush()  # writes what the rate-limited retries (RETRY_INTERVAL_S) have not written yet
    assert (t.hot_rows, t.cold_rows) == (0, 3_400)
    assert t.health.ok
    blocks = t.blocks
    assert blocks["first_lsn"].to_list() == [1, 6, 11, 16]
    assert blocks["last_lsn"].to_list() == [5, 10, 15, 17]
    assert [p.name for p in (t.path / layout.WAL_DIR).iterdir()] == [layout.wal_name(18)]
    assert_frame_equal(t.scan().collect(), data)
    store.close()
    with bt.BacktraceStore(store_path) as again:
        assert_frame_equal(again["orders"].scan().collect(), data)
        assert again["orders"].recovery.records_replayed == 0


def test_closing_with_a_failed_block_write_loses_nothing(store_path: Path) -> None:
    store = bt.BacktraceStore(store_path)
    t = store.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=500)
    data = make_orders(1_200)
    aside = _break_blocks_dir(t)
    for start in range(0, 1_200, 100):
        t.append(data.slice(start, 100))
    with pytest.raises(bt.BtError, match="Not a directory"):
        t.flush()
    store.close()  # logs a warning; the rows are in the WAL
    _repair_blocks_dir(t, aside)
    with bt.BacktraceStore(store_path) as again:
        t2 = again["orders"]
        assert t2.recovery.rows_replayed == 1_200
        assert_frame_equal(t2.scan().collect(), data)
        # reopening froze what was over the threshold
        assert t2.blocks.height >= 1


def test_a_big_append_waits_for_earlier_blocks(orders: bt.Table) -> None:
    """A multi-block append writes LSN n directly; every LSN below n must be in a block first,
    or a crash would make replay skip them."""
    small = make_orders(900)
    for start in range(0, 900, 300):
        orders.append(small.slice(start, 300))
    big = make_orders(2_500, start=900)
    orders.append(big)
    blocks = orders.blocks
    assert blocks["first_lsn"].to_list() == [1, 4, 4, 4]
    assert_frame_equal(orders.scan().collect(), pl.concat([small, big]))
