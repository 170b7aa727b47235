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
from tests.conftest import ORDERS_SCHEMA, T0, make_orders

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


# --- pictures worth looking at: readable ticks, bytes from 0, hot rows do not stretch the axis ---


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the figures are saved for a human to look at (pytest keeps the last few base temp dirs)."""
    return tmp_path_factory.mktemp("figures")


def _time_table(
    store: bt.BacktraceStore, name: str, step: dt.timedelta, *, far: dt.timedelta | None = None
) -> bt.Table:
    """6 blocks of 100 rows ``step`` apart, 20 hot rows after them, and (``far``) one hot row at T0 + far."""
    schema = {"ts": pl.Datetime("us", "UTC"), "v": pl.Int64}
    t = store.create_table(name, schema, time_column="ts", max_block_rows=100)
    for b in range(7):
        n = 100 if b < 6 else 20
        t.append(pl.DataFrame({"ts": [T0 + step * (b * 100 + i) for i in range(n)], "v": list(range(n))}, schema))
    if far is not None:
        t.append(pl.DataFrame({"ts": [T0 + far], "v": [0]}, schema))
    assert (len(t.blocks), t.hot_rows) == (6, 20 + (far is not None))
    return t


def _int_table(store: bt.BacktraceStore) -> bt.Table:
    t = store.create_table("ticks", {"t": pl.Int64, "v": pl.Int64}, time_column="t", max_block_rows=100)
    for b in range(6):
        t.append(pl.DataFrame({"t": list(range(b * 100_000, b * 100_000 + 100)), "v": [1] * 100}))
    return t


def _plain_table(store: bt.BacktraceStore) -> bt.Table:
    t = store.create_table("plain", {"x": pl.Int64}, max_block_rows=10)
    for i in range(12):
        t.append(pl.DataFrame({"x": list(range(10 * i, 10 * i + 10))}))
    return t


def _notebook_04_table(store: bt.BacktraceStore) -> bt.Table:
    """Notebook 04's table: 50 blocks of 10,000 one-second rows and one hot row ten days out."""
    t = store.create_table("nb04", ORDERS_SCHEMA, time_column="ts", max_block_rows=10_000)
    t.append(make_orders(500_000))
    t.append(pl.DataFrame({"ts": [T0 + dt.timedelta(days=10)], "symbol": ["BTC"], "price": [1.0], "qty": [1]}))
    assert len(t.blocks) == 50
    return t


CASES: dict[str, Any] = {
    "days": lambda s: _time_table(s, "days", dt.timedelta(seconds=864)),  # a day per block
    "weeks": lambda s: _time_table(s, "weeks", dt.timedelta(seconds=864 * 14)),  # two weeks per block
    "hours": lambda s: _time_table(s, "hours", dt.timedelta(seconds=36)),
    "seconds": lambda s: _time_table(s, "seconds", dt.timedelta(milliseconds=10)),
    "far_hot_row": lambda s: _time_table(s, "far", dt.timedelta(seconds=36), far=dt.timedelta(days=30)),
    "integer_time": _int_table,
    "no_time_column": _plain_table,
    "notebook_04": _notebook_04_table,
}


def _overlapping_tick_labels(fig: Any) -> list[tuple[str, str]]:
    """Pairs of visible, non-empty tick labels of one axis whose drawn boxes intersect."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    bad = []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            labels = [t for t in axis.get_ticklabels() if t.get_visible() and t.get_text().strip()]
            boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in labels]
            for i, (text_a, a) in enumerate(boxes):
                bad += [(text_a, text_b) for text_b, b in boxes[i + 1 :] if a.overlaps(b)]
    return bad


def _save(fig: Any, path: Path) -> None:
    fig.savefig(path, dpi=80)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("size", ["figure", "small_axes"])
def test_tick_labels_do_not_overlap_and_bytes_start_at_zero(
    store: bt.BacktraceStore, figures: Path, case: str, size: str
) -> None:
    t = CASES[case](store)
    if size == "figure":
        fig = t.plot_blocks()
    else:  # a notebook's side-by-side panel: plot_blocks(ax=...) into a 4.5-inch-wide axes
        fig, ax = plt.subplots(figsize=(4.5, 3), layout="constrained")
        t.plot_blocks(ax=ax)
    _save(fig, figures / f"{case}_{size}.png")
    assert _overlapping_tick_labels(fig) == []
    if size == "figure":
        ax_bytes = fig.axes[2]
        assert ax_bytes.get_ylabel() == "KiB (dots)"
        assert ax_bytes.get_ylim()[0] == 0  # equal blocks look equal
        assert max(ax_bytes.lines[0].get_ydata()) <= ax_bytes.get_ylim()[1]
        assert fig.axes[1].get_ylim()[0] == 0


def test_date_ticks_are_concise(store: bt.BacktraceStore) -> None:
    fig = CASES["days"](store).plot_blocks()
    fig.canvas.draw()
    labels = [x.get_text() for x in fig.axes[1].get_xticklabels() if x.get_text()]
    assert max(map(len, labels)) <= 6, labels  # "Jan", "02", ..., not "2024-01-02" each
    assert isinstance(fig.axes[1].xaxis.get_major_formatter(), mdates.ConciseDateFormatter)


def test_an_integer_time_column_is_not_drawn_as_dates(store: bt.BacktraceStore) -> None:
    fig = _int_table(store).plot_blocks()
    fig.canvas.draw()
    labels = [x.get_text() for x in fig.axes[1].get_xticklabels() if x.get_text()]
    assert "500000" in labels or "500,000" in labels, labels
    assert fig.axes[1].get_xlabel() == "t"


@pytest.mark.parametrize("case", ["far_hot_row", "notebook_04"])
def test_a_far_hot_row_does_not_stretch_the_time_axis(store: bt.BacktraceStore, figures: Path, case: str) -> None:
    t = CASES[case](store)
    fig = t.plot_blocks()
    _save(fig, figures / f"{case}_range.png")
    lo, hi = mdates.date2num(t.blocks["min.ts"].min()), mdates.date2num(t.blocks["max.ts"].max())
    margin = (hi - lo) * 0.15
    x0, x1 = fig.axes[0].get_xlim()
    assert lo - margin <= x0 <= lo
    assert hi <= x1 <= hi + margin, (mdates.num2date(x1), mdates.num2date(hi))
    # the hot rows are still there: a patch inside the axis, an arrowhead on the edge, the legend says where
    (hot,) = hot_patches(fig.axes[0])
    assert x0 <= hot.get_x()
    assert hot.get_x() + hot.get_width() <= x1
    assert [line.get_gid() for line in fig.axes[0].lines] == ["hot-beyond-right"]
    time_range = t.time_range()
    assert time_range is not None
    far = time_range[1]
    assert f"to {far:%Y-%m-%d}" in fig.axes[0].get_legend().get_texts()[-1].get_text()


def test_hot_rows_just_after_the_blocks_widen_the_axis_to_show_them(filled: bt.Table) -> None:
    fig = filled.plot_blocks()
    (hot,) = hot_patches(fig.axes[0])
    assert hot.get_x() + hot.get_width() <= fig.axes[0].get_xlim()[1]
    assert hot.get_x() + hot.get_width() == pytest.approx(mdates.date2num(T0 + dt.timedelta(seconds=5_249)))
    assert len(fig.axes[0].lines) == 0  # nothing off the axis
