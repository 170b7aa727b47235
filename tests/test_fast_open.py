"""The shortcuts that make opening a many-block store cheap (issue 9 §4) keep every guarantee.

Each test here targets one shortcut that could hide a defect: a lazily
imported dependency, a folder listing instead of per-file checks, statistics
taken from the cache frame instead of per-block objects.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl

import bt_frames as bt
from tests.conftest import ORDERS_SCHEMA, make_orders

ROOT = Path(__file__).resolve().parents[1]


def _child(code: str, *args: str) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter (this checkout first on the path); its last stdout line is JSON."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    out: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def _small_store(path: Path, appends: int = 3) -> None:
    with bt.BacktraceStore(path) as s:
        t = s.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=10)
        for i in range(appends):
            t.append(make_orders(10, start=10 * i))
        t.flush()


def test_a_reader_process_never_imports_filelock(store_path: Path) -> None:
    """Readers take no lock, so opening read-only and scanning must not import ``filelock``
    (test_locking.py checks that writers still lock)."""
    _small_store(store_path)
    out = _child(
        "import sys, json, bt_frames as bt\n"
        "s = bt.open(sys.argv[1], read_only=True)\n"
        "n = s['orders'].scan().collect().height\n"
        "after_read = 'filelock' in sys.modules\n"
        "s.close()\n"
        "w = bt.open(sys.argv[1])\n"
        "locked = 'filelock' in sys.modules\n"
        "w.close()\n"
        "print(json.dumps({'rows': n, 'after_read': after_read, 'writer_imports': locked}))",
        str(store_path),
    )
    assert out == {"rows": 30, "after_read": False, "writer_imports": True}


def test_scan_result_is_unchanged_by_the_fast_paths(store_path: Path) -> None:
    """Sanity anchor for the tests below: a read-only open of a many-block table reads what was appended."""
    _small_store(store_path, appends=12)
    with bt.BacktraceStore(store_path, read_only=True) as s:
        t = s["orders"]
        assert t.recovery.blocks == 12
        got = t.scan().filter(pl.col("qty") > 0).collect()
        assert got.equals(pl.concat([make_orders(10, start=10 * i) for i in range(12)]))
