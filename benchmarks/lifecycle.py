"""Lifecycle benchmark (issue #10): delete, update, upsert and time travel, and what each rewrites.

    .venv/bin/python benchmarks/lifecycle.py --quick    # 2M rows in blocks of 100k (~1 min with the peers)
    .venv/bin/python benchmarks/lifecycle.py            # 20M rows in blocks of 1M

A table of time-ordered orders (``_common.make_orders``, spanning 10 days; ``order_id`` is the row's
index, a unique key) is built once in a temp dir. Each measurement runs on a fresh copy of it (block
files hard-linked: they are immutable; everything else copied), opened before the clock starts:

- ``delete`` of the oldest 10% of rows (``ts < cutoff``);
- ``update`` of one hour in the middle of a block, prices changed;
- ``upsert`` of 10,000 keys on ``order_id``: 9,000 existing orders of the last day, 1,000 new ones;
- ``scan(as_of=<the version before the update>).collect()`` vs ``scan().collect()`` after it.

Each prints time (median of ``--repeat``, default 3), blocks read, blocks replaced and bytes written
(``table.last_change``). The delete is compared with ``deltalake`` (``DeltaTable.delete`` on the same
rows written with ``write_deltalake``, one file per block) and ArcticDB (``delete_data_in_range`` on an
LMDB library, one segment per block) when they are importable (``pip install -e '.[bench]'``; ArcticDB
needs pandas < 3, so it goes in its own environment): ratio = bt_frames time / peer time. Never fails
on a timing; always exits 0.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from _common import T0_US, fmt_table, machine_note, make_orders, median

import bt_frames as bt

SPAN_US = 10 * 86_400 * 1_000_000  # the table spans 10 days, whatever its row count
HOUR_US = 3_600 * 1_000_000
UPSERT_KEYS = 10_000
UPSERT_NEW = 1_000


def _ts(us: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(us / 1e6, tz=dt.UTC)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def fresh_copy(src: Path, dst: Path, *, link: Callable[[Path], bool]) -> None:
    """``src`` copied to ``dst``; the files ``link`` accepts hard-linked (immutable: never written again)."""
    shutil.rmtree(dst, ignore_errors=True)

    def copy(s: str, d: str) -> None:
        if link(Path(s)):
            os.link(s, d)
        else:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=copy)


def _parquet(p: Path) -> bool:
    return p.suffix == ".parquet"


class Data:
    """The rows, generated once per chunk (one chunk = one block), and the operations' inputs."""

    def __init__(self, rows: int, block_rows: int) -> None:
        self.rows, self.block_rows = rows, block_rows
        self.step = SPAN_US // rows
        self.cutoff = self.ts_of(rows // 10)  # rows before it: the oldest 10%
        mid_block = (rows // block_rows // 2) * block_rows + block_rows // 4  # a quarter into a middle block
        self.hour_from = self.ts_of(mid_block)
        self.hour_to = self.hour_from + dt.timedelta(hours=1)

    def ts_of(self, i: int) -> dt.datetime:
        """A time between row ``i - 1`` and row ``i`` (the jitter is below half a step)."""
        return _ts(T0_US + i * self.step)

    def chunks(self) -> list[pl.DataFrame]:
        return [
            make_orders(min(self.block_rows, self.rows - s), start=s, seed=3, step_us=self.step)
            for s in range(0, self.rows, self.block_rows)
        ]

    def upsert_frame(self) -> pl.DataFrame:
        """9,000 orders of the last day (their qty set to 0) and 1,000 new ones after the last row."""
        last_day = 86_400 * 1_000_000 // self.step
        rng = np.random.default_rng(10)
        ids = np.sort(rng.choice(np.arange(self.rows - last_day, self.rows), UPSERT_KEYS - UPSERT_NEW, replace=False))
        old = make_orders(int(last_day), start=self.rows - int(last_day), seed=3, step_us=self.step)
        old = old.filter(pl.col("order_id").is_in(pl.Series(ids).implode())).with_columns(qty=pl.lit(0, pl.Int64))
        new = make_orders(UPSERT_NEW, start=self.rows, seed=4, step_us=self.step)
        return pl.concat([old, new])


# -- bt_frames ---------------------------------------------------------------------------------------------------


def build_bt(path: Path, data: Data) -> None:
    t0 = time.perf_counter()
    with bt.BacktraceStore(path, durability="none", progress=False) as store:
        t = store.create_table("orders", make_orders(1).schema, time_column="ts", max_block_rows=data.block_rows)
        for df in data.chunks():
            t.append(df)  # a whole block's rows: straight to a block
        t.flush()
        nblocks = t.blocks.height
    wall = time.perf_counter() - t0
    print(f"  bt_frames: {data.rows:,} rows in {nblocks} blocks, {dir_bytes(path):,} bytes, {wall:.1f} s")


def run_bt(base: Path, work: Path, data: Data, repeat: int) -> dict[str, dict[str, Any]]:
    upsert_df = data.upsert_frame()
    results: dict[str, dict[str, Any]] = {}

    def measure(name: str, op: Callable[[bt.Table], Any], after: Callable[[bt.Table], None] | None = None) -> None:
        times, change = [], None
        for _ in range(repeat):
            fresh_copy(base, work, link=_parquet)
            with bt.BacktraceStore(work, progress=False) as store:
                t = store.table("orders")
                t0 = time.perf_counter()
                op(t)
                times.append(time.perf_counter() - t0)
                change = t.last_change
                if after is not None:
                    after(t)
        assert change is not None
        results[name] = {
            "s": median(times),
            "blocks_read": change.blocks_read,
            "blocks_replaced": change.blocks_replaced,
            "bytes": change.bytes_written,
            "rows": change.rows_removed,
        }

    measure("delete", lambda t: t.delete(pl.col("ts") < data.cutoff))
    hour = (pl.col("ts") >= data.hour_from) & (pl.col("ts") < data.hour_to)
    with bt.BacktraceStore(base, read_only=True) as store:
        fixed = store.table("orders").scan().filter(hour).collect().with_columns(pl.col("price") * 1.01)

    travel: dict[str, list[float]] = {"as_of": [], "now": []}

    def time_travel(t: bt.Table) -> None:
        if travel["now"]:  # once, on the first copy
            return
        version = int(t.versions.filter(pl.col("operation") == "update")["version"][-1]) - 1
        for _ in range(repeat):  # interleaved
            for key, lf in (("as_of", lambda: t.scan(as_of=version)), ("now", t.scan)):
                t0 = time.perf_counter()
                got = lf().collect()
                travel[key].append(time.perf_counter() - t0)
                assert got.height == data.rows, (key, got.height)

    measure("update", lambda t: t.update(fixed), after=time_travel)
    results["update"]["rows"] = fixed.height
    measure("upsert", lambda t: t.upsert(upsert_df, on="order_id"))
    results["as_of"] = {"s": median(travel["as_of"]), "now": median(travel["now"])}
    return results


# -- peers: the same delete --------------------------------------------------------------------------------------


def build_delta(path: Path, data: Data) -> bool:
    try:
        import deltalake
    except ImportError:
        print("  deltalake: not installed (pip install -e '.[bench]'); skipped")
        return False
    t0 = time.perf_counter()
    for df in data.chunks():  # one file per block, as bt_frames has
        deltalake.write_deltalake(path, df.to_arrow(), mode="append", target_file_size=1 << 40)
    files = len(list(path.glob("*.parquet")))
    print(
        f"  deltalake {deltalake.__version__}: {files} files, {dir_bytes(path):,} bytes, "
        f"{time.perf_counter() - t0:.1f} s"
    )
    return True


def run_delta(base: Path, work: Path, data: Data, repeat: int) -> dict[str, Any]:
    import deltalake

    predicate = f"ts < '{data.cutoff.isoformat()}'"
    times, metrics, written = [], {}, 0
    for _ in range(repeat):
        fresh_copy(base, work, link=_parquet)
        table = deltalake.DeltaTable(str(work))
        before = {p.name for p in work.glob("*.parquet")}
        t0 = time.perf_counter()
        metrics = table.delete(predicate)
        times.append(time.perf_counter() - t0)
        written = sum(p.stat().st_size for p in work.glob("*.parquet") if p.name not in before)
    return {  # delta-rs reports files removed and added, not files read
        "s": median(times),
        "blocks_read": "-",
        "blocks_replaced": f"{metrics.get('num_removed_files', '?')} (+{metrics.get('num_added_files', '?')} added)",
        "bytes": written,
        "rows": metrics.get("num_deleted_rows", "?"),
    }


def build_arctic(path: Path, data: Data) -> bool:
    try:
        import arcticdb
    except ImportError:
        print("  arcticdb: not installed (needs pandas < 3: pip install 'arcticdb>=5,<7' in its own venv); skipped")
        return False
    t0 = time.perf_counter()
    lib = arcticdb.Arctic(f"lmdb://{path}").create_library(
        "bench", arcticdb.LibraryOptions(rows_per_segment=data.block_rows)
    )
    for i, df in enumerate(data.chunks()):
        pdf = df.to_pandas().set_index("ts")
        pdf.index = pdf.index.tz_convert(None)  # ArcticDB indexes naive UTC times
        (lib.write if i == 0 else lib.append)("orders", pdf)
    print(f"  arcticdb {arcticdb.__version__}: LMDB {dir_bytes(path):,} bytes, {time.perf_counter() - t0:.1f} s")
    return True


def run_arctic(base: Path, work: Path, data: Data, repeat: int) -> dict[str, Any]:
    import arcticdb

    cutoff = data.cutoff.replace(tzinfo=None)
    times, grown = [], 0
    for _ in range(repeat):
        fresh_copy(base, work, link=lambda p: False)  # LMDB writes its file in place
        lib = arcticdb.Arctic(f"lmdb://{work}")["bench"]
        size = dir_bytes(work)
        t0 = time.perf_counter()
        lib.delete_data_in_range("orders", (None, cutoff - dt.timedelta(microseconds=1)))
        times.append(time.perf_counter() - t0)
        grown = dir_bytes(work) - size
        rows = lib.get_description("orders").row_count
        del lib
    return {"s": median(times), "blocks_read": "-", "blocks_replaced": "-", "bytes": grown, "rows": data.rows - rows}


# -- main --------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2M rows in blocks of 100k instead of 20M in blocks of 1M")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement, each on a fresh copy (default 3)")
    ap.add_argument("--no-peers", action="store_true", help="bt_frames only")
    args = ap.parse_args(argv)
    rows, block_rows = (2_000_000, 100_000) if args.quick else (20_000_000, 1_000_000)
    data = Data(rows, block_rows)
    print(f"bt_frames lifecycle benchmark ({'quick' if args.quick else 'full'}), medians of {args.repeat}")
    print(f"  {machine_note()}")
    with tempfile.TemporaryDirectory(prefix="bt_lifecycle_", dir=os.environ.get("BT_BENCH_DIR")) as tmp:
        root = Path(tmp)
        build_bt(root / "bt", data)
        peers: dict[str, tuple[Callable[..., bool], Callable[..., dict[str, Any]]]] = {}
        if not args.no_peers:
            peers = {"deltalake": (build_delta, run_delta), "arcticdb (LMDB)": (build_arctic, run_arctic)}
        built = {name: build(root / name.split()[0], data) for name, (build, _run) in peers.items()}

        res = run_bt(root / "bt", root / "bt-work", data, args.repeat)
        peer_res = {
            name: run(root / name.split()[0], root / f"{name.split()[0]}-work", data, args.repeat)
            for name, (_build, run) in peers.items()
            if built[name]
        }

    tenth, hour = rows // 10, res["update"]["rows"]
    print(f"\n  delete: ts < {data.cutoff:%Y-%m-%d %H:%M:%S} (the oldest {tenth:,} rows)")
    print(f"  update: {data.hour_from:%Y-%m-%d %H:%M} + 1 h ({hour:,} rows, prices changed)")
    print(f"  upsert: {UPSERT_KEYS:,} keys on order_id ({UPSERT_KEYS - UPSERT_NEW:,} orders of the last day, "
          f"{UPSERT_NEW:,} new)")  # fmt: skip
    print()
    table = []
    for name in ("delete", "update", "upsert"):
        r = res[name]
        table.append(
            [f"bt_frames {name}", r["rows"], r["s"] * 1e3, r["blocks_read"], r["blocks_replaced"], r["bytes"], "-"]
        )
    for name, r in peer_res.items():
        table.append(
            [f"{name} delete", r["rows"], r["s"] * 1e3, r["blocks_read"], r["blocks_replaced"], r["bytes"],
             res["delete"]["s"] / r["s"]]
        )  # fmt: skip
    print(
        fmt_table(
            ["operation", "rows", "ms", "blocks read", "blocks replaced", "bytes written", "bt_frames / peer"], table
        )
    )
    a = res["as_of"]
    print(
        f"\n  scan(as_of=<before the update>).collect(): {a['s'] * 1e3:,.0f} ms; scan().collect(): "
        f"{a['now'] * 1e3:,.0f} ms; as_of / now: {a['s'] / a['now']:.2f}x ({rows:,} rows each)"
    )
    for name in ("deltalake", "arcticdb (LMDB)"):
        if not args.no_peers and name not in peer_res:
            print(f"  ({name}: not measured, not importable here)")
    print(f"\n  load average at the end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
