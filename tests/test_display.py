"""Reprs and Jupyter HTML views of stores, tables and prune reports."""

from __future__ import annotations

import datetime as dt
import html
from pathlib import Path

import polars as pl
import pytest

import bt_frames as bt
from bt_frames.prune import _fmt_bytes
from bt_frames.storage import layout
from tests.conftest import ORDERS_SCHEMA, T0, make_orders

EVIL = "<script>alert('x')</script>&"


@pytest.fixture
def filled(orders: bt.Table) -> bt.Table:
    """2 blocks of 1,000 rows (ts 0..1999 s) + 300 hot rows in one WAL record."""
    orders.append(make_orders(1_000))
    orders.append(make_orders(1_000, start=1_000))
    orders.append(make_orders(300, start=2_000))
    return orders


def test_table_repr_shows_rows_blocks_bytes_wal_schema_and_time_range(filled: bt.Table) -> None:
    block_bytes = filled.blocks.get_column("bytes").sum()
    wal_bytes = filled.wal_state["bytes"]
    assert wal_bytes > 0
    assert repr(filled).splitlines() == [
        f"<bt_frames.Table 'orders': 2,300 rows (2,000 in 2 block(s), {_fmt_bytes(block_bytes)}; 300 hot), "
        f"WAL 1 record(s) / {_fmt_bytes(wal_bytes)}>",
        "  schema: ts: Datetime(time_unit='us', time_zone='UTC'), symbol: String, price: Float64, qty: Int64",
        f"  time: {T0} → {T0 + dt.timedelta(seconds=2_299)} (ts)",
    ]


def test_table_html_shows_the_same_facts(filled: bt.Table) -> None:
    out = filled._repr_html_()
    assert "<code>orders</code>" in out
    assert "<td>2,300</td>" in out
    assert "2,000 in 2 block(s)" in out
    assert "<td>300</td>" in out
    assert "1 record(s)" in out
    assert "1 segment(s)" in out
    assert html.escape(f"{T0} → {T0 + dt.timedelta(seconds=2_299)} (ts)") in out
    assert "schema (4 columns)" in out
    assert "<code>symbol</code>" in out


def test_repr_follows_appends_and_flushes(filled: bt.Table) -> None:
    filled.flush()
    first = repr(filled).splitlines()[0]
    assert "2,300 rows (2,300 in 3 block(s)" in first
    assert "0 hot), WAL 0 record(s) / 0 B>" in first


def test_empty_table_and_table_without_time_column(store: bt.BacktraceStore) -> None:
    t = store.create_table("orders", ORDERS_SCHEMA, time_column="ts")
    assert (
        repr(t).splitlines()[0]
        == "<bt_frames.Table 'orders': 0 rows (0 in 0 block(s), 0 B; 0 hot), WAL 0 record(s) / 0 B>"
    )
    assert "  time: - (empty)" in repr(t)
    u = store.create_table("plain", {"x": pl.Int64})
    u.append(pl.DataFrame({"x": [1, 2, 3]}))
    assert "  time: - (no time column)" in repr(u)
    assert "- (no time column)" in u._repr_html_()


def test_store_repr_and_html_list_every_table(store: bt.BacktraceStore, filled: bt.Table) -> None:
    store.append("fills", pl.DataFrame({"ts": [T0], "qty": [5]}))
    lines = repr(store).splitlines()
    assert lines[0] == f"<bt_frames.BacktraceStore {str(store.path)!r} (writer, durability=fsync), 2 table(s)>"
    assert lines[1].startswith("  fills: 1 rows (0 in 0 block(s), 0 B; 1 hot), WAL 1 record(s)")
    assert lines[2].startswith("  orders: 2,300 rows (2,000 in 2 block(s)")
    assert lines[2].endswith(f"time {T0} → {T0 + dt.timedelta(seconds=2_299)} (ts)")
    out = store._repr_html_()
    assert out.count("<tr><td><code>") == 2
    assert "<td>2,300</td><td>2,000</td><td>2</td>" in out
    assert "(writer, durability=fsync)" in out


def test_read_only_and_closed_stores_say_so(store_path: Path, filled: bt.Table) -> None:
    with bt.BacktraceStore(store_path, read_only=True) as ro:
        assert "(read-only), 1 table(s)>" in repr(ro).splitlines()[0]
        assert "  orders: 2,300 rows" in repr(ro)
        t = ro.table("orders")
    assert repr(ro) == f"<bt_frames.BacktraceStore {str(store_path)!r} (closed)>"
    assert repr(t) == "<bt_frames.Table 'orders' (closed)>"
    assert "(closed)" in ro._repr_html_()
    assert "(closed)" in t._repr_html_()


def test_store_repr_shows_a_table_that_cannot_be_opened_instead_of_raising(
    store: bt.BacktraceStore, filled: bt.Table
) -> None:
    bad = store.path / "broken"
    bad.mkdir()
    (bad / layout.TABLE_JSON).write_text("{not json")
    text = repr(store)
    assert "2 table(s)" in text.splitlines()[0]
    assert "  broken: cannot be opened:" in text
    assert "  orders: 2,300 rows" in text
    assert "cannot be opened" in store._repr_html_()


def test_html_escapes_store_path_column_names_and_predicate_literals(tmp_path: Path) -> None:
    path = tmp_path / "a<b>&'c"
    with bt.BacktraceStore(path) as store:
        t = store.create_table("t", {"ts": pl.Datetime("us", "UTC"), EVIL: pl.String}, time_column="ts")
        t.append(pl.DataFrame({"ts": [T0], EVIL: ["<b>value</b>"]}, schema=t.schema))
        t.flush()
        report = t.prune(pl.col(EVIL) == "<img src=x onerror=alert(1)>")
        views = {"store": store._repr_html_(), "table": t._repr_html_(), "report": report._repr_html_()}
    for name, out in views.items():
        for raw in ("<script>", "<img", "a<b>"):
            assert raw not in out, (name, raw)
    assert html.escape(str(path)) in views["store"]
    assert html.escape(EVIL) in views["table"]
    assert "&lt;img src=x onerror=alert(1)&gt;" in views["report"]
    assert "1 block(s) pruned by" in views["report"]  # "<img..." is not in the block's distinct set


def test_prune_report_repr_and_html_show_totals_and_reasons(filled: bt.Table) -> None:
    report = filled.prune(pl.col("ts") >= T0 + dt.timedelta(seconds=1_500))
    bytes_total = filled.blocks.get_column("bytes").sum()
    first_bytes = filled.blocks.get_column("bytes")[0]
    text = repr(report).splitlines()
    assert text[0] == (
        f"PruneReport(table 'orders': 1/2 blocks pruned, 1 scanned; 1,000 rows and {_fmt_bytes(first_bytes)} "
        "avoided; 300 hot rows scanned)"
    )
    assert text[1].startswith('  predicate: [(col("ts")) >= (')
    assert text[2].startswith('  1 block(s) pruned by [(col("ts")) >= (')
    # block 2 holds only rows from second 1,000 on: some match; its count needs a read (ts has no value counts)
    assert text[3] == (
        "  verdicts: 1 none, 1 some, 0 all; 1/2 blocks answered from metadata "
        "(0 matching rows counted without reading a byte)"
    )
    out = report._repr_html_()
    assert "<th>blocks</th><td>2</td><td>1</td><td>1</td>" in out
    assert "<th>rows</th><td>2,000</td><td>1,000</td><td>1,000</td>" in out
    assert f"<th>bytes</th><td>{_fmt_bytes(bytes_total)}</td>" in out
    assert "<th>hot rows</th><td>300</td>" in out
    assert "width:50.0%" in out  # the pruned share of the bar
    assert "1 block(s) pruned by <code>" in out
    assert "verdicts: 1 none, 1 some, 0 all" in out
