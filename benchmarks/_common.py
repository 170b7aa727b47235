"""Helpers shared by the benchmarks: synthetic orders, timing, load notes and plain-text tables.

Nothing here asserts timing targets: the benchmarks print numbers (and PASS/MISS
against the issue's targets) and exit 0, because the machine they run on is
usually shared and noisy.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python benchmarks/x.py` from a checkout without installing
    sys.path.insert(0, str(ROOT))

ORDERS_SCHEMA: dict[str, pl.DataType] = {
    "ts": pl.Datetime("us", "UTC"),
    "symbol": pl.String(),
    "price": pl.Float64(),
    "qty": pl.Int64(),
    "side": pl.String(),
    "order_id": pl.Int64(),
    "venue": pl.String(),
}
# ~20 symbols with a skewed (Zipf-like) frequency: a few common ones, some rare ones.
SYMBOLS = [
    "BTC", "ETH", "SOL", "XRP", "ADA", "DOGE", "DOT", "AVAX", "LINK", "MATIC",
    "LTC", "ATOM", "UNI", "XLM", "ETC", "FIL", "APT", "NEAR", "ALGO", "ICP",
]  # fmt: skip
_W = 1.0 / np.arange(1, len(SYMBOLS) + 1) ** 1.1
SYMBOL_WEIGHTS = _W / _W.sum()
VENUES = ["NYX", "LDN", "TKY", "SGP"]
T0_US = 1_704_067_200_000_000  # 2024-01-01T00:00:00Z


def make_orders(n: int, *, start: int = 0, seed: int = 0, step_us: int = 2_000) -> pl.DataFrame:
    """``n`` synthetic orders, vectorised. Row ``i`` (global ``start + i``) is at about
    ``T0 + (start+i) * step_us`` (plus a sub-step jitter that keeps ``ts`` non-decreasing)."""
    rng = np.random.default_rng(seed * 1_000_003 + start)
    idx = np.arange(start, start + n, dtype=np.int64)
    ts = T0_US + idx * step_us + rng.integers(0, max(step_us // 2, 1), n)
    sym_idx = rng.choice(len(SYMBOLS), n, p=SYMBOL_WEIGHTS)
    # price level depends on the symbol, so per-symbol stats are meaningful
    base = np.array([40_000.0 / (k + 1) ** 1.5 + 1 for k in range(len(SYMBOLS))])
    price = np.round(base[sym_idx] * rng.uniform(0.8, 1.2, n), 2)
    return pl.DataFrame(
        {
            "ts": pl.Series(ts, dtype=pl.Int64).cast(pl.Datetime("us", "UTC")),
            "symbol": pl.Series(np.array(SYMBOLS)[sym_idx], dtype=pl.String),
            "price": price,
            "qty": rng.integers(1, 1_000, n),
            "side": pl.Series(np.where(rng.random(n) < 0.5, "buy", "sell"), dtype=pl.String),
            "order_id": idx,
            "venue": pl.Series(np.array(VENUES)[rng.integers(0, len(VENUES), n)], dtype=pl.String),
        },
        schema=ORDERS_SCHEMA,
    )


def ipc_append(fd: int, table: Any) -> None:
    """The baselines' append: ``table`` (a ``pyarrow.Table``) serialised as one Arrow IPC stream and
    written whole at the end of ``fd`` with ``os.write`` (the caller syncs)."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    view = memoryview(sink.getvalue())
    while view:
        view = view[os.write(fd, view) :]


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def percentile(xs: Sequence[float], q: float) -> float:
    """``q`` in [0, 100]; linear interpolation, as numpy does."""
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q)) if len(xs) else float("nan")


def time_call(fn: Callable[[], Any], *, repeat: int, warmup: int = 1) -> tuple[list[float], Any]:
    """Seconds per call (``repeat`` timed calls after ``warmup`` untimed ones) and the last result."""
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter_ns()
        result = fn()
        times.append((time.perf_counter_ns() - t) / 1e9)
    return times, result


def machine_note() -> str:
    """One line describing the machine and its load right now (the box is shared)."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"polars {pl.__version__}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )


def fmt_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, align: str | None = None) -> str:
    """A plain-text table (also valid Markdown). ``align``: one char per column, 'l' or 'r'."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    align = align or "l" + "r" * (len(headers) - 1)

    def line(r: list[str]) -> str:
        padded = (c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align, strict=True))
        return "| " + " | ".join(padded) + " |"

    sep = "|" + "|".join("-" * (w + 1) + (":" if a == "r" else "-") for w, a in zip(widths, align, strict=True)) + "|"
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


def _fmt(c: Any) -> str:
    if isinstance(c, float):
        if c != c:  # NaN
            return "-"
        if abs(c) >= 100:
            return f"{c:,.0f}"
        if abs(c) >= 10:
            return f"{c:.1f}"
        return f"{c:.3g}" if abs(c) < 1 else f"{c:.2f}"
    if isinstance(c, int):
        return f"{c:,}"
    return str(c)


def verdict(value: float, target: float, floor: float | None = None, *, higher_is_better: bool = False) -> str:
    """PASS if ``value`` meets ``target``; with a ``floor``, 'ok (floor)' between floor and target; else MISS."""
    meets = (lambda v, t: v >= t) if higher_is_better else (lambda v, t: v <= t)
    if meets(value, target):
        return "PASS"
    if floor is not None and meets(value, floor):
        return "ok (floor)"
    return "MISS"


def dir_files(path: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(path))
