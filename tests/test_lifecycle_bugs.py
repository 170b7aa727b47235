"""Engine bugs found while writing the lifecycle CLI, notebook and benchmark (strict xfail until fixed).

Each test states what the design (``bt_frames/_lifecycle.py``) promises and fails today; when the engine
is fixed it passes, and ``strict=True`` makes that an XPASS failure: remove the marker then.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import bt_frames as bt
from tests.conftest import ORDERS_SCHEMA, make_orders


@pytest.mark.xfail(
    strict=True,
    reason="_lifecycle.upsert calls Series.is_in(<Series of the same dtype>) twice, which Polars 2 "
    "deprecates: every upsert prints a DeprecationWarning to stderr (from Rust, past Python's filters)",
)
def test_upsert_prints_no_deprecation_warning(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    with bt.BacktraceStore(tmp_path / "db") as store:
        t = store.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=1_000)
        t.append(make_orders(1_000))
        capfd.readouterr()
        t.upsert(make_orders(2, start=999, seed=1), on="ts")  # one key matches, one is new
        err = capfd.readouterr().err
    assert "DeprecationWarning" not in err, err
