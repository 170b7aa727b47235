"""Child process for tests/test_stress.py: many small appends, measuring this process's memory.

    python stress_writer.py PATH --batches N --batch-rows R --max-block-rows M --durability D

Appends ``N`` batches of ``R`` orders (batch ``i`` = ``make_batch(i, R)``),
sampling RSS, the hot buffer and the WAL on disk as it goes, and prints one
JSON line: baseline and peak RSS, raw bytes appended, aggregates of what was
appended (for the parent to compare with a scan), the largest hot buffer and
WAL seen, and the elapsed time.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

SCHEMA = {"ts": pl.Datetime("us", "UTC"), "symbol": pl.String, "price": pl.Float64, "qty": pl.Int64}
_SYMBOLS = np.array(["BTC", "ETH", "SOL", "XRP", "ADA"])
_T0_US = 1_704_067_200_000_000


def make_batch(i: int, rows: int) -> pl.DataFrame:
    """Batch ``i``: rows ``i*rows ..`` one millisecond apart, values from a generator seeded by ``i``."""
    rng = np.random.default_rng(i)
    idx = np.arange(i * rows, (i + 1) * rows, dtype=np.int64)
    return pl.DataFrame(
        {
            "ts": pl.Series(_T0_US + idx * 1_000, dtype=pl.Int64).cast(pl.Datetime("us", "UTC")),
            "symbol": _SYMBOLS[rng.integers(0, len(_SYMBOLS), rows)],
            "price": rng.integers(10_000, 5_000_000, rows) / 100,
            "qty": rng.integers(1, 1_000, rows),
        },
        schema=SCHEMA,
    )


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _peak_rss() -> int:
    """This program's peak resident memory, spikes included.

    Not ``getrusage().ru_maxrss``: it survives ``exec``, so it would also count the
    parent (pytest, hundreds of MB) as it was when it forked us. ``VmHWM`` belongs to
    the address space, which ``exec`` replaced.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # not Linux
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _dir_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.iterdir())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("path")
    p.add_argument("--batches", type=int, required=True)
    p.add_argument("--batch-rows", type=int, required=True)
    p.add_argument("--max-block-rows", type=int, required=True)
    p.add_argument("--durability", default="batch")
    args = p.parse_args()

    import bt_frames as bt

    t0 = time.perf_counter()
    store = bt.BacktraceStore(args.path, durability=args.durability, progress=False)
    table = store.create_table("orders", SCHEMA, time_column="ts", max_block_rows=args.max_block_rows)
    wal_dir = table.path / "wal"
    raw = 0
    qty_sum = 0
    price_sum = 0.0
    btc = 0
    max_hot = max_wal_disk = max_wal_records = max_segments = 0
    baseline = 0
    samples = []
    for i in range(args.batches):
        df = make_batch(i, args.batch_rows)
        raw += df.estimated_size()
        qty_sum += int(df["qty"].sum())
        price_sum += float(df["price"].sum())
        btc += int((df["symbol"] == "BTC").sum())
        table.append(df)
        del df
        max_hot = max(max_hot, table.hot_rows)
        if i == 0:  # libraries loaded, thread pools started, first WAL record written
            gc.collect()
            baseline = _rss()
        if i % 50 == 0 or i == args.batches - 1:
            state = table.wal_state
            max_wal_records = max(max_wal_records, state["records"])
            max_segments = max(max_segments, state["segments"])
            max_wal_disk = max(max_wal_disk, _dir_bytes(wal_dir))
        if i % 500 == 0:
            samples.append(_rss())
    elapsed = time.perf_counter() - t0
    out = {
        "baseline_rss": baseline,
        "peak_rss": _peak_rss(),
        "end_rss": _rss(),
        "samples": samples,
        "raw_bytes": raw,
        "rows": table.rows,
        "blocks": table.blocks.height,
        "hot_rows": table.hot_rows,
        "qty_sum": qty_sum,
        "price_sum": price_sum,
        "btc": btc,
        "max_hot_rows": max_hot,
        "max_wal_disk_bytes": max_wal_disk,
        "max_wal_records": max_wal_records,
        "max_wal_segments": max_segments,
        "elapsed_s": elapsed,
    }
    store.close()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    sys.exit(main())
