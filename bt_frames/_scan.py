"""scan(): a Polars IO source that plans with the pruner and reads survivors with Polars."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import polars as pl
from polars.io.plugins import register_io_source

from bt_frames import prune as _prune
from bt_frames.storage import blocks as blk

if TYPE_CHECKING:
    from bt_frames.table import Snapshot, Table

log = logging.getLogger("bt_frames")


def scan(table: Table, where: _prune.Where | None, *, prune: bool = True) -> pl.LazyFrame:
    schema = table.schema
    where_expr = _prune.to_expr(where, schema)

    def source(
        with_columns: list[str] | None, predicate: pl.Expr | None, n_rows: int | None, batch_size: int | None
    ) -> Iterator[pl.DataFrame]:
        snap = table.snapshot()  # one consistent state per collect()
        report = _prune.plan(snap, schema, predicate if prune else None, table=table.name)
        table._record_scan(report, with_columns)
        log.debug("%s", report.summary())
        return read(snap, report.survivors, with_columns, predicate, n_rows, batch_size)

    lf = register_io_source(
        source,
        schema=schema,
        explain_name="bt_frames",
        explain_detail=f"table {table.name!r} at {table.path}",
    )
    if where_expr is not None:
        lf = lf.filter(where_expr)
    return lf


def read(
    snap: Snapshot,
    survivors: Sequence[blk.BlockInfo],
    with_columns: list[str] | None,
    predicate: pl.Expr | None,
    n_rows: int | None,
    batch_size: int | None,
) -> Iterator[pl.DataFrame]:
    """Blocks in LSN order (read by Polars), then the hot rows."""
    remaining = n_rows
    if remaining is not None and remaining <= 0:
        return
    if survivors:
        for b in survivors:
            blk.verify_block(b.path)
        lf = pl.scan_parquet([str(b.path) for b in survivors], glob=False)
        lf = _apply(lf, predicate, with_columns, remaining)
        for df in lf.collect_batches(chunk_size=batch_size, maintain_order=True):
            if df.height == 0:
                continue
            if remaining is not None:
                if df.height > remaining:
                    df = df.head(remaining)
                remaining -= df.height
            yield df
            if remaining is not None and remaining <= 0:
                return
    if snap.hot:
        hot = _apply(pl.concat([c.lazy() for c in snap.hot]), predicate, with_columns, remaining).collect()
        if hot.height:
            yield hot


def _apply(
    lf: pl.LazyFrame, predicate: pl.Expr | None, with_columns: list[str] | None, n_rows: int | None
) -> pl.LazyFrame:
    if predicate is not None:
        lf = lf.filter(predicate)
    if with_columns is not None:
        lf = lf.select(with_columns)
    if n_rows is not None:
        lf = lf.head(n_rows)
    return lf


def iter_batches(
    table: Table, where: _prune.Where | None, *, columns: Sequence[str] | None, batch_size: int
) -> Iterator[pl.DataFrame]:
    lf = scan(table, where)
    if columns is not None:
        lf = lf.select(list(columns))
    for df in lf.collect_batches(chunk_size=batch_size, maintain_order=True):
        if df.height:
            yield df
