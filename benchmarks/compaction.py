"""Auto-compaction: many small flushes with it on and off -- blocks, files, bytes rewritten, append latency.

    .venv/bin/python benchmarks/compaction.py            # 10,000 flushes of 10 rows; latency: 3 runs
    .venv/bin/python benchmarks/compaction.py --quick    # 400 flushes; latency: 1 run (< 60 s)

Part 1 (files): n appends of 10 rows, each followed by ``flush()`` (a small
block each), into a table with ``max_block_rows=100_000``, auto_compact on
and off (``durability="none"``, so the WAL's fsync is not what is measured;
blocks and manifest versions are still fsynced). Printed: the live blocks
at the end (after waiting for the background merges), the files in
``blocks/`` before and after ``vacuum()`` (retired inputs are kept for time
travel until then), the rows and bytes the merges wrote over the rows and
bytes of the data the flushes wrote (the write amplification), and the
append+flush latency.

Part 2 (latency, issue: "never blocks an append for longer than a normal
block write"), ``max_block_rows=2_000``: appends of 1,000 rows (a block
every other append, written by the background block writer; such blocks are
full, so nothing merges: the cost of the policy alone), then appends of 100
rows with a ``flush()`` every second one (200-row blocks, which
auto-compaction merges while the appends go on). p50/p99 of ``append``
alone, auto_compact on and off, the median of the runs.
Nothing is asserted; on a shared machine compare the two columns of one run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ORDERS_SCHEMA, fmt_table, machine_note, make_orders, median, percentile

import bt_frames as bt


def _blocks_files(t: bt.Table) -> int:
    return sum(1 for p in (t.path / "blocks").iterdir() if p.name.endswith(".parquet"))


def flushes(n: int, auto: bool) -> dict[str, float]:
    frames = [make_orders(10, start=i * 10) for i in range(n)]
    lat: list[float] = []
    with tempfile.TemporaryDirectory() as d, bt.open(Path(d) / "db", durability="none", retired_grace=0) as s:
        t = s.create_table("t", ORDERS_SCHEMA, time_column="ts", max_block_rows=100_000, auto_compact=auto)
        for f in frames:
            t0 = time.perf_counter()
            t.append(f)
            t.flush()
            lat.append(time.perf_counter() - t0)
        t._wait_compacted()
        published = sum(b.bytes for b in _published(t))
        c = t.compaction
        before = _blocks_files(t)
        t.vacuum()
        out = {
            "blocks": t.blocks.height,
            "files": before,
            "files_vacuumed": _blocks_files(t),
            "rows_ratio": c.rows_rewritten / (10 * n),
            "bytes_ratio": c.bytes_rewritten / published,
            "merges": c.merges,
            "p50_ms": percentile(lat, 50) * 1e3,
            "p99_ms": percentile(lat, 99) * 1e3,
        }
        assert t.rows == 10 * n
    return out


def _published(t: bt.Table) -> list[object]:
    from bt_frames.storage import manifest as mf

    return [b for edit, _s in mf.history(t.path) if edit.operation == "publish" for b in edit.add]


def appends(n: int, auto: bool, rows: int, flush_every: int) -> tuple[float, float, int]:
    """p50, p99 (ms) of ``append`` alone (a ``flush()`` every ``flush_every`` appends is not timed); merges."""
    frames = [make_orders(rows, start=i * rows) for i in range(n)]
    lat: list[float] = []
    with tempfile.TemporaryDirectory() as d, bt.open(Path(d) / "db", durability="none") as s:
        t = s.create_table("t", ORDERS_SCHEMA, time_column="ts", max_block_rows=2_000, auto_compact=auto)
        for i, f in enumerate(frames):
            t0 = time.perf_counter()
            t.append(f)
            lat.append(time.perf_counter() - t0)
            if flush_every and i % flush_every == flush_every - 1:
                t.flush()
        merges = t.compaction.merges
    return percentile(lat, 50) * 1e3, percentile(lat, 99) * 1e3, merges


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    n = 400 if args.quick else 10_000
    runs = 1 if args.quick else 3
    print(machine_note())
    rows = []
    for auto in (True, False):
        r = flushes(n, auto)
        rows.append(
            [
                "on" if auto else "off",
                f"{n:,}",
                r["blocks"],
                r["files"],
                r["files_vacuumed"],
                r["merges"],
                f"{r['rows_ratio']:.2f}x",
                f"{r['bytes_ratio']:.2f}x",
                f"{r['p50_ms']:.2f}",
                f"{r['p99_ms']:.2f}",
            ]
        )
    print(f"\n{n:,} appends of 10 rows, each flushed (max_block_rows=100,000):")
    headers = ["auto_compact", "flushes", "live blocks", "files", "after vacuum", "merges", "rows rewritten",
               "bytes rewritten", "p50 ms", "p99 ms"]  # fmt: skip
    print(fmt_table(headers, rows))
    print("(rewritten: rows and bytes the merges wrote / rows and bytes the flushes wrote)")

    m = 300 if args.quick else 2_000
    for rows_, every, what in (
        (1_000, 0, "appends of 1,000 rows (every block full: nothing to merge)"),
        (100, 2, "appends of 100 rows, a flush() every 2nd (200-row blocks, merged 10 at a time)"),
    ):
        lat_rows = []
        got: dict[bool, tuple[float, float]] = {}
        for auto in (False, True):
            res = [appends(m, auto, rows_, every) for _ in range(runs)]
            p50, p99 = median([x[0] for x in res]), median([x[1] for x in res])
            got[auto] = (p50, p99)
            lat_rows.append(["on" if auto else "off", f"{p50:.2f}", f"{p99:.2f}", median([x[2] for x in res])])
        print(f"\n{m:,} {what}, max_block_rows=2,000 (median of {runs} run(s)):")
        print(fmt_table(["auto_compact", "append p50 ms", "append p99 ms", "merges"], lat_rows))
        print(f"append p99 on / off: {got[True][1] / got[False][1]:.2f}x (target: within ~2x)")
    print(machine_note())


if __name__ == "__main__":
    main()
