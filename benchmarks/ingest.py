"""Ingest benchmark (issue #2): durable small appends vs raw pyarrow IPC + write + fsync.

    .venv/bin/python benchmarks/ingest.py            # 2,000 appends of 500 rows, 3 repeats
    .venv/bin/python benchmarks/ingest.py --quick    # 400 appends (what CI runs; < 60 s)

For each durability mode ("fsync", "batch", "none") a fresh store in a temp dir
receives the same pre-built 500-row Polars frames, one ``Table.append`` each;
every append is timed with ``perf_counter_ns``. The baseline serialises the same
batches as Arrow IPC streams with pyarrow and appends each to one file with
``os.write`` + ``os.fsync`` (and a second variant with ``os.fdatasync``, which
is what bt_frames' "fsync" mode calls). Every measurement is repeated and the
median repeat is reported. Prints numbers only: it never fails on a target.

Also (issue 9 section 5): the latency of the appends that ran while the block
writer was writing a block (p50/p99, and p99 over the p50 of all appends:
target <= 2x), and pandas ``df.bt.append(store, name)`` vs Polars
``table.append`` of the same 500-row frames with a UTC DatetimeIndex
(``durability="none"``; target <= 2x per append).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import polars as pl
import pyarrow as pa
from _common import dir_files, fmt_table, ipc_append, machine_note, make_orders, median, percentile, verdict

import bt_frames as bt

TARGET_FSYNC_RATIO = 0.8
FLOOR_FSYNC_RATIO = 0.7
TARGET_P99_OVER_P50 = 2.0  # appends while a block is written vs the p50 of all appends
TARGET_PANDAS_RATIO = 2.0  # df.bt.append (pandas) per append / table.append (Polars), same rows
AIM_PANDAS_RATIO = 1.3


@dataclass
class Run:
    """One timed pass over all batches."""

    latencies_ns: list[int]
    wall_s: float
    rows: int
    files: int
    freeze_ns: int = 0  # time spent in the appends that handed a full hot buffer to the block writer
    freezes: int = 0
    settled_s: float = 0.0  # until the last block was written too (bt_frames: after a final flush())
    during_block_ns: list[int] | None = None  # appends that ran while the block writer was busy

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.wall_s

    @property
    def settled_rows_per_s(self) -> float:
        return self.rows / (self.settled_s or self.wall_s)


@dataclass
class Result:
    name: str
    runs: list[Run]

    def median_run(self) -> Run:
        return sorted(self.runs, key=lambda r: r.rows_per_s)[len(self.runs) // 2]

    @property
    def rows_per_s(self) -> float:
        return median([r.rows_per_s for r in self.runs])

    def latency_us(self, q: float) -> float:
        """The q-th percentile of per-append latency, median over repeats."""
        return median([percentile(r.latencies_ns, q) / 1_000 for r in self.runs])


def bench_bt(frames: Sequence[pl.DataFrame], durability: str, workdir: Path, *, max_block_rows: int) -> Run:
    path = Path(tempfile.mkdtemp(prefix=f"bt-{durability}-", dir=workdir))
    store = bt.BacktraceStore(path, durability=durability, progress=False)  # type: ignore[arg-type]
    try:
        schema = frames[0].schema
        table = store.create_table("orders", dict(schema), time_column="ts", max_block_rows=max_block_rows)
        lat: list[int] = []
        append = table.append
        clock = time.perf_counter_ns
        freeze_ns = freezes = hot = 0
        writer = table._writer  # peeked at (not waited for): is a block being written around this append?
        during: list[int] = []
        gc.collect()
        t0 = clock()
        for df in frames:
            n = df.height
            busy = writer.draining
            t = clock()
            append(df)
            dt = clock() - t
            lat.append(dt)
            if busy and writer.draining:
                during.append(dt)
            # Did this append hand a full buffer to the block writer? The table's rule, replayed here:
            # asking the table (table.hot_rows) would wait for the writer and serialise what runs beside us.
            froze = bool(hot) and hot + n > max_block_rows
            hot = (0 if froze else hot) + n
            if hot >= max_block_rows:
                froze, hot = True, 0
            if froze:
                freeze_ns += dt
                freezes += 1
        wall = (clock() - t0) / 1e9  # every append acknowledged (durable in the WAL)
        table.flush()  # and the block writer done
        settled = (clock() - t0) / 1e9
        rows = table.rows
    finally:
        store.close()
    return Run(lat, wall, rows, dir_files(path), freeze_ns, freezes, settled, during)


def bench_baseline(batches: Sequence[pa.Table], sync: Callable[[int], None], workdir: Path) -> Run:
    """pyarrow IPC stream serialise + one os.write + ``sync`` per batch, appended to one file."""
    fd, _ = tempfile.mkstemp(prefix="baseline-", suffix=".arrows", dir=workdir)
    lat: list[int] = []
    clock = time.perf_counter_ns
    try:
        gc.collect()
        t0 = clock()
        for tbl in batches:
            t = clock()
            ipc_append(fd, tbl)
            sync(fd)
            lat.append(clock() - t)
        wall = (clock() - t0) / 1e9
    finally:
        os.close(fd)
    rows = sum(b.num_rows for b in batches)
    return Run(lat, wall, rows, 1)


def bench_pandas_vs_polars(n: int, rows: int, repeat: int, workdir: Path) -> tuple[float, float, int]:
    """Median µs per append: pandas ``df.bt.append(store, name)`` and Polars ``table.append``, same rows.

    Frames of ``rows`` rows with a UTC DatetimeIndex (pandas) / a ``ts`` column
    (Polars); ``durability="none"`` so that the conversion, not the disk, is
    what is compared. Each repeat appends every frame to a fresh table, the two
    kinds interleaved per repeat; returns the medians over all appends of all
    repeats (and the number of appends timed per kind).
    """
    import pandas as pd

    pl_frames = [make_orders(rows, start=i * rows, seed=2) for i in range(n)]
    pd_frames = [f.to_pandas().set_index("ts") for f in pl_frames]
    assert isinstance(pd_frames[0].index, pd.DatetimeIndex)
    assert str(pd_frames[0].index.tz) == "UTC"
    clock = time.perf_counter_ns
    pd_ns: list[int] = []
    pl_ns: list[int] = []
    for rep in range(repeat + 1):  # the first repeat warms up (imports, first-use costs) and is not counted
        path = Path(tempfile.mkdtemp(prefix="bt-pandas-", dir=workdir))
        with bt.BacktraceStore(path, durability="none", progress=False) as store:
            pd_frames[0].bt.append(store, "pd")  # creates the table (and learns the frame's structure)
            store.append("pl", pl_frames[0])
            table = store["pl"]
            gc.collect()
            for df in pd_frames[1:]:
                t = clock()
                df.bt.append(store, "pd")
                if rep:
                    pd_ns.append(clock() - t)
            gc.collect()
            append = table.append
            for f in pl_frames[1:]:
                t = clock()
                append(f)
                if rep:
                    pl_ns.append(clock() - t)
            assert store["pd"].rows == store["pl"].rows == n * rows
    return median(pd_ns) / 1e3, median(pl_ns) / 1e3, len(pd_ns)


def _name(mode: str, max_block_rows: int) -> str:
    return f"bt_frames {mode!r}, blocks of {max_block_rows:,}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="400 appends instead of 2,000 (what CI runs)")
    ap.add_argument("--batches", type=int, default=None, help="number of appends (default 2000, --quick 400)")
    ap.add_argument("--rows", type=int, default=500, help="rows per append (default 500)")
    ap.add_argument("--repeat", type=int, default=3, help="repeats per measurement; the median is reported")
    ap.add_argument(
        "--max-block-rows",
        default="1000000,100000",
        help="table max_block_rows, comma-separated (default: 1,000,000 = bt_frames' default, and 100,000 "
        "so that 10 blocks are written during the run)",
    )
    ap.add_argument("--dir", type=Path, default=None, help="where to make temp stores (default: system temp dir)")
    ap.add_argument("--no-pandas", action="store_true", help="skip the pandas vs Polars comparison")
    args = ap.parse_args(argv)
    n = args.batches or (400 if args.quick else 2_000)
    block_sizes = [int(x) for x in str(args.max_block_rows).split(",")]

    print(f"bt_frames ingest benchmark: {n:,} appends x {args.rows} rows, median of {args.repeat} repeats")
    print(f"  {machine_note()}")
    frames = [make_orders(args.rows, start=i * args.rows, seed=1) for i in range(n)]
    batches = [f.to_arrow() for f in frames]
    print(f"  columns: {', '.join(f'{k} {v}' for k, v in frames[0].schema.items())}")

    results: dict[str, Result] = {}
    with tempfile.TemporaryDirectory(prefix="bt-ingest-", dir=args.dir) as tmp:
        work = Path(tmp)
        print(f"  temp dir: {work}", flush=True)
        cases: list[tuple[str, Callable[[], Run]]] = [
            ("baseline: IPC+write+fsync", lambda: bench_baseline(batches, os.fsync, work)),
            ("baseline: IPC+write+fdatasync", lambda: bench_baseline(batches, os.fdatasync, work)),
        ]
        for mbr in block_sizes:
            for m in ("fsync", "batch", "none"):
                cases.append((_name(m, mbr), partial(bench_bt, frames, m, work, max_block_rows=mbr)))
        # Warm-up (untimed): first-use costs (lazy imports, Parquet writer setup, page cache) hit no mode.
        bench_baseline(batches[:50], os.fsync, work)
        bench_bt(frames[:50], "none", work, max_block_rows=max(1, 25 * args.rows))
        # Interleave the repeats so that a burst of load from another process hits every mode alike.
        for rep in range(args.repeat):
            for name, fn in cases:
                run = fn()
                results.setdefault(name, Result(name, [])).runs.append(run)
                print(f"    repeat {rep + 1}: {name:<40} {run.rows_per_s:>12,.0f} rows/s", flush=True)
        pandas_result = None
        if not args.no_pandas:
            pandas_result = bench_pandas_vs_polars(max(n // 8, 50), args.rows, args.repeat, work)

    base = results["baseline: IPC+write+fsync"].rows_per_s
    base_fd = results["baseline: IPC+write+fdatasync"].rows_per_s
    rows = []
    for r in results.values():
        run = r.median_run()
        freeze_share = run.freeze_ns / 1e9 / run.wall_s if run.freezes else float("nan")
        rows.append(
            [
                r.name,
                r.rows_per_s,
                median([x.settled_rows_per_s for x in r.runs]),
                r.latency_us(50),
                r.latency_us(99),
                median([max(x.latencies_ns) / 1e6 for x in r.runs]),
                r.rows_per_s / base,
                r.rows_per_s / base_fd,
                f"{run.freezes} / {100 * freeze_share:.0f}%" if run.freezes else "-",
                run.files,
            ]
        )
    print()
    headers = ["mode", "rows/s", "rows/s incl. blocks", "p50 µs", "p99 µs", "max ms"]
    headers += ["vs fsync base", "vs fdatasync base"]
    print(fmt_table([*headers, "freezes / time", "files left"], rows))
    for mbr in block_sizes:
        fsync = results[_name("fsync", mbr)]
        ratio = fsync.rows_per_s / base
        run = fsync.median_run()
        steady = (run.rows - run.freezes * args.rows) / max(run.wall_s - run.freeze_ns / 1e9, 1e-9) / base
        print()
        print(
            f"fsync ratio vs baseline, max_block_rows={mbr:,} ({run.freezes} blocks written): {ratio:.2f}x  "
            f"(target >= {TARGET_FSYNC_RATIO}x, floor {FLOOR_FSYNC_RATIO}x: "
            f"{verdict(ratio, TARGET_FSYNC_RATIO, FLOOR_FSYNC_RATIO, higher_is_better=True)}); "
            f"vs the fdatasync baseline: {fsync.rows_per_s / base_fd:.2f}x"
        )
        if run.freezes:
            print(
                f"  without the {run.freezes} appends that handed a full buffer to the block writer "
                f"({run.freeze_ns / 1e6 / run.freezes:.1f} ms each in the appending thread): {steady:.2f}x; "
                f"until the block writer finished too: {run.settled_rows_per_s / base:.2f}x"
            )
        during = [x for x in fsync.runs if x.during_block_ns]
        if during:
            p50_all = median([percentile(x.latencies_ns, 50) / 1e3 for x in during])
            p50_in = median([percentile(x.during_block_ns or [], 50) / 1e3 for x in during])
            p99_in = median([percentile(x.during_block_ns or [], 99) / 1e3 for x in during])
            count = median([len(x.during_block_ns or []) for x in during])
            ratio99 = p99_in / p50_all
            print(
                f"  'fsync' appends while a block was being written (~{count:.0f} per run): p50 {p50_in:,.0f} µs, "
                f"p99 {p99_in:,.0f} µs; p99 / p50 of all appends ({p50_all:,.0f} µs): {ratio99:.2f}x "
                f"(target <= {TARGET_P99_OVER_P50:.0f}x: {verdict(ratio99, TARGET_P99_OVER_P50)})"
            )
    if pandas_result is not None:
        pd_us, pl_us, timed = pandas_result
        ratio = pd_us / pl_us
        print()
        print(f"pandas vs Polars appends, {args.rows} rows with a UTC DatetimeIndex, durability='none' "
              f"(median of {timed:,} appends each):")  # fmt: skip
        print(
            fmt_table(
                ["append", "µs per append", "ratio", "target", "verdict"],
                [
                    ["Polars table.append(df)", pl_us, 1.0, "-", "-"],
                    [
                        "pandas df.bt.append(store, name)",
                        pd_us,
                        ratio,
                        f"<= {TARGET_PANDAS_RATIO:g}x (aim {AIM_PANDAS_RATIO:g}x)",
                        verdict(ratio, TARGET_PANDAS_RATIO),
                    ],
                ],
            )
        )
    print()
    print(
        "rows/s: until the last append was acknowledged (durable in the WAL); 'incl. blocks': until the "
        "background block writer had finished too (a final flush())."
    )
    print(f"  load average at the end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
