"""Engine bugs found while writing the lifecycle CLI, notebook and benchmark (strict xfail until fixed).

Each test states what the design (``bt_frames/_lifecycle.py``) promises and fails today; when the engine
is fixed it passes, and ``strict=True`` makes that an XPASS failure: remove the marker then.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

import bt_frames as bt
from tests.conftest import ORDERS_SCHEMA, make_orders


@pytest.mark.xfail(
    strict=True,
    reason="_lifecycle.upsert wraps its key predicate in pl.all_horizontal([...]), which the pruner does not "
    "understand: every block is read, even where the statistics rule every key out",
)
def test_upsert_reads_only_the_blocks_whose_statistics_allow_its_keys(tmp_path: Path) -> None:
    with bt.BacktraceStore(tmp_path / "db", durability="none") as store:
        t = store.create_table(
            "orders", {**ORDERS_SCHEMA, "order_id": pl.Int64}, time_column="ts", max_block_rows=1_000
        )
        for i in range(10):
            ids = pl.int_range(i * 1_000, (i + 1) * 1_000, dtype=pl.Int64, eager=True)
            t.append(make_orders(1_000, start=i * 1_000).with_columns(order_id=ids))
        keys = pl.Series([1_500, 7_200], dtype=pl.Int64)  # in blocks 2 and 8
        assert t.prune(pl.col("order_id").is_in(keys.implode())).blocks_scanned == 2  # the pruner can tell
        t.upsert(make_orders(2, start=1_500).with_columns(order_id=keys), on="order_id")
        c = t.last_change
        assert c is not None
        assert (c.rows_removed, c.blocks_replaced) == (2, 2)
        assert c.blocks_read == 2, c
