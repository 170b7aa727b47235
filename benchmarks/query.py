"""Query benchmark (issue #3): pruned bt_frames scans vs pl.scan_parquet and DuckDB over the same files.

    .venv/bin/python benchmarks/query.py --quick     # 2M rows in 20 blocks (+ the 2,000-block store)
    .venv/bin/python benchmarks/query.py             # 20M rows in 200 blocks
    .venv/bin/python benchmarks/query.py --rebuild   # regenerate bench_data/ first
    .venv/bin/python benchmarks/query.py --quick --profile Q2   # cProfile of bt_frames on one query

The stores live in ``bench_data/`` (git-ignored) and are reused between runs.
Part 1 times four queries, warm (files in the page cache, store open, blocks
already verified), with bt_frames (``table.scan()...collect()``), Polars
``pl.scan_parquet`` over exactly the table's block files, and DuckDB
``read_parquet`` over the same files; it checks that the three agree. Part 2
runs a first query on a 2,000-block store in fresh processes: the cost of
opening (bt_frames reads its statistics cache, Polars reads every footer).
Prints medians, ratios and PASS/MISS against the issue's targets; never fails
on a target.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import json
import os
import pstats
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl
from _common import ORDERS_SCHEMA, ROOT, T0_US, fmt_table, machine_note, make_orders, median, time_call, verdict
from polars.testing import assert_frame_equal

import bt_frames as bt
from bt_frames.storage import blocks as blk

DATA = ROOT / "bench_data"
SPAN_US = 40_000 * 1_000_000  # every store spans ~11 hours, whatever its row count
RARE = "LUNA"  # appears only in one 10-minute burst: distinct-value sets prune it
RARE_FROM_US = T0_US + 3 * 3_600_000_000
RARE_TO_US = RARE_FROM_US + 600_000_000


def _ts(us: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(us / 1e6, tz=dt.UTC)


Q1_FROM = T0_US + 5 * 3_600_000_000 + 123_456_789  # a ~100-second window
Q1_TO = Q1_FROM + 100_000_000
Q2_FROM = T0_US + 7 * 3_600_000_000  # one hour
Q2_TO = Q2_FROM + 3_600_000_000


@dataclass(frozen=True)
class Query:
    name: str
    text: str
    predicate: pl.Expr | None  # what the pruner sees (None: no filter, every block)
    polars: Callable[[pl.LazyFrame], pl.LazyFrame]
    sql: str  # over the view `t`
    sort_by: list[str]  # to compare systems where row order is not defined
    target: float | None  # bt_frames / scan_parquet


def _q1(lf: pl.LazyFrame) -> pl.LazyFrame:
    return lf.filter(pl.col("ts") >= _ts(Q1_FROM), pl.col("ts") < _ts(Q1_TO)).select("ts", "price")


Q2_PRED = (
    (pl.col("symbol") == "BTC")
    & (pl.col("qty") > 100)
    & (pl.col("price") > 45_000.0)
    & (pl.col("ts") >= _ts(Q2_FROM))
    & (pl.col("ts") < _ts(Q2_TO))
)
SQL_TS = "TIMESTAMPTZ '{}'"


def _sql_ts(us: int) -> str:
    return SQL_TS.format(_ts(us).isoformat())


QUERIES = [
    Query(
        "Q1",
        "100-second ts window -> (ts, price)",
        (pl.col("ts") >= _ts(Q1_FROM)) & (pl.col("ts") < _ts(Q1_TO)),
        _q1,
        f"SELECT ts, price FROM t WHERE ts >= {_sql_ts(Q1_FROM)} AND ts < {_sql_ts(Q1_TO)}",
        ["ts", "price"],
        0.10,
    ),
    Query(
        "Q2",
        'symbol == "BTC" & qty > 100 & price > 45000 within one hour',
        Q2_PRED,
        lambda lf: lf.filter(Q2_PRED),
        "SELECT * FROM t WHERE symbol = 'BTC' AND qty > 100 AND price > 45000.0 "
        f"AND ts >= {_sql_ts(Q2_FROM)} AND ts < {_sql_ts(Q2_TO)}",
        ["ts", "order_id"],
        0.70,
    ),
    Query(
        "Q3",
        "group_by(symbol): mean(price), sum(qty)",
        None,
        lambda lf: lf.group_by("symbol").agg(pl.col("price").mean(), pl.col("qty").sum()),
        "SELECT symbol, avg(price) AS price, sum(qty)::BIGINT AS qty FROM t GROUP BY symbol",
        ["symbol"],
        1.00,
    ),
    Query(
        "Q4",
        'count(symbol == "ETH")',
        pl.col("symbol") == "ETH",
        lambda lf: lf.filter(pl.col("symbol") == "ETH").select(pl.len().cast(pl.Int64).alias("n")),
        "SELECT count(*)::BIGINT AS n FROM t WHERE symbol = 'ETH'",
        [],
        0.20,
    ),
    Query(
        "Q5",
        f'count(symbol == "{RARE}") (rare)',
        pl.col("symbol") == RARE,
        lambda lf: lf.filter(pl.col("symbol") == RARE).select(pl.len().cast(pl.Int64).alias("n")),
        f"SELECT count(*)::BIGINT AS n FROM t WHERE symbol = '{RARE}'",
        [],
        0.05,
    ),
    Query(
        "Q6",
        "select(pl.len()): rows in the whole table",
        None,
        lambda lf: lf.select(pl.len().cast(pl.Int64).alias("n")),
        "SELECT count(*)::BIGINT AS n FROM t",
        [],
        0.05,
    ),
]


# -- building the stores -------------------------------------------------------------------------------------------


def store_path(rows: int, block_rows: int, row_group_rows: int | None = None) -> Path:
    """Named after what it holds and the block statistics' version (a new version builds a new store)."""
    name = f"orders-{rows}-{block_rows}" + (f"-rg{row_group_rows}" if row_group_rows else "")
    return DATA / f"{name}-s{blk.STATS_VERSION}"


def build(path: Path, rows: int, block_rows: int, *, rebuild: bool, row_group_rows: int | None = None) -> None:
    """Generate ``rows`` synthetic orders into ``path`` (kept between runs unless ``rebuild``)."""
    if not rebuild and path.is_dir():
        try:
            with bt.BacktraceStore(path, read_only=True) as s:
                t = s.table("orders")
                if t.rows == rows and t.blocks.height == -(-rows // block_rows):
                    if not t.recovery.stats_linked:
                        # written by an older bt_frames: its statistics cache is not linked to the manifest
                        # (cache version 5). A writer's open rewrites it, as an application's next writer would.
                        with bt.BacktraceStore(path, progress=False) as w:
                            w.table("orders")
                        print(f"  {path.name}: statistics cache rewritten by a writer's open")
                    return
        except bt.BtError:
            pass
        print(f"  {path.name}: incomplete or different, rebuilding")
    shutil.rmtree(path, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    step = SPAN_US // rows
    chunk = max(block_rows, 1_000_000 // block_rows * block_rows)  # whole blocks per append: straight to Parquet
    t0 = time.perf_counter()
    gen = 0.0
    with bt.BacktraceStore(path, durability="none", progress=False) as store:
        table = store.create_table(
            "orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=block_rows, row_group_rows=row_group_rows
        )
        for start in range(0, rows, chunk):
            g = time.perf_counter()
            df = make_orders(min(chunk, rows - start), start=start, seed=7, step_us=step)
            rng = np.random.default_rng(start)
            burst = (
                (pl.col("ts") >= _ts(RARE_FROM_US))
                & (pl.col("ts") < _ts(RARE_TO_US))
                & pl.Series(rng.random(len(df)) < 0.02)
            )
            df = df.with_columns(pl.when(burst).then(pl.lit(RARE)).otherwise(pl.col("symbol")).alias("symbol"))
            gen += time.perf_counter() - g
            table.append(df)
        table.flush()
        nblocks = table.blocks.height
    wall = time.perf_counter() - t0
    print(
        f"  built {path.name}: {rows:,} rows in {nblocks:,} blocks in {wall:.1f} s "
        f"(generation {gen:.1f} s, {rows / wall:,.0f} rows/s)",
        flush=True,
    )


# -- part 1: warm queries, three systems -----------------------------------------------------------------------------


def run_queries(path: Path, repeat: int, profile: str | None) -> list[list[Any]]:
    store = bt.BacktraceStore(path, read_only=True)
    table = store.table("orders")
    blocks_glob = str(path / "orders" / "blocks" / "*.parquet")
    ddb = duckdb.connect()
    ddb.execute("SET TimeZone = 'UTC'")
    ddb.execute(f"CREATE VIEW t AS SELECT * FROM read_parquet('{blocks_glob}')")
    nfiles = len(list((path / "orders" / "blocks").glob("*.parquet")))
    print(f"\n{path.name}: {table.rows:,} rows, {table.blocks.height} blocks ({nfiles} files in the glob)")

    systems: dict[str, Callable[[Query], pl.DataFrame]] = {
        "bt_frames": lambda q: q.polars(table.scan()).collect(),
        "pl.scan_parquet": lambda q: q.polars(pl.scan_parquet(blocks_glob)).collect(),
        "duckdb": lambda q: ddb.sql(q.sql).pl(),
    }
    out: list[list[Any]] = []
    breakdown: list[list[Any]] = []
    for q in QUERIES:
        results = {name: fn(q) for name, fn in systems.items()}  # warm-up, and the results to compare
        check = _check(q, results)
        times: dict[str, list[float]] = {name: [] for name in systems}
        for _ in range(repeat):  # interleaved, so a burst of load hits every system alike
            for name, fn in systems.items():
                t, _res = time_call(partial(fn, q), repeat=1, warmup=0)
                times[name] += t
        med = {name: median(ts) * 1e3 for name, ts in times.items()}
        report = table.prune(q.predicate)
        ratio = med["bt_frames"] / med["pl.scan_parquet"]
        out.append(
            [
                q.name,
                f"{report.blocks_scanned}/{report.blocks_total}",
                results["bt_frames"].height,
                med["bt_frames"],
                med["pl.scan_parquet"],
                med["duckdb"],
                ratio,
                f"<= {q.target}" if q.target else "-",
                verdict(ratio, q.target) if q.target else "-",
                check,
            ]
        )
        breakdown.append(_breakdown(table, q, report, med["bt_frames"]))
        if profile == q.name:
            _profile(partial(systems["bt_frames"], q), q.name)
    print()
    for q in QUERIES:
        print(f"  {q.name}: {q.text}")
    print()
    print(
        fmt_table(
            ["query", "blocks read", "rows out", "bt ms", "scan_parquet ms", "duckdb ms", "bt/scan_parquet", *TGT],
            out,
            align="lrrrrrrrll",
        )
    )
    print("\nwhere bt_frames' time goes (ms; each part timed alone, medians):")
    print(
        fmt_table(
            ["query", "bt total", "plan (prune)", "hash survivors", "pl.scan_parquet of survivors", "rest"],
            breakdown,
        )
    )
    ddb.close()
    store.close()
    return out


TGT = ["target", "", "results"]


def _check(q: Query, results: dict[str, pl.DataFrame]) -> str:
    """All three systems return the same rows (sorted where the order is not defined)."""
    ref = results["pl.scan_parquet"]
    bt_res, duck = results["bt_frames"], results["duckdb"]
    duck = duck.with_columns(pl.col(c).cast(ref.schema[c]) for c in duck.columns).select(ref.columns)
    by = q.sort_by or ref.columns
    failures = []
    # Row order: the glob lists "…1of10" < "…10of10" < "…2of10", which is not append order, so compare
    # sorted; bt_frames promises append order, and ts never decreases in append order here.
    if "ts" in bt_res.columns and not bt_res["ts"].is_sorted():
        failures.append("bt_frames order")
        print(f"  !! {q.name}: bt_frames rows are not in append (ts) order")
    for name, got in [("bt_frames", bt_res), ("duckdb", duck)]:
        try:
            assert_frame_equal(got.sort(by), ref.sort(by), check_exact=name == "bt_frames" and q.name != "Q3")
        except AssertionError as e:
            failures.append(name)
            print(f"  !! {q.name}: {name} differs from pl.scan_parquet: {str(e)[:300]}")
    return "equal x3" if not failures else "DIFFER: " + ", ".join(failures)


def _breakdown(table: bt.Table, q: Query, report: bt.PruneReport, total_ms: float) -> list[Any]:
    paths = [str(b.path) for b in report.survivors]
    plan, _ = time_call(lambda: table.prune(q.predicate), repeat=5)
    hashing, _ = time_call(lambda: [blk.hash_file(b.path) for b in report.survivors], repeat=3)
    read, _ = time_call(lambda: q.polars(pl.scan_parquet(paths, glob=False)).collect() if paths else None, repeat=5)
    p, h, r = median(plan) * 1e3, median(hashing) * 1e3, median(read) * 1e3
    return [q.name, total_ms, p, h, r, total_ms - p - r]


def _profile(fn: Callable[[], Any], name: str) -> None:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(5):
        fn()
    prof.disable()
    print(f"\ncProfile of 5 bt_frames runs of {name} (top 25 by cumulative time):")
    pstats.Stats(prof).sort_stats("cumulative").print_stats(25)


# -- part 3: floors -- what reading these files costs whatever bt_frames does ---------------------------------------


def _identity_source(files: list[str], schema: pl.Schema) -> pl.LazyFrame:
    """The thinnest Polars IO source: every file, read by Polars as bt_frames reads blocks, nothing else."""
    from polars.io.plugins import register_io_source

    def source(with_columns: list[str] | None, predicate: pl.Expr | None, n_rows: int | None, batch_size: int | None):
        lf = pl.scan_parquet(files, glob=False, schema=schema, n_rows=n_rows)
        if predicate is not None:
            lf = lf.filter(predicate)
        if with_columns is not None:
            lf = lf.select(with_columns)
        yield from lf.collect_batches(chunk_size=batch_size, maintain_order=True)

    return register_io_source(source, schema=schema)


def _native_with_statistics(table: bt.Table) -> pl.LazyFrame:
    """A native Polars scan of every block given the store's statistics, as ``pl.scan_delta`` gives a
    Delta log's (Polars' private ``_table_statistics``): files are skipped without reading a footer."""
    snap = table._snapshot(pin=False)
    stats = snap.stats
    assert stats is not None
    cols: dict[str, pl.Series] = {"len": stats["rows"].cast(pl.UInt32)}
    for c in table.schema.names():
        cols[f"{c}_nc"] = stats[f"null_count.{c}"].cast(pl.UInt32)
        cols[f"{c}_min"], cols[f"{c}_max"] = stats[f"min.{c}"], stats[f"max.{c}"]
    return pl.scan_parquet(
        [str(b.path) for b in snap.blocks], glob=False, schema=table.schema, _table_statistics=pl.DataFrame(cols)
    )


def run_floors(path: Path, repeat: int) -> list[list[Any]]:
    """Each query as a ratio to ``pl.scan_parquet`` over every file, for bt_frames and for three floors:
    Polars reading only the files bt_frames reads (no planning, no IO source: the cost of the bytes
    that must be read), the thinnest IO source over every file (the cost of Polars' IO-plugin
    boundary, which bt_frames' lazy scans go through), and a native scan given the store's statistics
    (no IO source, no footer reads for skipped files, but no answers from value counts)."""
    store = bt.BacktraceStore(path, read_only=True)
    table = store.table("orders")
    files = sorted(str(p) for p in (path / "orders" / "blocks").glob("*.parquet"))
    out = []
    for q in QUERIES:
        survivors = [str(b.path) for b in table.prune(q.predicate).survivors]
        systems: dict[str, Callable[[], Any]] = {
            "scan_parquet": lambda q=q: q.polars(pl.scan_parquet(files, glob=False)).collect(),
            "bt_frames": lambda q=q: q.polars(table.scan()).collect(),
            "survivors only": lambda q=q, sv=survivors: q.polars(pl.scan_parquet(sv, glob=False)).collect(),
            "identity IO source": lambda q=q: q.polars(_identity_source(files, table.schema)).collect(),
            "native + statistics": lambda q=q: q.polars(_native_with_statistics(table)).collect(),
        }
        times: dict[str, list[float]] = {name: [] for name in systems}
        for fn in systems.values():
            fn()
        for _ in range(repeat):
            for name, fn in systems.items():
                t, _res = time_call(fn, repeat=1, warmup=0)
                times[name] += t
        base = median(times["scan_parquet"])
        out.append([q.name, base * 1e3, *(median(times[n]) / base for n in list(systems)[1:]), q.target])
    print("\nfloors: ratios to pl.scan_parquet over every file (medians, interleaved)")
    print(
        fmt_table(
            ["query", "scan_parquet ms", "bt_frames", "survivors only", "identity IO source", "native + stats", "must"],
            out,
        )
    )
    store.close()
    return out


# -- part 2: a first query in a fresh process ------------------------------------------------------------------------

_CHILD_BT = """
import sys, time, json
t0 = time.perf_counter()
import bt_frames as bt
import polars as pl
t1 = time.perf_counter()
from datetime import datetime, timezone
a, b = (datetime.fromtimestamp(int(x) / 1e6, tz=timezone.utc) for x in sys.argv[2:4])
store = bt.BacktraceStore(sys.argv[1], read_only=True)
df = store.table("orders").scan().filter(pl.col("ts") >= a, pl.col("ts") < b).select("ts", "price").collect()
t2 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "query": t2 - t1, "rows": df.height}))
"""

_CHILD_PL = """
import sys, time, json
t0 = time.perf_counter()
import polars as pl
t1 = time.perf_counter()
from datetime import datetime, timezone
a, b = (datetime.fromtimestamp(int(x) / 1e6, tz=timezone.utc) for x in sys.argv[2:4])
lf = pl.scan_parquet(sys.argv[1] + "/orders/blocks/*.parquet")
df = lf.filter(pl.col("ts") >= a, pl.col("ts") < b).select("ts", "price").collect()
t2 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "query": t2 - t1, "rows": df.height}))
"""


def _child(code: str, path: Path) -> dict[str, float]:
    # As a user's process: bytecode caches on (an installed Polars has its .pyc files; an editable
    # bt_frames gets them on first import -- some CI shells set PYTHONDONTWRITEBYTECODE=1).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    t = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-c", code, str(path), str(Q1_FROM), str(Q1_TO)],
        capture_output=True,
        text=True,
        check=False,
        env={**env, "BT_FRAMES_PROGRESS": "0"},
    )
    wall = time.perf_counter() - t
    if r.returncode:
        raise SystemExit(f"child process failed:\n{r.stderr}")
    out: dict[str, float] = json.loads(r.stdout)
    out["wall"] = wall
    return out


def run_cold_open(path: Path, repeat: int) -> list[list[Any]]:
    with bt.BacktraceStore(path, read_only=True) as s:
        t = s.table("orders")
        report = t.prune((pl.col("ts") >= _ts(Q1_FROM)) & (pl.col("ts") < _ts(Q1_TO)))
    print(
        f"\n{path.name}: Q1 in a fresh process, median of {repeat} "
        f"(bt_frames reads {report.blocks_scanned} of {report.blocks_total} blocks)"
    )
    runs: dict[str, list[dict[str, float]]] = {"bt": [], "pl": []}
    _child(_CHILD_BT, path), _child(_CHILD_PL, path)  # warm the page cache (and .pyc files)
    for _ in range(repeat):
        runs["bt"].append(_child(_CHILD_BT, path))
        runs["pl"].append(_child(_CHILD_PL, path))
    rows = {k: {int(r["rows"]) for r in v} for k, v in runs.items()}
    agree = "equal" if rows["bt"] == rows["pl"] and len(rows["bt"]) == 1 else f"DIFFER {rows}"

    def m(k: str, field: str) -> float:
        return median([r[field] for r in runs[k]]) * 1e3

    out = []
    for label, field, target in [
        ("import bt_frames vs import polars", "import", None),
        ("open + Q1 (in process, after import)", "query", 0.10),
        ("whole process (python -c ..., wall)", "wall", 1.0),
    ]:
        ratio = m("bt", field) / m("pl", field)
        out.append(
            [
                label,
                m("bt", field),
                m("pl", field),
                ratio,
                f"<= {target}" if target else "-",
                verdict(ratio, target) if target else "-",
            ]
        )
    print()
    print(fmt_table(["measure", "bt_frames ms", "polars ms", "ratio", "target", ""], out, align="lrrrrl"))
    print(f"  rows returned: {agree} ({next(iter(rows['bt']))} rows)")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2M rows in 20 blocks instead of 20M rows in 200")
    ap.add_argument("--rebuild", action="store_true", help="regenerate the stores in bench_data/")
    ap.add_argument("--repeat", type=int, default=None, help="timed runs per measurement (default 5, full 7)")
    ap.add_argument("--profile", choices=[q.name for q in QUERIES], help="cProfile bt_frames on this query")
    ap.add_argument("--row-group-rows", type=int, default=None, help="Parquet row group size (default: bt_frames')")
    ap.add_argument("--skip-cold", action="store_true", help="skip part 2 (the 2,000-block fresh-process runs)")
    ap.add_argument("--floors", action="store_true", help="also part 3: what any design over these files costs")
    args = ap.parse_args(argv)
    rows = 2_000_000 if args.quick else 20_000_000
    repeat = args.repeat or (5 if args.quick else 7)

    print(f"bt_frames query benchmark ({'quick' if args.quick else 'full'}), medians of {repeat} warm runs")
    print(f"  {machine_note()}")
    main_store = store_path(rows, 100_000, args.row_group_rows)
    many_store = store_path(2_000_000, 1_000)
    build(main_store, rows, 100_000, rebuild=args.rebuild, row_group_rows=args.row_group_rows)
    if not args.skip_cold:
        build(many_store, 2_000_000, 1_000, rebuild=args.rebuild)

    run_queries(main_store, repeat, args.profile)
    if args.floors:
        run_floors(main_store, repeat)
    if not args.skip_cold:
        run_cold_open(many_store, max(repeat, 5))
    print(f"\n  load average at the end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
