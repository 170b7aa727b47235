"""``table.plot_blocks(where)``: the blocks of a table along its time axis, pruned vs scanned.

Top panel: one rectangle per block, from the block's smallest to its largest
time value (x), one row per block in LSN order (y), coloured by what a scan
with ``where`` does with it: read (``SCANNED_COLOR``) or skipped
(``PRUNED_COLOR``). The hot rows (in memory + WAL, always scanned) are one
hatched rectangle (``HOT_COLOR``) on the last row. Bottom panel: rows per
block as bars over the same spans, bytes per block as dots on a second axis.
The title carries the summary: "scanned k of n blocks, x% of bytes avoided".

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

    def x_of(v: Any) -> float:
        if isinstance(v, dt.datetime):
            return float(mdates.date2num(v))
        if isinstance(v, dt.date):
            return float(mdates.date2num(dt.datetime(v.year, v.month, v.day)))
        return float(v)

    if by_time:
        assert tc is not None
        lo_s, hi_s = stats.get_column(f"min.{tc}").to_list(), stats.get_column(f"max.{tc}").to_list()
        spans = [(x_of(a), x_of(b)) for a, b in zip(lo_s, hi_s, strict=True) if a is not None and b is not None]
        if len(spans) != len(lo_s):  # a block without time statistics: fall back to LSNs
            by_time = False
    if not by_time:
        spans = [(float(f), float(last) + 1) for f, last in zip(details["first_lsn"], details["last_lsn"], strict=True)]
    hot_span: tuple[float, float] | None = None
    if snap.hot_rows:
        if by_time:
            assert tc is not None
            hot = pl.concat([c.select(tc) for c in snap.hot]).get_column(tc)
            hot_span = (x_of(hot.min()), x_of(hot.max()))
        else:
            first = max((b.last_lsn for b in snap.blocks), default=0) + 1
            hot_span = (float(first), float(first + len(snap.hot)))

    every = [*spans, *([hot_span] if hot_span else [])]
    total = (max(b for _, b in every) - min(a for a, _ in every)) if every else 1.0
    min_width = (total or 1.0) * 0.004  # a block of one instant stays visible

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
        a, b = hot_span
        ax_blocks.add_patch(
            patches.Rectangle(
                (a, n - _BAR_HEIGHT / 2),
                max(b - a, min_width),
                _BAR_HEIGHT,
                facecolor=HOT_COLOR,
                edgecolor="#555555",
                hatch="//",
                linewidth=0.5,
                gid="hot",
            )
        )
    rows_n = n + (1 if hot_span is not None else 0)
    if every:
        lo, hi = min(a for a, _ in every), max(b for _, b in every)
        pad = (hi - lo) * 0.02 or 1.0
        ax_blocks.set_xlim(lo - pad, hi + pad)
    ax_blocks.set_ylim(rows_n - 0.5 if rows_n else 0.5, -0.5)  # first block on top
    ax_blocks.set_ylabel("block (LSN order)")
    ax_blocks.grid(axis="x", alpha=0.3)
    if by_time:
        ax_blocks.xaxis_date(tz=dt.UTC)

    pct_bytes = 100 * report.bytes_pruned / report.bytes_total if report.bytes_total else 0.0
    legend = [
        patches.Patch(facecolor=SCANNED_COLOR, edgecolor="#555555", label=f"scanned ({report.blocks_scanned})"),
        patches.Patch(facecolor=PRUNED_COLOR, edgecolor="#555555", label=f"pruned ({report.blocks_pruned})"),
    ]
    if hot_span is not None:
        legend.append(
            patches.Patch(facecolor=HOT_COLOR, edgecolor="#555555", hatch="//", label=f"hot rows ({report.hot_rows:,})")
        )
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
            a, b = hot_span
            ax_rows.bar([(a + b) / 2], [report.hot_rows], width=[max(b - a, min_width)], color=HOT_COLOR, hatch="//")
        ax_rows.set_ylabel("rows")
        ax_bytes = ax_rows.twinx()
        ax_bytes.plot(mids, [s / 1024 for s in sizes], "o", color="#333333", markersize=3)
        ax_bytes.set_ylabel("KiB (dots)")
        ax_rows.set_xlabel(f"{tc}" if by_time else "LSN")
    else:
        ax_blocks.set_xlabel(f"{tc}" if by_time else "LSN")
    return fig
