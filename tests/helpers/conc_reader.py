"""Child process for tests/test_concurrency.py: a read-only reader scanning while another process writes.

    python conc_reader.py STORE TABLE STOP_FILE SEED

Opens ``STORE`` with ``read_only=True`` and, until ``STOP_FILE`` exists, calls
``refresh()`` and then runs a few scans of ``TABLE`` on that (ever staler)
state, sleeping a little in between so that the writer's compactions delete
blocks under it. Every scan checks its own result against the table's
invariant (rows ``id = 0..k-1`` in order, ``v = id / 2``) and prints one JSON
line: ``kind``, ``t0`` (``time.monotonic()`` before the ``refresh()`` the scan
relies on), ``t1`` (after the scan), ``n`` (what it saw: the rows for
``full``/``len``, the filtered rows for ``mod3``, the rows consumed for
``partial``), ``retries`` (transparent refreshes during the scan) and ``error``
(``None``, or the exception). The parent checks ``n`` against what the
writer had acknowledged between ``t0`` and ``t1``.
"""

from __future__ import annotations

import json
import logging
import random
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import polars as pl

import bt_frames as bt

KINDS = ("full", "mod3", "len", "partial", "head")


class _CountRetries(logging.Handler):
    """Counts the transparent refreshes of ``_scan._refreshing`` (logged at INFO)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.n = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "refreshing and reading again" in record.getMessage():
            self.n += 1


def check_prefix(df: pl.DataFrame, start: int = 0) -> None:
    ids = df["id"].to_numpy()
    if not np.array_equal(ids, np.arange(start, start + df.height)):
        raise AssertionError(f"not a prefix: ids {ids[:5]}...{ids[-5:]} for {df.height} rows")
    if not (df["v"] == df["id"] / 2).all():
        raise AssertionError("column v does not match id: rows mixed up")


def scan_once(t: bt.Table, kind: str, rng: random.Random) -> int:
    if kind == "full":
        df = t.scan().collect()
        check_prefix(df)
        return df.height
    if kind == "mod3":
        df = t.scan().filter(pl.col("id") % 3 == 0).collect()
        ids = df["id"].to_numpy()
        if not np.array_equal(ids, np.arange(0, 3 * df.height, 3)):
            raise AssertionError(f"filtered ids are not 0, 3, 6, ...: {ids[:5]}...{ids[-5:]}")
        return df.height
    if kind == "len":
        return int(t.scan().select(pl.len()).collect().item())
    if kind == "head":
        df = t.scan().head(777).collect()
        check_prefix(df)
        return df.height
    it = t.iter_batches(batch_size=rng.choice([64, 500, 3_000]))
    seen = 0
    for _ in range(rng.randint(1, 4)):
        batch = next(it, None)
        if batch is None:
            break
        check_prefix(batch, seen)
        seen += batch.height
    if rng.random() < 0.5:
        it.close()
    del it  # the other half is abandoned half-read
    return seen


def main() -> None:
    store_path, table, stop_file, seed = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    rng = random.Random(seed)
    retries = _CountRetries()
    log = logging.getLogger("bt_frames")
    log.addHandler(retries)
    log.setLevel(logging.INFO)
    store = bt.open(store_path, read_only=True, progress=False)
    t = store[table]
    out = sys.stdout
    while not stop_file.exists():
        t0 = time.monotonic()
        t.refresh()
        for _ in range(rng.randint(1, 4)):  # later scans read an older state: the writer moves on meanwhile
            time.sleep(rng.choice([0, 0, 0.002, 0.01, 0.03]))
            kind = rng.choice(KINDS)
            before = retries.n
            n: int | None = None
            error = None
            try:
                n = scan_once(t, kind, rng)
            except Exception:
                error = traceback.format_exc()
            rec = {"kind": kind, "t0": t0, "t1": time.monotonic(), "n": n, "retries": retries.n - before}
            rec["error"] = error
            out.write(json.dumps(rec) + "\n")
    out.flush()
    store.close()


if __name__ == "__main__":
    sys.exit(main())
