"""Scanning many small hot appends: the cost must grow linearly with the hot rows, not with the appends.

    .venv/bin/python benchmarks/hot_scan.py            # 1,000 / 8,000 / 20,000 one-row appends
    .venv/bin/python benchmarks/hot_scan.py --quick    # 1,000 / 4,000 (what CI runs)

For each size: n one-row appends (``durability="none"``: the WAL's fsync is
not what is measured), then ``scan().select(pl.len())`` and a full
``scan().collect()``, each the median of 5, next to the same queries on the
same rows as one in-memory Polars frame (the baseline, measured in the same
run). Before the hot buffer consolidated its chunks, 20,000 appends took 71 s
for the count (1k: 0.15 s, 8k: 20 s): quadratic. The ratio column should stay
roughly flat as n grows. Nothing is asserted; the table is printed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt_table, machine_note, median, time_call

import bt_frames as bt


def run(n: int, repeat: int) -> list[object]:
    with tempfile.TemporaryDirectory() as d, bt.open(Path(d) / "db", durability="none") as store:
        t = store.create_table("t", {"x": pl.Int64}, max_block_rows=10_000_000)
        t0 = time.perf_counter()
        for i in range(n):
            t.append(pl.DataFrame({"x": [i]}))
        append_s = time.perf_counter() - t0
        chunks = len(t.snapshot().hot)
        count_times, got = time_call(lambda: t.scan().select(pl.len()).collect().item(), repeat=repeat)
        assert got == n
        full_times, _ = time_call(lambda: t.scan().collect(), repeat=repeat)
        base = pl.DataFrame({"x": range(n)}, schema={"x": pl.Int64}).lazy()
        base_count, _ = time_call(lambda: base.select(pl.len()).collect().item(), repeat=repeat)
        base_full, _ = time_call(lambda: base.collect(), repeat=repeat)
    c, f = median(count_times), median(full_times)
    return [
        f"{n:,}",
        f"{append_s / n * 1e6:.0f}",
        chunks,
        f"{c * 1e3:.2f}",
        f"{median(base_count) * 1e3:.2f}",
        f"{c / n * 1e6:.2f}",
        f"{f * 1e3:.2f}",
        f"{median(base_full) * 1e3:.2f}",
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1,000 and 4,000 appends (what CI runs)")
    args = ap.parse_args(argv)
    sizes = [1_000, 4_000] if args.quick else [1_000, 8_000, 20_000]
    print(f"hot-buffer scans after n one-row appends ({machine_note()})")
    rows = [run(n, repeat=5) for n in sizes]
    print(
        fmt_table(
            [
                "appends",
                "µs/append",
                "hot chunks",
                "count ms",
                "baseline ms",
                "count µs/row",
                "collect ms",
                "baseline ms",
            ],
            rows,
        )
    )
    print("linear: 'count µs/row' stays about flat as n grows (it was quadratic: 71 s at 20,000 appends)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
