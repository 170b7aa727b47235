from __future__ import annotations

import datetime as dt
import shutil

import polars as pl
from polars.testing import assert_frame_equal

import bt_frames as bt
from tests.conftest import ORDERS_SCHEMA, make_orders


def _small_blocks(store_path, n_blocks=8, rows=100, **options):
    frames = [make_orders(rows, start=i * rows) for i in range(n_blocks)]
    s = bt.open(store_path, **options)
    # retired inputs go once the grace period has passed: no versions kept for time travel here
    t = s.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=1_000, keep_versions=dt.timedelta(0))
    for f in frames:
        t.append(f)
        t.flush()  # one small block per append
    return s, t, frames


def test_compact_merges_small_blocks_and_keeps_order(store_path):
    s, t, frames = _small_blocks(store_path, retired_grace=0)
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


def test_crash_before_the_compaction_commits_neither_loses_nor_duplicates(store_path, tmp_path):
    s, t, frames = _small_blocks(store_path, n_blocks=5)
    table_dir = store_path / "orders"
    before = tmp_path / "before"
    shutil.copytree(table_dir, before)
    t.compact()
    merged = [p for p in (table_dir / "blocks").glob("*.parquet") if p.name.startswith(f"{1:020d}-{5:020d}")]
    s.close()
    assert len(merged) == 1
    kept = shutil.copy2(merged[0], tmp_path / merged[0].name)
    # The state a crash leaves after the merged block's rename, before the manifest version that names it:
    shutil.rmtree(table_dir)
    shutil.copytree(before, table_dir)
    shutil.copy2(kept, table_dir / "blocks" / merged[0].name)
    assert len(list((table_dir / "blocks").glob("*.parquet"))) == 6
    with bt.open(store_path) as s2:
        t2 = s2["orders"]
        assert t2.recovery.superseded_blocks_removed == 1  # the merged block: its rows are in the named inputs
        assert t2.blocks.height == 5
        assert_frame_equal(t2.scan().collect(), pl.concat(frames))
    assert len(list((table_dir / "blocks").glob("*.parquet"))) == 5


def test_retired_inputs_stay_for_the_grace_period_then_go(store_path):
    s, t, frames = _small_blocks(store_path, n_blocks=5)  # the default grace: 60 s
    t.compact()
    blocks_dir = store_path / "orders" / "blocks"
    assert len(list(blocks_dir.glob("*.parquet"))) == 6  # 5 retired inputs kept for readers
    assert t.blocks.height == 1
    s.close()
    with bt.open(store_path, retired_grace=0) as s2:
        t2 = s2["orders"]
        assert t2.recovery.retired_blocks_removed == 5
        assert_frame_equal(t2.scan().collect(), pl.concat(frames))
    assert len(list(blocks_dir.glob("*.parquet"))) == 1
    with bt.open(store_path) as s3:
        assert s3.verify().ok


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
