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

import json
import logging
from collections.abc import Sequence
from typing import Any

import polars as pl

from bt_frames.storage.catalog import literal_dtype

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


def _distribution(
    stats: pl.DataFrame, schema: pl.Schema, col: str, blocks: Sequence[int], *, nullness: bool
) -> tuple[pl.LazyFrame, pl.LazyFrame] | None:
    """The value counts of ``col`` in each of ``blocks`` (row numbers of ``stats``), null as one value:
    rows ``(_BLOCK, col, _N)``, and per block whether they are complete (``known``); None if they
    cannot be built at all.

    ``nullness``: the caller only asks whether values are null, so a block is described by its null
    count and one stand-in non-null value (any value of the type): always complete.
    """
    dtype = schema[col]
    nulls, rows, dist, cnt = f"null_count.{col}", "rows", f"distinct.{col}", f"counts.{col}"
    if not nullness and cnt not in stats.columns:
        return None
    picked = [pl.col(nulls), pl.col(rows)] + ([] if nullness else [pl.col(dist), pl.col(cnt)])
    base = stats.lazy().select(pl.int_range(pl.len(), dtype=pl.Int64).alias(_BLOCK), *picked)
    if len(blocks) != stats.height:
        base = base.filter(pl.col(_BLOCK).is_in(pl.Series(list(blocks), dtype=pl.Int64).implode()))
    null_part = base.filter(pl.col(nulls) > 0).select(
        _BLOCK, pl.lit(None, dtype=dtype).alias(col), pl.col(nulls).alias(_N)
    )
    if nullness:
        filler = _stand_in(dtype)
        if filler is None:
            return None
        value_part = base.filter(pl.col(rows) > pl.col(nulls)).select(
            _BLOCK, pl.lit(filler, dtype=dtype).alias(col), (pl.col(rows) - pl.col(nulls)).alias(_N)
        )
        known = base.select(_BLOCK, pl.lit(True).alias("known"))
    else:
        value_part = (
            base.filter(pl.col(nulls) < pl.col(rows))
            .select(_BLOCK, pl.col(dist).alias(col), pl.col(cnt).alias(_N))
            .explode([col, _N])
        )
        if literal_dtype(dtype) != dtype:  # categorical/enum values are kept as strings
            value_part = value_part.with_columns(pl.col(col).cast(dtype))
        # every non-null value counted: counts known (and adding up), or the block is all null
        complete = (pl.col(cnt).is_not_null() & (pl.col(cnt).list.sum() + pl.col(nulls) == pl.col(rows))) | (
            pl.col(nulls) == pl.col(rows)
        )
        known = base.select(_BLOCK, complete.alias("known"))
    return pl.concat([value_part.select(_BLOCK, col, _N), null_part]), known


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
    """Per block of ``blocks``: ``_BLOCK``, ``rows`` matching ``residual`` (an elementwise predicate on
    ``col`` alone; null where the block's value counts are incomplete), ``n_values`` (distinct values
    among those rows, null counted) and ``value`` (one of them). None when nothing can be computed.

    One Polars query over the statistics frame, whatever the number of blocks.
    """
    built = _distribution(stats, schema, col, blocks, nullness=nullness)
    if built is None:
        return None
    table, known = built
    if nullness:  # the non-null row is a stand-in: only "every matching row is null" is a known value
        value_aggs = [
            pl.when(pl.col(col).is_not_null().any()).then(2).otherwise(1).alias("n_values"),
            pl.lit(None, dtype=schema[col]).alias("value"),
        ]
    else:
        value_aggs = [pl.col(col).n_unique().alias("n_values"), pl.col(col).first().alias("value")]
    try:
        hits = table.filter(residual).group_by(_BLOCK).agg(pl.col(_N).sum().alias("rows"), *value_aggs)
        out = (
            known.join(hits, on=_BLOCK, how="left", maintain_order="left")
            .with_columns(
                pl.when(pl.col("known")).then(pl.col("rows").fill_null(0)).alias("rows"),
                pl.when(pl.col("known")).then(pl.col("n_values").fill_null(0)).alias("n_values"),
            )
            .collect()
        )
    except Exception as e:  # a literal Polars cannot compare with the values: read the blocks instead
        log.debug("counts: cannot evaluate %s on the value counts of %r (%s)", residual, col, e)
        return None
    return out


def tree(expr: pl.Expr) -> Any:
    return json.loads(expr.meta.serialize(format="json"))
