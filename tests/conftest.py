from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

import bt_frames as bt
from bt_frames.storage import wal

ORDERS_SCHEMA = {
    "ts": pl.Datetime("us", "UTC"),
    "symbol": pl.String,
    "price": pl.Float64,
    "qty": pl.Int64,
}
SYMBOLS = ["BTC", "ETH", "SOL", "XRP", "ADA"]
T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
_T0_US = int(T0.timestamp()) * 1_000_000


def make_orders(n: int, *, start: int = 0, seed: int = 0, step_us: int = 1_000_000) -> pl.DataFrame:
    """``n`` synthetic orders; row ``i`` (global index ``start + i``) is at T0 + (start+i)*step."""
    rng = np.random.default_rng(seed + start)
    idx = np.arange(start, start + n, dtype=np.int64)
    return pl.DataFrame(
        {
            "ts": pl.Series(idx * step_us + _T0_US, dtype=pl.Int64).cast(pl.Datetime("us", "UTC")),
            "symbol": pl.Series(rng.choice(SYMBOLS, n), dtype=pl.String),
            "price": rng.uniform(100, 50_000, n).round(2),
            "qty": rng.integers(1, 1_000, n),
        },
        schema=ORDERS_SCHEMA,
    )


ZERO_CHUNK = 16 << 10  # small: the tests' records cross many chunk ends; power-loss traces stay small


@pytest.fixture(autouse=True)
def _deterministic_wal_zeros(monkeypatch: pytest.MonkeyPatch) -> None:
    """WAL zeros ahead written inline (not by a thread), in small chunks.

    FaultFS counts the k-th call of a kind and RecordingFS orders every call:
    a zeroer thread would make both vary from run to run. Tests of the thread
    itself set ``wal.ZERO_IN_BACKGROUND`` back; subprocess writers use the defaults.
    """
    monkeypatch.setattr(wal, "ZERO_IN_BACKGROUND", False)
    monkeypatch.setattr(wal, "ZERO_CHUNK", ZERO_CHUNK)


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "db"


@pytest.fixture
def store(store_path: Path) -> Iterator[bt.BacktraceStore]:
    s = bt.BacktraceStore(store_path)
    yield s
    s.close()


@pytest.fixture
def orders(store: bt.BacktraceStore) -> bt.Table:
    return store.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=1_000)


def _pandas(df: pl.DataFrame) -> Any:
    return df.to_pandas()


def _pandas_pyarrow(df: pl.DataFrame) -> Any:
    return df.to_pandas(use_pyarrow_extension_array=True)


def _arrow_table(df: pl.DataFrame) -> Any:
    return df.to_arrow()


def _arrow_batch(df: pl.DataFrame) -> Any:
    batches = df.to_arrow().combine_chunks().to_batches()
    import pyarrow as pa

    return batches[0] if batches else pa.RecordBatch.from_pylist([], schema=df.to_arrow().schema)


FRAME_CONSTRUCTORS: dict[str, Callable[[pl.DataFrame], Any]] = {
    "polars": lambda df: df,
    "pandas": _pandas,
    "pandas[pyarrow]": _pandas_pyarrow,
    "pyarrow.Table": _arrow_table,
    "pyarrow.RecordBatch": _arrow_batch,
}


@pytest.fixture(params=list(FRAME_CONSTRUCTORS))
def frame_constructor(request: pytest.FixtureRequest) -> Callable[[pl.DataFrame], Any]:
    """Turns a Polars frame into each input kind bt_frames accepts (Narwhals' `constructor` idea)."""
    return FRAME_CONSTRUCTORS[request.param]


# What the fault-finding machinery covered in this run (crash rounds, scans...), printed at the end.
MACHINERY_REPORT: list[str] = []


def pytest_sessionfinish(session: pytest.Session) -> None:
    """In a pytest-xdist worker: hand this worker's report lines to the controller, which prints them."""
    from tests.helpers import workloads

    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["bt_frames_report"] = [list(workloads.REPORT), list(MACHINERY_REPORT)]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """In the pytest-xdist controller: gather what a worker's tests covered (see ``pytest_sessionfinish``)."""
    from tests.helpers import workloads

    report, machinery = getattr(node, "workeroutput", {}).get("bt_frames_report", [[], []])
    workloads.REPORT.extend(report)
    MACHINERY_REPORT.extend(machinery)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Counts of the power-loss and I/O-error tests (crash states, fault points), so CI logs show them."""
    from tests.helpers import workloads

    if workloads.REPORT:
        terminalreporter.section("power loss / I/O errors")
        for line in workloads.REPORT:
            terminalreporter.write_line(line)
    if MACHINERY_REPORT:
        terminalreporter.section("crash loop / concurrency")
        for line in MACHINERY_REPORT:
            terminalreporter.write_line(line)
