"""Where a durable append's time goes (issue #2): fdatasync vs our own work, idle vs while a block is written.

    .venv/bin/python benchmarks/ingest_split.py               # 1,000 appends x 500 rows, 2 repeats
    .venv/bin/python benchmarks/ingest_split.py --appending   # + the WAL without zeros ahead, interleaved

Every ``durability="fsync"`` append (``max_block_rows=100,000``, so blocks are
written meanwhile) is split into the time spent inside the WAL's
``fdatasync`` (timed through the ``bt_frames.storage.fs`` seam) and the rest
("own": validation, IPC encode, CRC, writev, waiting for the decode helper,
the lock). Appends are grouped by whether the block writer was busy around
them. The baseline (pyarrow IPC + ``os.write`` + ``os.fdatasync``, no block
writer) is split the same way and run interleaved with bt_frames.

The WAL writes records in place into zeros synced ahead of them
(``bt_frames/storage/wal.py``), so that ``fdatasync`` has no file size or
extent change to journal -- only the data to flush; on ext4 that skips the
journal commit an appending ``fdatasync`` needs. ``--appending`` also runs
bt_frames with ``wal.ZERO_AHEAD = False`` (records appended, as before),
interleaved with the other two, to show what the zeros gain.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from _common import ipc_append, make_orders

import bt_frames as bt
from bt_frames.storage import fs, wal

_clock = time.perf_counter_ns


class _TimedSync(fs.FileSystem):
    """Records how long the appending thread spends in fdatasync."""

    def __init__(self) -> None:
        self.ns = 0

    def fdatasync(self, fd: int) -> None:
        if threading.current_thread() is threading.main_thread():
            t = _clock()
            super().fdatasync(fd)
            self.ns += _clock() - t
        else:
            super().fdatasync(fd)


def run_bt(frames: list[Any], workdir: Path, *, max_block_rows: int, zeros: bool = True) -> dict[str, Any]:
    wal.ZERO_AHEAD = zeros
    store = bt.BacktraceStore(tempfile.mkdtemp(dir=workdir), durability="fsync", progress=False)
    try:
        table = store.create_table("o", dict(frames[0].schema), time_column="ts", max_block_rows=max_block_rows)
        writer = table._writer
        timed = _TimedSync()
        out: dict[str, list[tuple[int, int]]] = {"idle": [], "busy": []}
        gc.collect()
        t0 = _clock()
        with fs.use(timed):
            for df in frames:
                busy = writer.draining
                timed.ns = 0
                t = _clock()
                table.append(df)
                dt = _clock() - t
                out["busy" if busy and writer.draining else "idle"].append((dt, timed.ns))
        wall = (_clock() - t0) / 1e9
    finally:
        store.close()
        wal.ZERO_AHEAD = True
    return {"wall": wall, **out}


def run_baseline(batches: list[pa.Table], workdir: Path) -> dict[str, Any]:
    fd, _ = tempfile.mkstemp(dir=workdir)
    lat: list[tuple[int, int]] = []
    try:
        gc.collect()
        t0 = _clock()
        for tbl in batches:
            t = _clock()
            ipc_append(fd, tbl)
            s = _clock()
            os.fdatasync(fd)
            lat.append((_clock() - t, _clock() - s))
        wall = (_clock() - t0) / 1e9
    finally:
        os.close(fd)
    return {"wall": wall, "idle": lat, "busy": []}


def _row(name: str, pairs: list[tuple[int, int]]) -> str:
    if not pairs:
        return f"  {name:<34} (none)"
    a = np.array(pairs, dtype=np.float64) / 1e3
    tot, sync = a[:, 0], a[:, 1]
    own = tot - sync
    p50, p99 = np.median(tot), np.percentile(tot, 99)
    return (
        f"  {name:<34} n={len(a):5d}  total p50 {p50:6.0f} p99 {p99:7.0f} (p99/p50 {p99 / p50:5.2f})  "
        f"fdatasync p50 {np.median(sync):6.0f} p99 {np.percentile(sync, 99):7.0f}  "
        f"own p50 {np.median(own):5.0f} mean {own.mean():5.0f} p99 {np.percentile(own, 99):6.0f}  µs"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=1_000)
    ap.add_argument("--rows", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--max-block-rows", type=int, default=100_000)
    ap.add_argument("--appending", action="store_true", help="also run with no zeros ahead (records appended)")
    args = ap.parse_args(argv)
    frames = [make_orders(args.rows, start=i * args.rows, seed=1) for i in range(args.batches)]
    batches = [f.to_arrow() for f in frames]
    kinds = ["baseline", "bt_frames"] + (["bt_frames appending"] if args.appending else [])
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory(prefix="bt-split-") as tmp:
        work = Path(tmp)
        run_bt(frames[:50], work, max_block_rows=args.max_block_rows)  # warm-up
        for _ in range(args.repeat):  # interleaved: a burst of load from elsewhere hits every kind alike
            runs["baseline"].append(run_baseline(batches, work))
            runs["bt_frames"].append(run_bt(frames, work, max_block_rows=args.max_block_rows))
            if args.appending:
                appending = run_bt(frames, work, max_block_rows=args.max_block_rows, zeros=False)
                runs["bt_frames appending"].append(appending)
    n_rows = args.batches * args.rows
    base = float(np.median([n_rows / r["wall"] for r in runs["baseline"]]))
    print(f"{args.batches:,} appends x {args.rows} rows, max_block_rows={args.max_block_rows:,}, "
          f"{args.repeat} repeats pooled; load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    for k in kinds:
        rps = float(np.median([n_rows / r["wall"] for r in runs[k]]))
        print(f"{k}: {rps:,.0f} rows/s ({rps / base:.2f}x the baseline)")
        idle = [p for r in runs[k] for p in r["idle"]]
        busy = [p for r in runs[k] for p in r["busy"]]
        print(_row("no block being written" if k != "baseline" else "all (no block writer)", idle))
        if k != "baseline":
            print(_row("while a block was being written", busy))
            if busy and idle:
                p50_all = np.median([p[0] for p in idle + busy])
                p99_busy = np.percentile([p[0] for p in busy], 99)
                print(f"  ingest.py's measure: p99 while a block is written / p50 of all = {p99_busy / p50_all:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
