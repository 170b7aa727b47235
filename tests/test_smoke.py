from __future__ import annotations

import polars as pl
from polars.testing import assert_frame_equal

import bt_frames as bt
from tests.conftest import ORDERS_SCHEMA, make_orders


def test_append_reopen_scan_in_append_order(store_path):
    frames = [make_orders(300, start=i * 300) for i in range(10)]
    with bt.open(store_path) as s:
        t = s.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=1_000)
        for f in frames:
            t.append(f)
        # 3 appends of 300 fit a 1,000-row block; the 4th freezes them: 3 blocks of 900, 300 hot
        assert t.blocks["rows"].to_list() == [900, 900, 900]
        assert t.hot_rows == 300
        assert_frame_equal(t.scan().collect(), pl.concat(frames))
    with bt.open(store_path) as s:
        t = s.table("orders")
        assert t.recovery.records_replayed == 1
        assert_frame_equal(t.scan().collect(), pl.concat(frames))
