"""The SIGKILL crash loop (tests/crash_loop.py) at CI size: 100 rounds on one store, zero failures.

The children append, flush, compact, delete and upsert whole batches, and vacuum; every
acknowledged operation must survive each kill, and one killed in flight must have happened
wholly or not at all.

Full size: ``BT_FRAMES_CRASH_ROUNDS=1000 pytest tests/test_crash_loop.py`` or
``python tests/crash_loop.py --rounds 1000``. ``BT_FRAMES_CRASH_SEED`` picks
the seed (the report, shown on failure, names it).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import MACHINERY_REPORT
from tests.crash_loop import FAULTS, run_loop

ROUNDS = int(os.environ.get("BT_FRAMES_CRASH_ROUNDS", "100"))
SEED = int(os.environ.get("BT_FRAMES_CRASH_SEED", "20240601"))

pytestmark = [pytest.mark.crash, pytest.mark.timeout(max(900, 4 * ROUNDS))]


def test_crash_loop(tmp_path: Path) -> None:
    """Every round recovers the last kill and finds exactly what was acknowledged, in every durability mode."""
    report = run_loop(ROUNDS, seed=SEED, path=tmp_path, pace=0.3 if ROUNDS <= 100 else 1.0)
    print(report.text())  # shown on failure
    MACHINERY_REPORT.extend(report.text().splitlines())
    assert report.failures == []
    assert report.rounds == ROUNDS
    kills = sum(report.kills.values())
    assert kills + report.clean_exits == ROUNDS
    assert kills >= 0.85 * ROUNDS, report.kills
    # Both kinds of kill happen, and the exact kill points cover a good part of the list.
    assert report.kills["timer"] >= 0.3 * ROUNDS, report.kills
    assert report.kills["fault"] >= 0.2 * ROUNDS, report.kills
    fired = {k.removeprefix("fault ") for k in report.points if k.startswith("fault ")}
    assert len(fired) >= min(len(FAULTS) // 2, ROUNDS // 8), sorted(fired)
    assert set(report.durability) == {"fsync", "batch", "none"}
    # Every round's child recovered and checked the store (less the few killed before their check).
    assert report.recoveries >= 0.8 * ROUNDS
    assert report.appends_acked > 10 * ROUNDS
    assert report.rows_verified > report.final_rows
    assert report.in_flight > 0
    assert report.final_parts > 0, "no multi-part direct-to-blocks append survived into the final store"
    # The lifecycle operations ran, were acknowledged and were killed in flight.
    assert report.ops_acked["delete"] > 0, report.ops_acked
    assert report.batches_deleted > 0
    assert report.ops_acked["upsert"] > 0, report.ops_acked
    assert report.batches_upserted > 0
    assert report.ops_acked["vacuum"] > 0, report.ops_acked
    assert sum(report.ops_in_flight.values()) > 0, report.ops_in_flight
