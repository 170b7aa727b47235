"""table.plot_blocks(where): one rectangle per block along the time axis, coloured pruned vs scanned."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import bt_frames as bt
from bt_frames import _plot
from tests.conftest import T0, make_orders

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures() -> Iterator[None]:
    yield
    plt.close("all")


@pytest.fixture
def filled(orders: bt.Table) -> bt.Table:
    """5 blocks of 1,000 rows (block i holds ts i*1000 .. i*1000+999 s) + 250 hot rows."""
    for i in range(5):
        orders.append(make_orders(1_000, start=1_000 * i))
    orders.append(make_orders(250, start=5_000))
    return orders


def block_patches(ax: Any) -> list[Rectangle]:
    return [p for p in ax.patches if isinstance(p, Rectangle) and str(p.get_gid()).startswith("block:")]


def hot_patches(ax: Any) -> list[Rectangle]:
    return [p for p in ax.patches if p.get_gid() == "hot"]


def count_colour(patches: list[Rectangle], colour: str) -> int:
    return sum(p.get_facecolor() == to_rgba(colour) for p in patches)


def test_one_rectangle_per_block_coloured_as_the_prune_report_says(filled: bt.Table) -> None:
    where = pl.col("ts").is_between(T0 + dt.timedelta(seconds=1_500), T0 + dt.timedelta(seconds=2_500))
    report = filled.prune(where)
    assert (report.blocks_total, report.blocks_scanned) == (5, 2)
    fig = filled.plot_blocks(where)
    ax = fig.axes[0]
    blocks = block_patches(ax)
    assert len(blocks) == report.blocks_total
    assert count_colour(blocks, _plot.SCANNED_COLOR) == report.blocks_scanned
    assert count_colour(blocks, _plot.PRUNED_COLOR) == report.blocks_pruned
    scanned = [p.get_gid().removeprefix("block:") for p in blocks if p.get_facecolor() == to_rgba(_plot.SCANNED_COLOR)]
    assert scanned == report.to_frame().filter("scanned").get_column("block").to_list()
    assert len(hot_patches(ax)) == 1
    assert hot_patches(ax)[0].get_facecolor() == to_rgba(_plot.HOT_COLOR)


def test_rectangles_span_each_blocks_time_range(filled: bt.Table) -> None:
    fig = filled.plot_blocks()
    stats = filled.blocks
    for p, lo, hi in zip(block_patches(fig.axes[0]), stats["min.ts"], stats["max.ts"], strict=True):
        assert p.get_x() == pytest.approx(mdates.date2num(lo))
        assert p.get_x() + p.get_width() == pytest.approx(mdates.date2num(hi))
    hot = hot_patches(fig.axes[0])[0]
    assert hot.get_x() == pytest.approx(mdates.date2num(T0 + dt.timedelta(seconds=5_000)))
    ys = [p.get_y() for p in block_patches(fig.axes[0])]
    assert ys == sorted(ys)
    assert hot.get_y() > ys[-1]


def test_title_and_legend_carry_the_summary(filled: bt.Table) -> None:
    where = pl.col("ts") >= T0 + dt.timedelta(seconds=3_000)
    report = filled.prune(where)
    fig = filled.plot_blocks(where)
    ax = fig.axes[0]
    pct = round(100 * report.bytes_pruned / report.bytes_total)
    title = ax.get_title()
    assert title.startswith(f"orders: scanned 2 of 5 blocks, {pct}% of bytes avoided")
    assert 'where [(col("ts")) >= (' in title
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["scanned (2)", "pruned (3)", "hot rows (250)"]


def test_second_panel_shows_rows_per_block(filled: bt.Table) -> None:
    fig = filled.plot_blocks(pl.col("symbol") == "NOPE")
    assert len(fig.axes) == 3  # blocks, rows, and the bytes twin axis
    bars = fig.axes[1].patches
    assert [b.get_height() for b in bars] == [1_000] * 5 + [250]
    assert count_colour(list(bars), _plot.PRUNED_COLOR) == 5  # "NOPE" is in no block's distinct set
    dots = fig.axes[2].lines[0].get_ydata()
    assert list(dots) == pytest.approx([b / 1024 for b in filled.blocks["bytes"]])


def test_draws_into_a_given_axes(filled: bt.Table) -> None:
    fig, ax = plt.subplots()
    out = filled.plot_blocks([("ts", "<", T0 + dt.timedelta(seconds=500))], ax=ax)
    assert out is fig
    assert len(fig.axes) == 1
    assert count_colour(block_patches(ax), _plot.SCANNED_COLOR) == 1


def test_no_filter_scans_everything_and_a_flushed_table_has_no_hot_rows(filled: bt.Table) -> None:
    filled.flush()
    fig = filled.plot_blocks()
    blocks = block_patches(fig.axes[0])
    assert len(blocks) == 6
    assert count_colour(blocks, _plot.SCANNED_COLOR) == 6
    assert hot_patches(fig.axes[0]) == []
    assert fig.axes[0].get_title() == "orders: scanned 6 of 6 blocks, 0% of bytes avoided"


def test_a_table_without_time_column_is_drawn_along_lsns(store: bt.BacktraceStore) -> None:
    t = store.create_table("plain", {"x": pl.Int64}, max_block_rows=10)
    for i in range(3):
        t.append(pl.DataFrame({"x": list(range(10 * i, 10 * i + 10))}))
    fig = t.plot_blocks(pl.col("x") >= 20)
    blocks = block_patches(fig.axes[0])
    assert [(p.get_x(), p.get_width()) for p in blocks] == [(1.0, 1.0), (2.0, 1.0), (3.0, 1.0)]
    assert count_colour(blocks, _plot.SCANNED_COLOR) == 1
    assert fig.axes[1].get_xlabel() == "LSN"


def test_missing_matplotlib_raises_a_clear_error(store_path: Path, orders: bt.Table) -> None:
    orders.append(make_orders(10))
    orders.store.close()
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["matplotlib"] = None  # as if it were not installed
        import bt_frames as bt
        store = bt.open({str(store_path)!r}, read_only=True)
        try:
            store.table("orders").plot_blocks()
        except bt.MissingOptionalDependencyError as e:
            print(isinstance(e, ImportError), isinstance(e, bt.BtError), e.package)
            print(e)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    first, message = out.stdout.splitlines()[:2]
    assert first == "True True matplotlib"
    assert message == (
        "Table.plot_blocks needs matplotlib, which is not installed. Install it with: pip install 'bt_frames[notebook]'"
    )
