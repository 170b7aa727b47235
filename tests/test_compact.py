from __future__ import annotations

import shutil

import polars as pl
from polars.testing import assert_frame_equal

import bt_frames as bt
from tests.conftest import ORDERS_SCHEMA, make_orders


def _small_blocks(store_path, n_blocks=8, rows=100):
    frames = [make_orders(rows, start=i * rows) for i in range(n_blocks)]
    s = bt.open(store_path)
    t = s.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=1_000)
    for f in frames:
        t.append(f)
        t.flush()  # one small block per append
    return s, t, frames


def test_compact_merges_small_blocks_and_keeps_order(store_path):
    s, t, frames = _small_blocks(store_path)
    tail = make_orders(50, start=10_000)
    t.append(tail)  # stays hot
    assert t.blocks.height == 8
    res = t.compact()
    assert (res.blocks_before, res.blocks_after, res.merges, res.rows_rewritten) == (8, 1, 1, 800)
    blocks = t.blocks
    assert blocks["rows"].to_list() == [800]
    assert (blocks["first_lsn"][0], blocks["last_lsn"][0]) == (1, 8)
    assert len(list((store_path / "orders" / "blocks").glob("*.parquet"))) == 1
    expected = pl.concat([*frames, tail])
    assert_frame_equal(t.scan().collect(), expected)
    s.close()
    with bt.open(store_path) as s2:
        assert_frame_equal(s2["orders"].scan().collect(), expected)
        assert s2.verify().ok


def test_compact_respects_target_rows(store_path):
    s, t, frames = _small_blocks(store_path, n_blocks=9, rows=100)
    res = t.compact(target_rows=300, min_rows=200)
    assert t.blocks["rows"].to_list() == [300, 300, 300]
    assert res.merges == 3
    assert_frame_equal(t.scan().collect(), pl.concat(frames))
    s.close()


def test_crash_between_merge_and_delete_neither_loses_nor_duplicates(store_path, tmp_path):
    s, t, frames = _small_blocks(store_path, n_blocks=5)
    blocks_dir = store_path / "orders" / "blocks"
    saved = tmp_path / "saved"
    shutil.copytree(blocks_dir, saved)
    t.compact()
    s.close()
    # The state a crash after the merged block's rename, before any input was deleted, leaves behind:
    for f in saved.iterdir():
        shutil.copy2(f, blocks_dir / f.name)
    assert len(list(blocks_dir.glob("*.parquet"))) == 6
    with bt.open(store_path) as s2:
        t2 = s2["orders"]
        assert t2.recovery.superseded_blocks_removed == 5
        assert_frame_equal(t2.scan().collect(), pl.concat(frames))
    assert len(list(blocks_dir.glob("*.parquet"))) == 1


def test_compact_leaves_multi_part_appends_alone(store_path):
    with bt.open(store_path) as s:
        t = s.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=1_000)
        big = make_orders(2_500)
        t.append(big)  # parts of 1000, 1000, 500
        small = make_orders(10, start=5_000)
        t.append(small)
        t.flush()
        res = t.compact()
        assert res.merges == 0
        assert t.blocks["rows"].to_list() == [1_000, 1_000, 500, 10]
        assert_frame_equal(t.scan().collect(), pl.concat([big, small]))
