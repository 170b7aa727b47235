"""The pruner's three verdicts and the answers it gives from statistics, against an oracle.

For random blocks (real statistics: ``compute_stats`` and the statistics
frame, as a store builds them) and random predicates over every dtype the
pruner handles, each claim the plan makes is checked on the block's rows:

- verdict "none"  => ``block.filter(p)`` is empty;
- verdict "all"   => ``block.filter(p)`` keeps every row;
- ``rows_matching`` (when known) == ``block.filter(p).height``;
- ``known_values(c)`` says "one value v" => every matching row holds v in ``c``.

A wrong claim here would make a scan skip rows, skip the predicate on rows
that do not match, or count rows it never read -- so this is the soundness
test of everything ``scan()`` answers without reading.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl
import pytest

from bt_frames import prune
from bt_frames.storage import blocks as blk
from bt_frames.storage import layout
from bt_frames.storage.catalog import stats_frame
from bt_frames.table import Snapshot

NY = ZoneInfo("America/New_York")
ENUM = pl.Enum(["lo", "mid", "hi"])

# column -> (dtype, domain of values); every domain has the edge values of its type
DOMAINS: dict[str, tuple[pl.DataType, list[Any]]] = {
    "i8": (pl.Int8(), [-128, -1, 0, 1, 127]),
    "u32": (pl.UInt32(), [0, 1, 7, 2**32 - 1]),
    "i": (pl.Int64(), [-5, 0, 3, 10, 2**62]),
    "f": (pl.Float64(), [-math.inf, -1.5, -0.0, 0.0, 2.5, math.inf, math.nan]),
    "f32": (pl.Float32(), [-1.0, 0.0, 0.5, math.nan]),
    "s": (pl.String(), ["", "a", "ab", "b", "é"]),
    "b": (pl.Boolean(), [True, False]),
    "d": (pl.Date(), [dt.date(1969, 12, 31), dt.date(2024, 2, 29), dt.date(2024, 3, 1)]),
    "t": (pl.Datetime("ms", "America/New_York"), [dt.datetime(2024, 3, 10, h, tzinfo=NY) for h in (0, 1, 3, 23)]),
    "ns": (pl.Datetime("ns"), [dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 1, 0, 0, 1), dt.datetime(2262, 1, 1)]),
    "dur": (pl.Duration("us"), [dt.timedelta(0), dt.timedelta(seconds=-1), dt.timedelta(days=3)]),
    "tm": (pl.Time(), [dt.time(0), dt.time(12, 30), dt.time(23, 59, 59)]),
    "cat": (pl.Categorical(), ["x", "y", "z"]),
    "en": (ENUM, ["lo", "mid", "hi"]),
}
SCHEMA = pl.Schema({c: d for c, (d, _) in DOMAINS.items()})
ORDERED = [c for c in DOMAINS if c not in ("cat", "b")]  # < and > are defined on them


def _leaf(draw: Any, st: Any) -> pl.Expr:
    col = draw(st.sampled_from(sorted(DOMAINS)))
    dtype, dom = DOMAINS[col]
    c = pl.col(col)

    def lit(v: Any) -> pl.Expr:
        return pl.lit(v, dtype=dtype) if col not in ("cat", "en") else pl.lit(v)

    kind = draw(st.sampled_from(["cmp", "cmp", "cmp", "between", "in", "null"]))
    if kind == "cmp":
        ops = ["==", "!="] + (["<", "<=", ">", ">="] if col in ORDERED else [])
        op = draw(st.sampled_from(ops))
        v = lit(draw(st.sampled_from(dom)))
        if draw(st.booleans()):
            return {"==": c == v, "!=": c != v, "<": c < v, "<=": c <= v, ">": c > v, ">=": c >= v}[op]
        return {"==": v == c, "!=": v != c, "<": v > c, "<=": v >= c, ">": v < c, ">=": v <= c}[op]
    if kind == "between" and col in ORDERED:
        lo, hi = draw(st.sampled_from(dom)), draw(st.sampled_from(dom))
        closed = draw(st.sampled_from(["both", "left", "right", "none"]))
        return c.is_between(lit(lo), lit(hi), closed=closed)
    if kind in ("in", "between"):
        values = draw(st.lists(st.sampled_from([*dom, None]), max_size=4))
        inner = pl.String() if col in ("cat", "en") else dtype
        return c.is_in(pl.Series(values, dtype=inner).implode(), nulls_equal=draw(st.booleans()))
    return c.is_null() if draw(st.booleans()) else c.is_not_null()


def _predicate(draw: Any, st: Any, depth: int = 0) -> pl.Expr:
    if depth >= 2 or draw(st.integers(0, 2)) == 0:
        return _leaf(draw, st)
    kind = draw(st.sampled_from(["and", "and", "or", "not"]))
    a = _predicate(draw, st, depth + 1)
    if kind == "not":
        return ~a
    b = _predicate(draw, st, depth + 1)
    return a & b if kind == "and" else a | b


def _frame(draw: Any, st: Any, n: int) -> pl.DataFrame:
    cols = {}
    for c, (dtype, dom) in DOMAINS.items():
        # few values per block, so that "all rows match" and single-valued blocks come up often
        pool = draw(st.lists(st.sampled_from([*dom, None]), min_size=1, max_size=3))
        cols[c] = pl.Series(c, draw(st.lists(st.sampled_from(pool), min_size=n, max_size=n)), dtype=dtype)
    return pl.DataFrame(list(cols.values()))


def _matching(df: pl.DataFrame, p: pl.Expr) -> pl.DataFrame:
    """Rows where ``p`` is true as ``select`` evaluates it (Polars 2.1's ``filter`` has an optimizer bug:
    ``tests/test_prune.py::test_polars_filter_drops_a_row_its_select_keeps``)."""
    return df.filter(df.select(p).to_series().fill_null(False))


def _check(frames: list[pl.DataFrame], predicates: list[pl.Expr]) -> int:
    infos = []
    for i, df in enumerate(frames):
        name = layout.BlockName(i + 1, i + 1, 1, 1, "0" * 16)
        infos.append(blk.BlockInfo(name, str(name), df.height, 0, blk.compute_stats(df)))
    snap = Snapshot(tuple(infos), (), stats_frame(infos, SCHEMA))
    claims = 0
    for p in predicates:
        try:
            truth = [_matching(df, p).height for df in frames]
        except pl.exceptions.PolarsError:
            continue  # not a valid query on this data (Polars refuses it): nothing to check
        report = prune.plan(snap, SCHEMA, p, table="t")
        frame = report.to_frame()
        for i, (verdict, counted) in enumerate(zip(frame["verdict"], frame["rows_matching"], strict=True)):
            rows = frames[i].height
            if verdict == prune.NONE:
                assert truth[i] == 0, f"block {i}: 'none' but {truth[i]} rows match {p}\n{frames[i]}"
            if verdict == prune.ALL:
                assert truth[i] == rows, f"block {i}: 'all' but {truth[i]}/{rows} rows match {p}\n{frames[i]}"
            if counted is not None:
                claims += 1
                assert counted == truth[i], f"block {i}: counted {counted}, {truth[i]} match {p}\n{frames[i]}"
        survivors = frame["scanned"].arg_true().to_list()
        for c in DOMAINS:
            for k, (one, value) in enumerate(report.known_values(c)):
                if not one:
                    continue
                claims += 1
                got = _matching(frames[survivors[k]], p).get_column(c)
                expected = pl.Series(c, [value] * got.len(), dtype=got.dtype)
                assert got.equals(expected), f"block {survivors[k]}: {c} claimed all {value!r} under {p}: {got}"
    return claims


@pytest.mark.hypothesis
def test_every_claim_the_plan_makes_holds_on_the_rows() -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    made = []

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data())
    def check(data: Any) -> None:
        frames = [_frame(data.draw, st, n) for n in data.draw(st.lists(st.integers(0, 12), min_size=1, max_size=4))]
        made.append(_check(frames, [_predicate(data.draw, st) for _ in range(4)]))

    check()
    assert sum(made) > 200  # the claims were made, so the assertions above ran


def test_verdicts_on_hand_made_blocks() -> None:
    """One case per verdict and kind of count, written out."""
    a = pl.DataFrame({"s": ["a", "a", "a"], "i": [1.0, 2.0, 3.0]})  # floats keep no value counts
    b = pl.DataFrame({"s": ["a", "b", None], "i": [4.0, 5.0, None]})
    c = pl.DataFrame({"s": ["b", "b", "c"], "i": [6.0, 7.0, 8.0]})
    frames = [a, b, c]
    schema = a.schema
    infos = []
    for i, df in enumerate(frames):
        name = layout.BlockName(i + 1, i + 1, 1, 1, "0" * 16)
        infos.append(blk.BlockInfo(name, str(name), df.height, 0, blk.compute_stats(df)))
    snap = Snapshot(tuple(infos), (), stats_frame(infos, schema))

    r = prune.plan(snap, schema, pl.col("s") == "a", table="t")
    assert r.to_frame()["verdict"].to_list() == ["all", "some", "none"]
    assert r.rows_matching.to_list() == [3, 1, 0]  # block 2 from its value counts: "a" x1
    assert r.known_values("s") == [(True, "a"), (True, "a")]
    assert "answered from metadata" in repr(r)
    assert "1 none, 1 some, 1 all" in repr(r)

    r = prune.plan(snap, schema, pl.col("i") >= 4, table="t")
    assert r.to_frame()["verdict"].to_list() == ["none", "some", "all"]  # a null in block 2: not "all"
    assert r.rows_matching.to_list() == [0, None, 3]  # no value counts for i with a range: read block 2

    r = prune.plan(snap, schema, pl.col("i").is_null(), table="t")
    assert r.rows_matching.to_list() == [0, 1, 0]  # null counts answer is_null for any column
    assert r.known_values("i") == [(True, None)]

    r = prune.plan(snap, schema, (pl.col("i") >= 4) & (pl.col("s") == "b"), table="t")
    assert r.rows_matching.to_list() == [0, None, 2]  # block 3: i >= 4 holds for every row, then s == "b": 2

    r = prune.plan(snap, schema, pl.col("s").is_in(["a", "b"]), table="t")
    assert r.rows_matching.to_list() == [3, 2, 2]
    assert r.known_values("s") == [(True, "a"), (False, "a"), (True, "b")]  # block 2 matches two values
