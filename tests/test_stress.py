"""Millions of small appends: memory stays bounded while blocks rotate, and nothing is lost.

Runs the writer in a child process (tests/helpers/stress_writer.py) so that its
RSS is its own, not pytest's plus earlier tests'.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import bt_frames as bt
from bt_frames.storage import wal
from tests.helpers.stress_writer import make_batch

pytestmark = pytest.mark.slow

STRESS_WRITER = Path(__file__).parent / "helpers" / "stress_writer.py"
BATCH_ROWS = 1_000
BATCHES = 5_050  # 5.05M rows: 50 full blocks, and a hot tail of 50 appends left in the WAL
MBR = 100_000


def test_five_million_rows_in_small_batches_with_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "db"
    t0 = time.perf_counter()
    # durability="batch": group commit by the background syncer. Per-append fsync ("fsync") would make this a
    # disk benchmark (5,050 fsyncs) without changing what is measured here (memory, rotation, row accounting);
    # "batch" still runs the real syncer thread, unlike "none". Process crashes are test_crash.py's business.
    proc = subprocess.run(
        [
            sys.executable,
            str(STRESS_WRITER),
            str(path),
            "--batches",
            str(BATCHES),
            "--batch-rows",
            str(BATCH_ROWS),
            "--max-block-rows",
            str(MBR),
            "--durability",
            "batch",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "BT_FRAMES_PROGRESS": "0"},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = BATCHES * BATCH_ROWS
    print(
        f"stress: {rows:,} rows in {out['elapsed_s']:.1f}s; raw {out['raw_bytes'] / 1e6:.0f} MB; RSS baseline "
        f"{out['baseline_rss'] / 1e6:.0f} MB, peak {out['peak_rss'] / 1e6:.0f} MB; WAL max "
        f"{out['max_wal_disk_bytes'] / 1e6:.1f} MB"
    )

    # Bounded memory: the writer holds at most one block's worth of hot rows, whatever the data size.
    raw = out["raw_bytes"]
    growth = out["peak_rss"] - out["baseline_rss"]
    assert growth < 0.5 * raw, f"peak RSS grew by {growth / 1e6:.0f} MB for {raw / 1e6:.0f} MB of data"
    samples = out["samples"]  # RSS every 500 batches (500k rows)
    assert max(samples[2:]) - samples[1] < 0.15 * raw, f"RSS keeps growing with the data: {samples}"
    assert out["max_hot_rows"] < MBR
    # The WAL only ever held the hot rows: one segment, at most one block's worth of records.
    assert out["max_wal_segments"] == 1
    assert out["max_wal_records"] <= MBR // BATCH_ROWS
    block_raw = raw / BATCHES * (MBR // BATCH_ROWS)
    assert out["max_wal_disk_bytes"] < 2 * block_raw

    with bt.open(path) as store:
        t = store.table("orders")
        assert t.rows == out["rows"] == rows
        assert t.blocks["rows"].to_list() == [MBR] * (rows // MBR)
        assert t.hot_rows == rows % MBR == 50 * BATCH_ROWS
        state = t.wal_state
        assert (state["segments"], state["records"]) == (1, 50), "the WAL holds exactly the hot tail"
        wal_files = list((t.path / "wal").iterdir())
        assert len(wal_files) == 1
        # an open segment ends at its records, then the zeros its writer synced ahead of them (wal.py)
        scan = wal.read_segment(wal_files[0], is_last=True)
        assert (scan.valid_end, scan.torn_bytes) == (state["bytes"] + 8, 0)
        assert scan.size == scan.valid_end + scan.zero_tail
        assert t.recovery.records_replayed == 50
        assert t.recovery.records_skipped == 0

        # Every row: count, order and aggregates equal what the child appended.
        agg = (
            t.scan()
            .select(
                pl.len().alias("n"),
                pl.col("qty").sum().alias("qty"),
                pl.col("price").sum().alias("price"),
                (pl.col("symbol") == "BTC").sum().alias("btc"),
                pl.col("ts").is_sorted().alias("sorted"),
                pl.col("ts").n_unique().alias("unique_ts"),
            )
            .collect()
            .row(0, named=True)
        )
        assert agg["n"] == agg["unique_ts"] == rows
        assert agg["sorted"]
        assert agg["qty"] == out["qty_sum"]
        assert agg["btc"] == out["btc"]
        assert math.isclose(agg["price"], out["price_sum"], rel_tol=1e-12)

        # Spot checks, row for row: across a block boundary, mid-table, and the hot tail.
        for first, last in [(99, 100), (2_500, 2_500), (BATCHES - 51, BATCHES - 1)]:
            want = pl.concat([make_batch(i, BATCH_ROWS) for i in range(first, last + 1)])
            lo, hi = want["ts"].min(), want["ts"].max()
            got = t.scan().filter(pl.col("ts").is_between(lo, hi)).collect()
            assert_frame_equal(got, want)
            assert t.last_plan is not None
            assert t.last_plan.blocks_scanned <= 2
    print(f"stress test total {time.perf_counter() - t0:.1f}s")
