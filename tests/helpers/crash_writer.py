"""Child process for the crash, locking and reader tests: append numbered batches, or check a store.

Run as a script with ``sys.executable``; the tests import the pure helpers
(``batch_size``, ``make_frame``, ``check_batches``) to know what each batch
must contain. Every row carries its batch id and its index within the batch,
and every other value is a function of those two, so any lost, partial,
duplicated or reordered batch is visible in a scan.

Modes::

    write  --path P --durability D --max-block-rows N --sizes {mixed,freeze,small} --start ID
           [--count K] [--die-at POINT:N] [--pause S]
        Open the store (recovering it), print "open <rows>", then append batch
        ids START, START+1, ... and print each id (flushed) only after
        ``append`` has returned. With --count, close and print "done" after K
        batches. --die-at makes the process SIGKILL itself at a chosen point
        of the write path (a real crash at a known instant; see _install_fault).

    check  --path P --durability D --max-block-rows N --sizes S [--read-only]
        Open the store in this fresh process, check every batch, print one JSON
        line {"ids": [...], "verify_ok": bool, "rows": int, "recovery": {...}}.

    hold   --path P
        Open the store as the writer, print "locked", then sleep until killed.

    try-lock --path P
        Try to open the store as a writer; print one JSON line with the
        exception type, message and elapsed seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

TABLE = "batches"
SCHEMA = {
    "batch": pl.Int64,
    "row": pl.Int32,
    "ts": pl.Datetime("us", "UTC"),
    "sym": pl.String,
    "val": pl.Float64,
}
_T0_US = 1_704_067_200_000_000  # 2024-01-01T00:00:00Z
_SYMS = np.array(["BTC", "ETH", "SOL", "XRP", "ADA", "ünï", ""])


def batch_size(batch_id: int, max_block_rows: int, sizes: str) -> int:
    """Rows of batch ``batch_id`` (a pure function, so the parent knows it without being told).

    ``mixed``: mostly small batches, about one in 25 at least ``max_block_rows``
    (the direct-to-blocks multi-part path). ``freeze``: batches of 55-95% of a
    block, so nearly every other append freezes, and one in four 1-3.5 blocks
    big. ``small``: 1-50 rows.
    """
    r = random.Random(batch_id * 1_000_003 + max_block_rows)
    if sizes == "small":
        return r.randint(1, 50)
    if sizes == "mixed":
        if r.random() < 0.04:
            return max_block_rows if r.random() < 0.3 else int(max_block_rows * r.uniform(1.0, 3.5))
        return r.randint(1, max(1, max_block_rows // 4))
    if sizes == "freeze":
        if r.random() < 0.25:
            return max_block_rows if r.random() < 0.2 else int(max_block_rows * r.uniform(1.0, 3.5))
        return int(max_block_rows * r.uniform(0.55, 0.95))
    raise ValueError(sizes)


def make_frame(ids: Sequence[int], sizes: Sequence[int]) -> pl.DataFrame:
    """The rows of batches ``ids`` (with ``sizes`` rows each), concatenated in that order."""
    ids_a = np.asarray(ids, dtype=np.int64)
    sizes_a = np.asarray(sizes, dtype=np.int64)
    batch = np.repeat(ids_a, sizes_a)
    starts = np.repeat(np.cumsum(sizes_a) - sizes_a, sizes_a)
    row = np.arange(int(sizes_a.sum()), dtype=np.int64) - starts
    return pl.DataFrame(
        {
            "batch": batch,
            "row": row.astype(np.int32),
            "ts": pl.Series(_T0_US + batch * 1_000_000 + row, dtype=pl.Int64).cast(pl.Datetime("us", "UTC")),
            "sym": _SYMS[(batch + row) % len(_SYMS)],
            "val": batch.astype(np.float64) + row / 1_000_000,
        },
        schema=SCHEMA,
    )


def make_batch(batch_id: int, max_block_rows: int, sizes: str) -> pl.DataFrame:
    return make_frame([batch_id], [batch_size(batch_id, max_block_rows, sizes)])


def check_batches(df: pl.DataFrame, max_block_rows: int, sizes: str) -> list[int]:
    """The batch ids in ``df``, in order; AssertionError unless each appears once, complete and exact."""
    assert df.schema == pl.Schema(SCHEMA), f"schema {df.schema}"
    if df.height == 0:
        return []
    runs = df.select(pl.col("batch").rle()).unnest("batch")
    ids = runs.get_column("value").to_list()
    lens = runs.get_column("len").to_list()
    dup = {i for i in ids if ids.count(i) > 1} if len(set(ids)) != len(ids) else set()
    assert not dup, f"batches appear in more than one place (duplicated or interleaved): {sorted(dup)[:10]}"
    assert ids == sorted(ids), f"batches out of append order: {ids[:50]}"
    want = [batch_size(i, max_block_rows, sizes) for i in ids]
    partial = [(i, n, w) for i, n, w in zip(ids, lens, want, strict=True) if n != w]
    assert not partial, f"partial batches (id, rows found, rows appended): {partial[:10]}"
    expected = make_frame(ids, want)
    if not df.equals(expected, null_equal=True):
        bad = (df.with_row_index("i").join(expected.with_row_index("i"), on="i", suffix="_want")).filter(
            pl.any_horizontal(pl.col(c).ne_missing(pl.col(f"{c}_want")) for c in SCHEMA)
        )
        raise AssertionError(f"row contents differ from what was appended:\n{bad.head(5)}")
    return ids


# -- faults ------------------------------------------------------------------------------------------------------


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _install_fault(spec: str) -> None:
    """Make this process SIGKILL itself at the N-th occurrence of a point of the write path.

    Points (``POINT:N``):

    - ``rename-block:N``   before the N-th rename of a block into place (the .tmp is written and fsynced)
    - ``renamed-block:N``  right after the N-th block rename (before the directory fsync and WAL cleanup)
    - ``rename-cache:N``   before the N-th rename of the stats cache into place (its .tmp is written)
    - ``rotated:N``        right after the N-th WAL rotation (new segment created, no block yet)
    """
    point, _, n_str = spec.partition(":")
    n = int(n_str)
    seen = 0

    if point in ("rename-block", "renamed-block", "rename-cache"):
        real_replace = os.replace
        suffix = "stats.arrow" if point == "rename-cache" else ".parquet"

        def replace(src: object, dst: object, **kw: object) -> None:
            nonlocal seen
            hit = str(dst).endswith(suffix)
            if hit:
                seen += 1
                if seen == n and point != "renamed-block":
                    _die()
            real_replace(src, dst, **kw)  # type: ignore[arg-type]
            if hit and seen == n and point == "renamed-block":
                _die()

        os.replace = replace  # type: ignore[assignment]
    elif point == "rotated":
        from bt_frames.storage import wal

        real_rotate = wal.WalWriter.rotate

        def rotate(self: wal.WalWriter, next_lsn: int) -> Path:
            nonlocal seen
            out = real_rotate(self, next_lsn)
            seen += 1
            if seen == n:
                _die()
            return out

        wal.WalWriter.rotate = rotate  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown fault point {point!r}")


# -- modes -------------------------------------------------------------------------------------------------------


def _write(args: argparse.Namespace) -> None:
    import bt_frames as bt

    if args.die_at:
        _install_fault(args.die_at)
    store = bt.BacktraceStore(args.path, durability=args.durability)
    table = store.create_table(TABLE, SCHEMA, time_column="ts", max_block_rows=args.max_block_rows)
    print(f"open {table.rows}", flush=True)
    i = args.start
    end = None if args.count is None else args.start + args.count
    while end is None or i < end:
        table.append(make_batch(i, args.max_block_rows, args.sizes))
        print(i, flush=True)  # acknowledged: append() returned
        i += 1
        if args.pause:
            time.sleep(args.pause)
    store.close()
    print("done", flush=True)


def _check(args: argparse.Namespace) -> None:
    import bt_frames as bt

    store = bt.BacktraceStore(args.path, read_only=args.read_only, durability=args.durability)
    try:
        table = store.table(TABLE)
        df = table.scan().collect()
        ids = check_batches(df, args.max_block_rows, args.sizes)
        report = store.verify()
        out = {
            "ids": ids,
            "rows": df.height,
            "verify_ok": report.ok,
            "verify": repr(report),
            "recovery": dataclasses.asdict(table.recovery),
        }
    finally:
        store.close()
    print(json.dumps(out), flush=True)


def _hold(args: argparse.Namespace) -> None:
    import bt_frames as bt

    store = bt.BacktraceStore(args.path)  # keep the reference: a collected store closes (and unlocks)
    print("locked", flush=True)
    while not store.read_only:
        time.sleep(60)


def _try_lock(args: argparse.Namespace) -> None:
    import bt_frames as bt

    t0 = time.perf_counter()
    try:
        store = bt.BacktraceStore(args.path)
    except Exception as e:
        out = {"error": type(e).__name__, "message": str(e), "seconds": time.perf_counter() - t0}
    else:
        out = {"error": None, "message": "", "seconds": time.perf_counter() - t0}
        store.close()
    print(json.dumps(out), flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["write", "check", "hold", "try-lock"])
    p.add_argument("--path", required=True)
    p.add_argument("--durability", default="fsync", choices=["fsync", "batch", "none"])
    p.add_argument("--max-block-rows", type=int, default=1000)
    p.add_argument("--sizes", default="mixed", choices=["mixed", "freeze", "small"])
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--count", type=int, default=None)
    p.add_argument("--die-at", default=None)
    p.add_argument("--pause", type=float, default=0.0)
    p.add_argument("--read-only", action="store_true")
    args = p.parse_args(argv)
    {"write": _write, "check": _check, "hold": _hold, "try-lock": _try_lock}[args.mode](args)


if __name__ == "__main__":
    main()
