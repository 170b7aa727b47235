"""``table.plot_blocks(where)``: the blocks of a table along its time axis, pruned vs scanned.

Top panel: one rectangle per block, from the block's smallest to its largest
time value (x), one row per block in LSN order (y), coloured by what a scan
with ``where`` does with it: read (``SCANNED_COLOR``) or skipped
(``PRUNED_COLOR``). The hot rows (in memory + WAL, always scanned) are one
hatched rectangle (``HOT_COLOR``) on the last row. Bottom panel: rows per
block as bars over the same spans, bytes per block as dots on a second axis.
The title carries the summary: "scanned k of n blocks, x% of bytes avoided".

The x axis covers the blocks' range plus a margin; hot rows may widen it by
at most ``_HOT_REACH`` of that range, and hot rows beyond are clipped to the
edge, marked there with an arrowhead, and named in the legend ("to <time> ▶"),
so one stray future row does not squeeze every block into a sliver. Date
ticks are concise (``ConciseDateFormatter``) and as many as the width holds;
an integer time column gets plain numbers. Both y axes start at 0.

A table without a time column is drawn along the LSN axis instead. Matplotlib
is optional (``pip install 'bt_frames[notebook]'``) and imported only here.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from bt_frames.errors import MissingOptionalDependencyError

if TYPE_CHECKING:
    from bt_frames._views import TableView as Table
    from bt_frames.prune import Where

SCANNED_COLOR = "#2a9d6f"
PRUNED_COLOR = "#c9c9c9"
HOT_COLOR = "#f28e2b"
_BAR_HEIGHT = 0.8
_HOT_REACH = 0.1  # hot rows may widen the x range by this fraction of the blocks' range, no more
_TITLE_PREDICATE_CHARS = 90


def _matplotlib() -> Any:
    try:
        import matplotlib
        import matplotlib.dates
        import matplotlib.patches
    except ImportError as e:
        raise MissingOptionalDependencyError.needs("Table.plot_blocks", "matplotlib", "notebook") from e
    return matplotlib


def plot_blocks(table: Table, where: Where | None = None, *, ax: Any = None) -> Any:
    """Draw ``table``'s blocks along its time axis, coloured by whether ``where`` prunes them.

    With ``ax`` (a matplotlib ``Axes``) only the block panel is drawn there;
    otherwise a new figure with the block panel and a rows/bytes panel is made
    (through pyplot, so Jupyter shows it). Returns the ``Figure``.
    """
    import polars as pl

    from bt_frames import prune as _prune

    mpl = _matplotlib()
    patches = mpl.patches
    mdates = mpl.dates

    schema = table.schema
    snap = table.snapshot()
    report = _prune.plan(snap, schema, _prune.to_expr(where, schema, table=table.name), table=table.name)
    details = report.to_frame()
    tc = table.time_column
    stats = snap.stats if snap.stats is not None else _prune.stats_frame(snap.blocks, schema)
    by_time = tc is not None and f"min.{tc}" in stats.columns

    date_axis = by_time and tc is not None and (schema[tc] == pl.Date or isinstance(schema[tc], pl.Datetime))

    def x_of(v: Any) -> float:
        if isinstance(v, dt.datetime):
            return float(mdates.date2num(v))
        if isinstance(v, dt.date):
            return float(mdates.date2num(dt.datetime(v.year, v.month, v.day)))
        if isinstance(v, dt.timedelta):  # a Duration time column: seconds
            return v.total_seconds()
        if isinstance(v, dt.time):  # a Time column: seconds since midnight
            return v.hour * 3600 + v.minute * 60 + v.second + v.microsecond / 1e6
        return float(v)

    if by_time:
        assert tc is not None
        lo_s, hi_s = stats.get_column(f"min.{tc}").to_list(), stats.get_column(f"max.{tc}").to_list()
        spans = [(x_of(a), x_of(b)) for a, b in zip(lo_s, hi_s, strict=True) if a is not None and b is not None]
        if len(spans) != len(lo_s):  # a block without time statistics: fall back to LSNs
            by_time = date_axis = False
    if not by_time:
        spans = [(float(f), float(last) + 1) for f, last in zip(details["first_lsn"], details["last_lsn"], strict=True)]
    hot_span: tuple[float, float] | None = None
    hot_ends: tuple[Any, Any] = (
        None,
        None,
    )  # the hot rows' first and last time value, for the legend when off the axis
    if snap.hot_rows:
        if by_time:
            assert tc is not None
            hot = pl.concat([c.select(tc) for c in snap.hot]).get_column(tc)
            hot_ends = (hot.min(), hot.max())
            hot_span = (x_of(hot_ends[0]), x_of(hot_ends[1]))
        else:
            first = max((b.last_lsn for b in snap.blocks), default=0) + 1
            hot_span = (float(first), float(first + len(snap.hot)))

    # The x range: the blocks' range plus a margin. Hot rows may widen it by at most _HOT_REACH of the
    # blocks' range; one hot row far in the future (or past) is clipped to the edge and noted there,
    # instead of squeezing every block into a sliver.
    if spans:
        lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
        reach = (hi - lo) * _HOT_REACH or 1.0
        if hot_span is not None:
            lo, hi = min(lo, max(hot_span[0], lo - reach)), max(hi, min(hot_span[1], hi + reach))
    elif hot_span is not None:
        lo, hi = hot_span
    else:
        lo, hi = 0.0, 1.0
    pad = (hi - lo) * 0.02 or 1.0
    view = (lo - pad, hi + pad)
    min_width = ((hi - lo) or 1.0) * 0.004  # a block of one instant stays visible

    def clip(span: tuple[float, float]) -> tuple[float, float]:
        """``span`` cut to the view, at least ``min_width`` wide and inside it."""
        a = min(max(span[0], view[0]), view[1] - min_width)
        b = max(min(span[1], view[1]), view[0] + min_width)
        return a, max(b - a, min_width)

    if ax is None:
        import matplotlib.pyplot as plt

        fig, (ax_blocks, ax_rows) = plt.subplots(
            2, 1, sharex=True, figsize=(10, 5.5), gridspec_kw={"height_ratios": [3, 1.4]}, layout="constrained"
        )
    else:
        fig, ax_blocks, ax_rows = ax.figure, ax, None

    scanned = details.get_column("scanned").to_list()
    rows = details.get_column("rows").to_list()
    sizes = details.get_column("bytes").to_list()
    for i, ((a, b), keep) in enumerate(zip(spans, scanned, strict=True)):
        ax_blocks.add_patch(
            patches.Rectangle(
                (a, i - _BAR_HEIGHT / 2),
                max(b - a, min_width),
                _BAR_HEIGHT,
                facecolor=SCANNED_COLOR if keep else PRUNED_COLOR,
                edgecolor="#555555",
                linewidth=0.5,
                gid=f"block:{details['block'][i]}",
            )
        )
    n = len(spans)
    if hot_span is not None:
        a, w = clip(hot_span)
        ax_blocks.add_patch(
            patches.Rectangle(
                (a, n - _BAR_HEIGHT / 2),
                w,
                _BAR_HEIGHT,
                facecolor=HOT_COLOR,
                edgecolor="#555555",
                hatch="//",
                linewidth=0.5,
                gid="hot",
            )
        )
    beyond: list[str] = []  # "from <time> ◀" / "to <time> ▶": hot rows off the axis, said in the legend
    if hot_span is not None and hot_span[0] < view[0]:
        _mark_off_axis(ax_blocks, "left", n)
        beyond.append(f"from {_show(hot_ends[0])} ◀")
    if hot_span is not None and hot_span[1] > view[1]:
        _mark_off_axis(ax_blocks, "right", n)
        beyond.append(f"to {_show(hot_ends[1])} ▶")
    rows_n = n + (1 if hot_span is not None else 0)
    ax_blocks.set_xlim(*view)
    ax_blocks.set_ylim(rows_n - 0.5 if rows_n else 0.5, -0.5)  # first block on top
    ax_blocks.set_ylabel("block (LSN order)")
    ax_blocks.grid(axis="x", alpha=0.3)

    pct_bytes = 100 * report.bytes_pruned / report.bytes_total if report.bytes_total else 0.0
    legend = [
        patches.Patch(facecolor=SCANNED_COLOR, edgecolor="#555555", label=f"scanned ({report.blocks_scanned})"),
        patches.Patch(facecolor=PRUNED_COLOR, edgecolor="#555555", label=f"pruned ({report.blocks_pruned})"),
    ]
    if hot_span is not None:
        label = f"hot rows ({report.hot_rows:,})" + "".join(f"\n{b}" for b in beyond)
        legend.append(patches.Patch(facecolor=HOT_COLOR, edgecolor="#555555", hatch="//", label=label))
    ax_blocks.legend(handles=legend, loc="upper right", fontsize="small", framealpha=0.9)
    title = (
        f"{table.name}: scanned {report.blocks_scanned} of {report.blocks_total} blocks, "
        f"{pct_bytes:.0f}% of bytes avoided"
    )
    if report.predicate is not None:
        pred = report.predicate
        if len(pred) > _TITLE_PREDICATE_CHARS:
            pred = pred[: _TITLE_PREDICATE_CHARS - 1] + "…"
        title += f"\nwhere {pred}"
    ax_blocks.set_title(title, fontsize="medium")

    if ax_rows is not None:
        mids = [(a + b) / 2 for a, b in spans]
        widths = [max(b - a, min_width) for a, b in spans]
        colors = [SCANNED_COLOR if k else PRUNED_COLOR for k in scanned]
        ax_rows.bar(mids, rows, width=widths, color=colors, edgecolor="#555555", linewidth=0.5)
        if hot_span is not None:
            a, w = clip(hot_span)
            ax_rows.bar([a + w / 2], [report.hot_rows], width=[w], color=HOT_COLOR, hatch="//")
        ax_rows.set_ylabel("rows")
        ax_rows.set_ylim(bottom=0)
        ax_bytes = ax_rows.twinx()
        kib = [s / 1024 for s in sizes]
        ax_bytes.plot(mids, kib, "o", color="#333333", markersize=3)
        ax_bytes.set_ylim(0, max(kib, default=1.0) * 1.15 or 1.0)  # from 0: equal blocks look equal
        ax_bytes.set_ylabel("KiB (dots)")
        ax_rows.set_xlabel(f"{tc}" if by_time else "LSN")
        _x_ticks(ax_rows, date_axis)
    else:
        ax_blocks.set_xlabel(f"{tc}" if by_time else "LSN")
    _x_ticks(ax_blocks, date_axis)
    return fig


def _x_ticks(ax: Any, date_axis: bool) -> None:
    """Tick labels that fit: short, context-aware dates (ConciseDateFormatter) or plain numbers.

    The number of ticks follows the axes' width, so labels never run into each other.
    """
    import matplotlib.dates as mdates
    import matplotlib.ticker as mticker

    width_in = ax.get_position().width * ax.figure.get_figwidth()
    most = max(3, int(width_in * 1.2))
    if date_axis:
        locator = mdates.AutoDateLocator(tz=dt.UTC, minticks=2, maxticks=most)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=dt.UTC))
    else:
        ax.xaxis.set_major_locator(mticker.MaxNLocator(nbins=most, steps=[1, 2, 2.5, 5, 10]))
        formatter = mticker.ScalarFormatter(useOffset=False)
        formatter.set_powerlimits((-4, 6))
        ax.xaxis.set_major_formatter(formatter)


def _show(value: Any) -> str:
    """A time value as the edge note writes it."""
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S").removesuffix(" 00:00:00")
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _mark_off_axis(ax: Any, side: str, y: float) -> None:
    """A hot-coloured arrowhead on the ``side`` spine at row ``y``: more hot rows lie beyond the axis."""
    right = side == "right"
    ax.plot(
        [1.0 if right else 0.0],
        [y],
        marker=">" if right else "<",
        markersize=9,
        color=HOT_COLOR,
        markeredgecolor="#555555",
        transform=ax.get_yaxis_transform(),  # x in axes fraction, y in data
        clip_on=False,
        gid=f"hot-beyond-{side}",
    )
