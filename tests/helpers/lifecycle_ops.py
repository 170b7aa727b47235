"""Lifecycle operations as data, with their model: for the crash, power-loss and I/O-error tests.

An operation is a small dict (JSON-able, so a parent and a child process agree
on it without sharing memory); ``run(table, op)`` applies it to a table and
``model(frame, op)`` to a plain Polars frame, by the ROW ORDER RULE of
``bt_frames/_lifecycle.py``. ``sequence(seed, n, start_id)`` draws a
deterministic list of them.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import polars as pl

SCHEMA = pl.Schema(
    {
        "id": pl.Int64(),
        "ts": pl.Datetime("us", "UTC"),
        "symbol": pl.String(),
        "qty": pl.Int64(),
        "price": pl.Float64(),
    }
)
T0 = dt.datetime(2015, 6, 1, tzinfo=dt.UTC)
SYMS = ["A", "B", "C", None]
TABLE = "life"
MAX_BLOCK_ROWS = 40
RETENTION_S = 300  # the "retention" op: rows 300 s older than the newest go (enforce_retention(300 s))
KINDS = ("delete", "update", "upsert", "retention", "compact", "vacuum")  # the ops the crash tests sweep


def rows(start: int, n: int, *, id_base: int = 0, qty: int | None = -1) -> pl.DataFrame:
    """Rows at times ``start..start+n-1`` (seconds after T0); ids ``id_base + t``; ``qty=-1``: i % 10."""
    ts = list(range(start, start + n))
    return pl.DataFrame(
        {
            "id": [id_base + i for i in ts],
            "ts": [T0 + dt.timedelta(seconds=i) for i in ts],
            "symbol": [SYMS[i % 4] for i in ts],
            "qty": [(None if i % 7 == 3 else i % 10) if qty == -1 else qty for i in ts],
            "price": [i * 0.25 for i in ts],
        },
        schema=SCHEMA,
    )


def create(store: Any) -> Any:
    return store.create_table(
        TABLE,
        SCHEMA,
        time_column="ts",
        max_block_rows=MAX_BLOCK_ROWS,
        auto_compact=False,
    )


def setup(store: Any, n: int = 400) -> pl.DataFrame:
    """The table with ``n`` rows in single-append blocks of 30 (which compact() merges) and 7 hot rows."""
    t = create(store)
    for a in range(0, n - 7, 30):
        t.append(rows(a, min(30, n - 7 - a)))
        t.flush()
    t.append(rows(n - 7, 7))
    return rows(0, n)


def where(op: dict[str, Any]) -> pl.Expr:
    w = op["where"]
    if w[0] == "ts_lt":
        return pl.col("ts") < T0 + dt.timedelta(seconds=w[1])
    if w[0] == "ts_between":
        return pl.col("ts").is_between(T0 + dt.timedelta(seconds=w[1]), T0 + dt.timedelta(seconds=w[2]))
    if w[0] == "symbol_eq":
        return pl.col("symbol") == w[1]
    if w[0] == "qty_gt":
        return pl.col("qty") > w[1]
    if w[0] == "id_mod":
        return pl.col("id") % w[1] == w[2]
    raise ValueError(w)


def frame(op: dict[str, Any]) -> pl.DataFrame:
    parts = [rows(a, n, id_base=b, qty=q) for a, n, b, q in op["frame"]]
    return pl.concat(parts) if parts else pl.DataFrame(schema=SCHEMA)


def run(t: Any, op: dict[str, Any]) -> Any:
    k = op["kind"]
    if k == "delete":
        return t.delete(where(op))
    if k == "update":
        return t.update(frame(op))
    if k == "upsert":
        return t.upsert(frame(op), on=op["on"])
    if k == "retention":
        return t.enforce_retention(dt.timedelta(seconds=RETENTION_S))  # one-off: the table keeps no retention
    if k == "compact":
        return t.compact(target_rows=op["target"])
    if k == "vacuum":
        return t.vacuum()
    if k == "append":
        return t.append(frame(op))
    if k == "flush":
        return t.flush()
    raise ValueError(k)


# -- the model ------------------------------------------------------------------------------------------------


def model_delete(m: pl.DataFrame, pred: pl.Expr) -> tuple[pl.DataFrame, int]:
    hit = m.with_columns(pred.fill_null(False).alias("hit")).get_column("hit")  # a scalar is broadcast
    return m.filter(~hit), int(hit.sum())


def model_update(m: pl.DataFrame, df: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Rows of ``m`` in df's time range go; df takes the place of the first of them (else before the first
    row after the range, else last)."""
    if df.height == 0:
        return m, 0
    lo, hi = df["ts"].min(), df["ts"].max()
    hit = m.select(pl.col("ts").is_between(lo, hi)).to_series()
    idx = hit.arg_true()
    if idx.len():
        k = int(idx[0])
        return pl.concat([m.slice(0, k), df, m.slice(k).filter(~hit.slice(k))]), int(hit.sum())
    after = m.select(pl.col("ts") > hi).to_series().arg_true()
    k = int(after[0]) if after.len() else m.height
    return pl.concat([m.slice(0, k), df, m.slice(k)]), 0


def model_upsert(m: pl.DataFrame, df: pl.DataFrame, on: list[str]) -> tuple[pl.DataFrame, int]:
    """A frame row whose (non-null) key matches takes the place of the first table row with that key, the
    later ones go; rows with new (or null) keys go last, in the frame's order."""
    names = m.columns
    key_of = [names.index(k) for k in on]
    frame_rows = df.rows()
    src: dict[tuple[Any, ...], int] = {}
    for j, r in enumerate(frame_rows):
        key = tuple(r[i] for i in key_of)
        if None not in key:
            assert key not in src, "the frame has duplicate keys"
            src[key] = j
    out: list[tuple[Any, ...]] = []
    placed: set[int] = set()
    removed = 0
    for r in m.rows():
        key = tuple(r[i] for i in key_of)
        j = src.get(key) if None not in key else None
        if j is None:
            out.append(r)
            continue
        removed += 1
        if j not in placed:
            placed.add(j)
            out.append(frame_rows[j])
    out += [r for j, r in enumerate(frame_rows) if j not in placed]
    return pl.DataFrame(out, schema=m.schema, orient="row"), removed


def model(m: pl.DataFrame, op: dict[str, Any]) -> pl.DataFrame:
    k = op["kind"]
    if k == "delete":
        return model_delete(m, where(op))[0]
    if k == "update":
        return model_update(m, frame(op))[0]
    if k == "upsert":
        return model_upsert(m, frame(op), op["on"])[0]
    if k == "retention":
        if m.height == 0:
            return m
        newest = m["ts"].max()
        assert isinstance(newest, dt.datetime)
        return m.filter(pl.col("ts") >= newest - dt.timedelta(seconds=RETENTION_S))
    if k == "append":
        return pl.concat([m, frame(op)])
    return m  # compact, vacuum, flush


def draw(rng: random.Random, kind: str, serial: int, now: int) -> dict[str, Any]:
    """One op of ``kind``; ``serial`` makes its new ids unique; ``now``: the newest time value so far (s)."""
    base = 1_000_000 * (serial + 1)
    if kind == "delete":
        w = rng.choice(
            [
                ["ts_lt", rng.randint(0, now)],
                ["ts_between", (a := rng.randint(0, now)), a + rng.randint(0, 60)],
                ["symbol_eq", rng.choice("ABC")],
                ["qty_gt", rng.randint(5, 9)],
                ["id_mod", rng.randint(5, 13), 0],
            ]
        )
        return {"kind": "delete", "where": w}
    if kind == "update":
        a = rng.randint(0, now + 20)
        return {"kind": "update", "frame": [[a, rng.randint(1, 30), base, rng.randint(100, 200)]]}
    if kind == "upsert":
        a = rng.randint(0, now)
        n = min(rng.randint(1, 20), now - a + 1)
        new = rng.randint(0, 5)
        on = rng.choice([["id"], ["ts", "symbol"]])
        # keys of the table (ids < 1e6 are the setup's and the appends') with new values, and new keys after
        # every row, so that the frame never repeats a key
        return {"kind": "upsert", "on": on, "frame": [[a, n, 0, 77], [now + 1, new, base, 88]]}
    if kind == "retention":
        return {"kind": "retention"}
    if kind == "compact":
        return {"kind": "compact", "target": rng.choice([None, 200, 1_000])}
    if kind == "vacuum":
        return {"kind": "vacuum"}
    if kind == "append":
        return {"kind": "append", "frame": [[now + 1, rng.randint(1, 60), 0, -1]]}
    raise ValueError(kind)


def sequence(seed: int, n: int, *, now: int = 400) -> list[dict[str, Any]]:
    """``n`` ops: lifecycle ops, appends that move time on, compactions and vacuums."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = rng.choice(["delete", "update", "upsert", "upsert", "retention", "compact", "vacuum", "append"])
        op = draw(rng, kind, i, now)
        if kind in ("append", "upsert"):  # rows after every row so far: time moves on
            now += op["frame"][-1][1]
        out.append(op)
    return out
