"""Answers from statistics: how many rows of a block match, and which values they hold.

The pruner (:mod:`bt_frames.prune`) gives every block and conjunct of a
predicate a verdict: no row matches, every row matches, or some may. This
module goes one step further for the blocks in between. A block's statistics
hold, for low-cardinality columns, the *whole distribution* of a column's
values: each distinct value with its row count (``distinct.<c>`` and
``counts.<c>``) plus ``null_count.<c>``. When everything the predicate still
asks of a block (its *residual*: the conjuncts not already true for every
row) is about one column whose distribution is known, the predicate can be
evaluated on that distribution instead of on the rows::

    value  count            symbol == "ETH"  ->  count of matching rows = 412
    "BTC"    833                   false
    "ETH"    412                   true
    null       3                   null (dropped, as filter() drops it)

This is exact, not an estimate, because the residual conjuncts are
elementwise (the pruner only accepts comparisons with literals, ``is_in``,
``is_between``, ``is_null``, ``&``, ``|``, ``~``), so each row's result
depends on its own value alone. A predicate about nullness alone
(``is_null``/``is_not_null``) needs only ``null_count``, so it is answered
for every column.

The same distribution also tells which values the matching rows hold: if
they all hold one value (``symbol == "ETH"``: all "ETH"), a scan that needs
only the height and that column can build the rows without reading the
block (:func:`constant_values`).

Everything here is computed by Polars over the statistics frame, for all
blocks at once; nothing reads a block file.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

log = logging.getLogger("bt_frames")

_BLOCK = "__bt_block__"
_N = "__bt_n__"


def _nullness_only(node: Any, col: str) -> bool:
    """``node`` (Polars' JSON form of an expression) depends on ``col`` being null, nothing else."""
    if not isinstance(node, dict) or len(node) != 1:
        return False
    key, body = next(iter(node.items()))
    if key == "BinaryExpr" and body["op"] in ("And", "LogicalAnd", "Or", "LogicalOr"):
        return _nullness_only(body["left"], col) and _nullness_only(body["right"], col)
    if key == "Function" and isinstance(body.get("function"), dict) and "Boolean" in body["function"]:
        b = body["function"]["Boolean"]
        name = b if isinstance(b, str) else next(iter(b))
        args = body["input"]
        if name == "Not" and len(args) == 1:
            return _nullness_only(args[0], col)
        if name in ("IsNull", "IsNotNull") and len(args) == 1:
            return args[0] == {"Column": col}
    return False


def _stand_in(dtype: pl.DataType) -> Any:
    """Any non-null value of ``dtype`` (only its non-nullness is ever looked at)."""
    try:
        return pl.Series([0]).cast(dtype).item() if dtype.is_numeric() else pl.Series([""]).cast(dtype).item()
    except pl.exceptions.PolarsError:
        return None


def residual_column(exprs: Sequence[pl.Expr], trees: Sequence[Any]) -> tuple[str, bool] | None:
    """The one column the residual conjuncts ``exprs`` read, and whether they test only its nullness."""
    cols: set[str] = set()
    for e in exprs:
        cols.update(e.meta.root_names())
    if len(cols) != 1:
        return None
    col = next(iter(cols))
    return col, all(_nullness_only(t, col) for t in trees)


def matching(
    stats: pl.DataFrame,
    schema: pl.Schema,
    residual: pl.Expr,
    col: str,
    nullness: bool,
    blocks: Sequence[int],
) -> pl.DataFrame | None:
    """Per block of ``blocks`` (row numbers of ``stats``): ``_BLOCK``, ``rows`` matching ``residual``
    (an elementwise predicate on ``col`` alone; null where the block's value counts are incomplete),
    ``n_values`` (distinct values among those rows, null counted) and ``value`` (one of them). None
    when nothing can be computed.

    The value counts of every block go into one small frame, ``(block, value, count)`` with null as a
    value, which ``residual`` filters in one Polars call; the sums per block are numpy's.
    ``nullness``: ``residual`` only asks whether values are null, so each block is described by its
    null count and one stand-in non-null value (any value of the type): always complete.
    """
    dtype = schema[col]
    k = len(blocks)
    idx = np.asarray(blocks, dtype=np.int64)
    # numpy here: each Polars Series method would be a query of its own
    nulls = stats.get_column(f"null_count.{col}").to_numpy()[idx]
    rows = stats.get_column("rows").to_numpy()[idx]
    if nullness:
        filler = _stand_in(dtype)
        if filler is None:
            return None
        bid = np.flatnonzero(rows > nulls)  # blocks with non-null rows: one stand-in row each
        vals = (
            pl.Series(col, [filler], dtype=dtype).new_from_index(0, len(bid))
            if len(bid)
            else pl.Series(col, [], dtype=dtype)
        )
        cnts = (rows - nulls)[bid]
        known = np.ones(k, dtype=bool)
    else:
        cnt = f"counts.{col}"
        if cnt not in stats.columns:
            return None
        # Polars, not Arrow: pa.array(ndarray), fill_null and to_numpy of an array with nulls import pandas
        # (0.3-0.6 s, once per process: the first count query or delete of a Polars-only process paid it)
        counts_all = stats.get_column(cnt).gather(idx)
        distinct_all = stats.get_column(f"distinct.{col}").gather(idx)
        lens = counts_all.list.len().fill_null(0).to_numpy().astype(np.int64)
        dlens = distinct_all.list.len().fill_null(0).to_numpy().astype(np.int64)
        # a block's counts are usable only with its distinct set beside them, value for value
        # (blocks written before counts existed have a distinct set and no counts)
        has = counts_all.is_not_null().to_numpy() & distinct_all.is_not_null().to_numpy() & (lens == dlens)
        sel = np.flatnonzero(has & (lens > 0))  # no empty or null list: explode() gives each one's values
        bid = np.repeat(sel, lens[sel])
        cnts = counts_all.gather(sel).explode().to_numpy().astype(np.int64)
        sums = np.bincount(bid, weights=cnts, minlength=k).astype(np.int64)
        known = (has & (sums + nulls == rows)) | (nulls == rows)
        keep = known[bid]
        vals = distinct_all.gather(sel).explode().filter(pl.Series(keep, dtype=pl.Boolean)).alias(col)
        if vals.dtype != dtype:  # categorical/enum values are kept as strings
            vals = vals.cast(dtype)
        cnts, bid = cnts[keep], bid[keep]
    with_nulls = np.flatnonzero(nulls > 0)
    table = pl.DataFrame(
        [
            pl.concat([vals.alias(col), pl.Series(col, [None] * len(with_nulls), dtype=dtype)]),
            pl.Series(_N, np.concatenate([np.asarray(cnts, dtype=np.int64), nulls[with_nulls].astype(np.int64)])),
            pl.Series(_BLOCK, np.concatenate([bid, with_nulls]).astype(np.int64)),
        ]
    )
    try:
        hits = table.filter(residual)
    except Exception as e:  # a literal Polars cannot compare with the values: read the blocks instead
        log.debug("counts: cannot evaluate %s on the value counts of %r (%s)", residual, col, e)
        return None
    hit_block = hits.get_column(_BLOCK).to_numpy()
    matched = np.bincount(hit_block, weights=hits.get_column(_N).to_numpy(), minlength=k).astype(np.int64)
    n_values = np.bincount(hit_block, minlength=k)
    value: list[Any] = [None] * k
    hit_values = hits.get_column(col)
    if nullness:
        # the non-null rows are a stand-in: only "every matching row is null" names a value
        null_hit = hit_values.is_null().to_numpy()
        n_values = np.where(np.bincount(hit_block[~null_hit], minlength=k) > 0, 2, n_values)
    else:
        first = np.unique(hit_block, return_index=True)
        for b, i in zip(first[0].tolist(), first[1].tolist(), strict=True):
            value[b] = hit_values[i]
    known_list = known.tolist()
    return pl.DataFrame(
        {
            _BLOCK: list(blocks),
            "rows": [int(m) if ok else None for m, ok in zip(matched.tolist(), known_list, strict=True)],
            "n_values": [int(v) if ok else None for v, ok in zip(n_values.tolist(), known_list, strict=True)],
            "value": pl.Series("value", value, dtype=dtype),
        },
        schema_overrides={"rows": pl.Int64, "n_values": pl.Int64},
    )
