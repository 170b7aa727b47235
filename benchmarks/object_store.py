"""Object-storage benchmark (issue #11 Part 2): bt_frames on S3 vs pl.scan_parquet and pl.scan_delta, on loopback.

    .venv/bin/python benchmarks/object_store.py --quick    # 200k rows in 20 blocks, 200 appends (what CI runs)
    .venv/bin/python benchmarks/object_store.py            # 4M rows in 100 blocks, 1,000 appends

The S3 API is moto in server mode (started here, in its own process group,
killed at the end) behind the counting proxy of tests/helpers/faultproxy.py
(both loaded by path: the benchmarks do not import the tests package), so
every row reports the requests it made by kind. Loopback has no network
latency: the request counts, not the milliseconds, are what carry over to a
real bucket.

The baselines need no bt_frames: the rows are written with deltalake as a
Delta table, one commit per block (then a checkpoint), and read with
``pl.scan_delta(uri)`` and ``pl.scan_parquet(uri + "/*.parquet")`` (the same
files). Rows:

- durable appends/s: 500-row appends to ``bt.open("s3://...", wal_dir=local)``
  (WAL on the local disk, fsync per append, blocks uploaded in the background)
  vs the same appends to a local store; the time until the last block is in
  the bucket is reported separately.
- open + Q1: a fresh ``bt.open(..., read_only=True)`` + ``table.scan()`` Q1,
  vs a fresh ``pl.scan_parquet`` / ``pl.scan_delta`` + Q1, each in a new
  process (no cache of this one helps) and repeated in this one; requests of
  one call. Targets: bt_frames makes <= 3 requests plus one per surviving
  block; bt_frames / scan_parquet <= 0.10x (in this process).
- Q1-Q4 (benchmarks/query.py's queries) on an open store vs the two baselines.

The bt_frames rows need ``bt.open`` to accept ``s3://`` URIs with
``storage_options=`` and ``wal_dir=``; until it does they are skipped with a
line saying so and the baselines still run. Medians of ``--repeat`` runs;
always exits 0 (never fails on a timing).
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import polars as pl
from _common import ORDERS_SCHEMA, ROOT, fmt_table, machine_note, make_orders, median, verdict
from polars.testing import assert_frame_equal
from query import QUERIES, SPAN_US, Query

import bt_frames as bt

Q1_TARGET = 0.10
APPEND_ROWS = 500


def _load(name: str) -> ModuleType:
    """tests/helpers/<name>.py by path (stdlib-only modules; the benchmarks do not import the tests package)."""
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", ROOT / "tests" / "helpers" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


s3server = _load("s3server")
faultproxy = _load("faultproxy")


def bt_accepts_s3() -> str | None:
    """None if ``bt.open`` takes s3:// with storage_options= and wal_dir=; else why the bt_frames rows are skipped."""
    params = inspect.signature(bt.BacktraceStore.__init__).parameters
    missing = [p for p in ("storage_options", "wal_dir") if p not in params]
    if missing:
        return f"bt.open does not take {', '.join(missing)}= yet (object storage not in this build)"
    return None


def counted(proxy: Any, fn: Callable[[], Any]) -> tuple[float, Counter[str], Any]:
    """Seconds, requests by kind and result of one call of ``fn`` through the proxy."""
    proxy.reset()
    t = time.perf_counter()
    res = fn()
    dt = time.perf_counter() - t
    return dt, proxy.snapshot(), res


def reqs(c: Counter[str]) -> str:
    return " ".join(f"{k}:{c[k]}" for k in ("LIST", "HEAD", "GET") if c[k]) or "0"


def read_reqs(c: Counter[str]) -> int:
    return c["GET"] + c["LIST"] + c["HEAD"]


def same(q: Query, got: pl.DataFrame, ref: pl.DataFrame) -> bool:
    by = q.sort_by or ref.columns
    try:
        assert_frame_equal(got.sort(by), ref.sort(by), check_exact=q.name != "Q3")
        return True
    except AssertionError as e:
        print(f"  !! {q.name} differs from pl.scan_parquet: {str(e)[:300]}")
        return False


def open_q1(system: str, where: str, so: dict[str, str]) -> pl.DataFrame:
    """Q1 from nothing: a fresh read-only ``bt.open`` or a fresh LazyFrame of a baseline."""
    q1 = QUERIES[0]
    if system == "bt_frames":
        with bt.open(where, storage_options=so, read_only=True, progress=False) as store:
            return q1.polars(store.table("orders").scan()).collect()
    if system == "pl.scan_parquet":
        return q1.polars(pl.scan_parquet(where, storage_options=so)).collect()
    return q1.polars(pl.scan_delta(where, storage_options=so)).collect()


def open_q1_child(system: str, where: str, so: dict[str, str]) -> float:
    """``open_q1`` in a new process (no cache of this one helps); seconds it took there, after the imports."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", system, where, json.dumps(so)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(out.strip().splitlines()[-1])


def _child(system: str, where: str, so_json: str) -> int:
    t = time.perf_counter()
    open_q1(system, where, json.loads(so_json))
    print(time.perf_counter() - t)
    return 0


# -- data ------------------------------------------------------------------------------------------------------------


def frames(rows: int, block_rows: int) -> list[pl.DataFrame]:
    step = SPAN_US // rows
    return [make_orders(min(block_rows, rows - s), start=s, seed=7, step_us=step) for s in range(0, rows, block_rows)]


def write_delta(uri: str, so: dict[str, str], blocks: list[pl.DataFrame]) -> float:
    import deltalake

    t = time.perf_counter()
    for df in blocks:
        deltalake.write_deltalake(uri, df.to_arrow(), mode="append", storage_options=so)
    deltalake.DeltaTable(uri, storage_options=so).create_checkpoint()
    return time.perf_counter() - t


def write_bt(uri: str, so: dict[str, str], wal_dir: Path, blocks: list[pl.DataFrame], block_rows: int) -> float:
    t = time.perf_counter()
    with bt.open(uri, storage_options=so, wal_dir=wal_dir, durability="none", progress=False) as store:
        table = store.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=block_rows)
        for df in blocks:
            table.append(df)
        table.flush()
    return time.perf_counter() - t


# -- durable appends -------------------------------------------------------------------------------------------------


def appends(open_store: Callable[[], Any], batches: list[pl.DataFrame], block_rows: int) -> tuple[float, float]:
    """(appends/s until the last append was acknowledged, seconds until the last block was written)."""
    with open_store() as store:
        table = store.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=block_rows)
        t = time.perf_counter()
        for df in batches:
            table.append(df)
        acked = time.perf_counter() - t
        table.flush()
        done = time.perf_counter() - t
    return len(batches) / acked, done


def run_appends(server: Any, proxy: Any, tmp: Path, n: int, block_rows: int, repeat: int) -> None:
    batches = [make_orders(APPEND_ROWS, start=i * APPEND_ROWS, seed=3) for i in range(n)]
    res: dict[str, list[tuple[float, float]]] = {"local store": [], "s3 store": []}
    requests = Counter[str]()
    for r in range(repeat):
        local = tmp / f"local-{r}"
        res["local store"].append(appends(lambda local=local: bt.open(local, progress=False), batches, block_rows))
        bucket = server.make_bucket()
        so = server.storage_options(proxy.endpoint)
        wal = tmp / f"wal-{r}"
        proxy.reset()
        res["s3 store"].append(
            appends(
                lambda so=so, wal=wal, bucket=bucket: bt.open(
                    f"s3://{bucket}/db", storage_options=so, wal_dir=wal, progress=False
                ),
                batches,
                block_rows,
            )
        )
        requests = proxy.snapshot()
        shutil.rmtree(local, ignore_errors=True)
    base = median([a for a, _ in res["local store"]])
    rows = [
        [name, median([a for a, _ in v]), median([a for a, _ in v]) * APPEND_ROWS, median([d for _, d in v]),
         median([a for a, _ in v]) / base]
        for name, v in res.items()
    ]  # fmt: skip
    print(f"\ndurable appends: {n} appends of {APPEND_ROWS} rows, fsync each, max_block_rows={block_rows:,}")
    print(fmt_table(["store", "appends/s", "rows/s", "s until blocks written", "vs local"], rows))
    print(f"  requests of one s3 run: {dict(sorted(requests.items()))}")


# -- open + Q1, Q1-Q4 ------------------------------------------------------------------------------------------------


def run_reads(server: Any, proxy: Any, tmp: Path, rows: int, block_rows: int, repeat: int, skip_bt: str | None) -> None:
    bucket = server.make_bucket()
    direct = server.storage_options()
    so = server.storage_options(proxy.endpoint)
    blocks = frames(rows, block_rows)
    delta_uri = f"s3://{bucket}/delta"
    wrote = write_delta(delta_uri, direct, blocks)
    print(f"\n{rows:,} rows in {len(blocks)} blocks; Delta baseline written in {wrote:.1f} s ({len(blocks)} commits)")
    glob = f"{delta_uri}/*.parquet"
    bt_uri = f"s3://{bucket}/bt"
    table = None
    if skip_bt is None:
        try:
            print(f"bt_frames table written in {write_bt(bt_uri, direct, tmp / 'wal-reads', blocks, block_rows):.1f} s")
        except bt.BtError as e:
            skip_bt = f"bt.open({bt_uri!r}) failed: {e}"
    q1 = QUERIES[0]
    where = {"bt_frames": bt_uri, "pl.scan_parquet": glob, "pl.scan_delta": delta_uri}
    systems_q1 = ["pl.scan_parquet", "pl.scan_delta"] if skip_bt else ["bt_frames", "pl.scan_parquet", "pl.scan_delta"]
    out: list[list[Any]] = []
    results: dict[str, tuple[float, Counter[str], pl.DataFrame]] = {}
    fresh: dict[str, tuple[float, Counter[str]]] = {}
    for name in systems_q1:
        children = [counted(proxy, partial(open_q1_child, name, where[name], so)) for _ in range(max(1, repeat // 2))]
        fresh[name] = (median([c[2] for c in children]), children[-1][1])
        fn = partial(open_q1, name, where[name], so)
        fn()  # warm-up: imports, connection pools
        runs = [counted(proxy, fn) for _ in range(repeat)]
        results[name] = (median([r[0] for r in runs]), runs[-1][1], runs[-1][2])
    ref_ms = results["pl.scan_parquet"][0]
    ref_fresh = fresh["pl.scan_parquet"][0]
    for name, (secs, c, res) in results.items():
        out.append(
            [
                name,
                fresh[name][0] * 1e3,
                fresh[name][0] / ref_fresh,
                reqs(fresh[name][1]),
                secs * 1e3,
                secs / ref_ms,
                reqs(c),
                res.height,
                "yes" if same(q1, res, results["pl.scan_parquet"][2]) else "NO",
            ]
        )
    print("\nopen + Q1: in a fresh process (ms inside it, after imports), and a fresh open / LazyFrame per call")
    print("in this process (medians); requests of one call:")
    heads = ["system", "fresh proc ms", "vs scan_parquet", "requests", "in-process ms", "vs scan_parquet", "requests"]
    print(fmt_table([*heads, "rows", "same rows"], out))
    if skip_bt is None:
        with bt.open(bt_uri, storage_options=so, read_only=True, progress=False) as store:
            surviving = store.table("orders").prune(q1.predicate).blocks_scanned
        n = max(read_reqs(results["bt_frames"][1]), read_reqs(fresh["bt_frames"][1]))
        ratio = results["bt_frames"][0] / ref_ms
        print(
            f"  targets: bt_frames reads {n} <= 3 + {surviving} surviving block(s): {verdict(n, 3 + surviving)}; "
            f"bt/scan_parquet {ratio:.3f} <= {Q1_TARGET}: {verdict(ratio, Q1_TARGET)}"
        )
    else:
        print(f"  bt_frames rows skipped: {skip_bt}")

    store = bt.open(bt_uri, storage_options=so, read_only=True, progress=False) if skip_bt is None else None
    systems: dict[str, Callable[[Query], pl.DataFrame]] = {
        "pl.scan_parquet": lambda q: q.polars(pl.scan_parquet(glob, storage_options=so)).collect(),
        "pl.scan_delta": lambda q: q.polars(pl.scan_delta(delta_uri, storage_options=so)).collect(),
    }
    if store is not None:
        table = store.table("orders")
        systems = {"bt_frames": lambda q: q.polars(table.scan()).collect(), **systems}
    out = []
    for q in QUERIES[:4]:
        row: list[Any] = [q.name]
        res: dict[str, pl.DataFrame] = {}
        ms: dict[str, float] = {}
        for name, fn in systems.items():
            first = counted(proxy, lambda fn=fn, q=q: fn(q))[1]  # untimed warm-up
            runs = [counted(proxy, lambda fn=fn, q=q: fn(q)) for _ in range(repeat)]
            ms[name] = median([r[0] for r in runs]) * 1e3
            res[name] = runs[-1][2]
            later = reqs(runs[-1][1])
            row += [ms[name], later if first == runs[-1][1] else f"{reqs(first)}, then {later}"]
        ok = all(same(q, r, res["pl.scan_parquet"]) for r in res.values())
        if store is not None:
            row.append(ms["bt_frames"] / ms["pl.scan_parquet"])
        out.append([*row, "equal" if ok else "DIFFER"])
    heads = ["query"] + [h for name in systems for h in (f"{name} ms", "requests")]
    heads += (["bt/scan_parquet"] if store is not None else []) + ["results"]
    print("\nQ1-Q4 (bt_frames on an open store; baselines per call; requests of one call, the first if it differs):")
    print(fmt_table(heads, out))
    if store is not None:
        store.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return _child(*argv[1:4])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="200k rows / 20 blocks, 200 appends (what CI runs)")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    rows, block_rows, n_appends = (200_000, 10_000, 200) if args.quick else (4_000_000, 40_000, 1_000)
    print(f"object storage: moto on loopback behind a counting proxy ({machine_note()})")
    skip_bt = bt_accepts_s3()
    if skip_bt:
        print(f"bt_frames rows skipped: {skip_bt}")
    tmp = Path(tempfile.mkdtemp(prefix="bt-objstore-"))
    server = s3server.start(log_path=tmp / "moto.log")
    try:
        with faultproxy.FaultProxy(server.endpoint) as proxy:
            if skip_bt is None:
                run_appends(server, proxy, tmp, n_appends, block_rows, max(1, args.repeat // 2))
            run_reads(server, proxy, tmp, rows, block_rows, args.repeat, skip_bt)
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{machine_note()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
