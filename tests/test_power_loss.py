"""Every state a power loss can leave recovers to exactly the acknowledged appends (DESIGN.md §2).

Each workload (tests/helpers/workloads.py) runs once through a RecordingFS
(tests/helpers/powerloss.py). For every crash point of the trace and every
variant of what the disk kept (synced data only, everything, renames without
their data, one directory change more or less, torn or zero-filled unsynced
writes), the distinct trees are written out as real folders and opened with
``bt.open`` (recovery). The store must then hold every step acknowledged
before the crash -- each append exactly once, in order -- plus perhaps the
one step in flight (all or nothing), nothing else; and it must take a further
append, which a reopen still shows.

Stores are opened without a Delta log, as the workloads open them (see
``Builder.open`` in tests/helpers/workloads.py for why).

CI size: well under a minute per workload on 2 cores; BT_FRAMES_POWERLOSS_FULL=1
runs longer workloads. The counts are printed in the terminal summary.
"""

from __future__ import annotations

import shutil
import time
import traceback
from collections import defaultdict
from pathlib import Path

import polars as pl
import pytest

import bt_frames as bt
from bt_frames.storage import fs
from tests.conftest import ORDERS_SCHEMA
from tests.helpers import workloads as wl
from tests.helpers.powerloss import CrashPoint, CrashState, PowerLoss, RecordingFS, Trace

pytestmark = pytest.mark.powerloss

WORKLOADS = wl.workloads(wl.full_mode())
MAX_REPORTED = 12


def record(w: wl.Workload, base: Path) -> Trace:
    """Run the setup for real, then the steps through a RecordingFS rooted at ``base`` (the store's parent)."""
    base.mkdir()
    ctx = wl.Ctx(base / "db")
    for s in w.setup:
        s.run(ctx)
    rec = RecordingFS(base)
    with fs.use(rec):
        rec.start()
        for i, s in enumerate(w.steps):
            rec.mark(("begin", i))
            s.run(ctx)
            rec.mark(("ack", i))
    return rec.trace()


def allowed_at(trace: Trace, pt: CrashPoint, expected: list[wl.Model]) -> tuple[tuple[int, ...], str]:
    """Indexes into ``expected`` a crash at ``pt`` may recover to, and which step was in flight."""
    acked, begun = -1, -1
    for e in trace.events[: pt.event + 1] if pt.event >= 0 else []:
        if e.kind == "mark":
            what, i = e.label
            if what == "ack":
                acked = i
            else:
                begun = i
    if begun > acked:
        return (acked + 1, begun + 1), f"step {begun} in flight"
    return (acked + 1,), f"step {acked} acknowledged" if acked >= 0 else "no step begun"


def check_state(
    w: wl.Workload, root: Path, constraints: dict[tuple[int, ...], list[str]], expected: list[wl.Model]
) -> list[str]:
    """Recover the store under ``root``; the problems found (empty: fine)."""
    db = root / "db"
    problems: list[str] = []
    try:
        with bt.open(db, delta_log=False) as store:
            found = wl.read_model(store)
            for allowed, where in constraints.items():
                if not any(wl.matches(w, found, expected[i]) for i in allowed):
                    want = " or ".join(wl.show_model(expected[i]) for i in allowed)
                    problems.append(
                        f"recovered {wl.show(w, found)}, expected {want}; at {where[0]}"
                        + (f" (and {len(where) - 1} more crash points/variants)" if len(where) > 1 else "")
                    )
            t = store.create_table("orders", ORDERS_SCHEMA, time_column="ts", **w.table_opts)
            before = t.scan().collect()
            extra = wl.extra_frame(w)
            t.append(extra)
            after = t.scan().collect()
            if not after.equals(pl.concat([before, extra])):
                problems.append(f"after recovery, a further append gave [{w.decode(after)}]")
        with bt.open(db, delta_log=False) as again:
            reread = again.table("orders").scan().collect()
            if not reread.equals(after):
                problems.append(f"reopened after the further append: [{w.decode(reread)}], was [{w.decode(after)}]")
    except Exception as e:
        where = next(iter(constraints.values()))[0]
        tb = traceback.format_exception_only(type(e), e)[-1].strip()
        problems.append(f"recovery raised {tb[:300]}; at {where}")
    return problems


@pytest.mark.parametrize("w", WORKLOADS, ids=[w.name for w in WORKLOADS])
def test_power_loss(w: wl.Workload, tmp_path: Path) -> None:
    t0 = time.perf_counter()
    trace = record(w, tmp_path / "run")
    sim = PowerLoss(trace)
    expected = w.expected()
    states: dict[str, CrashState] = sim.states()
    where_of: dict[str, dict[tuple[int, ...], list[str]]] = {}
    by_point = {pt.snap: pt for pt in sim.points}
    for key, st in states.items():
        cons: dict[tuple[int, ...], list[str]] = defaultdict(list)
        for o in st.origins:
            pt = by_point[o.point]
            allowed, flight = allowed_at(trace, pt, expected)
            step = w.steps[int(flight.split()[1])].label if flight.startswith("step") else ""
            cons[allowed].append(f"{sim.describe_point(pt)} [{flight}: {step}] variant '{o.variant}'")
        where_of[key] = cons
    failures: list[tuple[str, list[str]]] = []
    for n, (key, st) in enumerate(states.items()):
        root = st.materialize(tmp_path / "states" / f"{n:05d}", sim.blobs)
        problems = check_state(w, root, where_of[key], expected)
        if problems:
            failures.append((str(root), problems))
        else:
            shutil.rmtree(root)
    untracked = sorted({f"{e.caller}: {e.detail}" for e in trace.untracked()})
    secs = time.perf_counter() - t0
    line = (
        f"power loss {w.name}: {len(trace.ops())} calls, {len(sim.points)} crash points, "
        f"{sim.variants_built} variants -> {len(states)} distinct states checked, "
        f"{len(failures)} failing, {secs:.1f}s; {len(untracked)} kinds of change bypassed the fs seam"
    )
    wl.REPORT.append(line)
    wl.REPORT.extend(f"    bypass: {u}" for u in untracked[:6])
    print(line)
    if failures:
        lines = [f"{len(failures)} of {len(states)} crash states of {w.name!r} recover wrongly:"]
        for root, problems in failures[:MAX_REPORTED]:
            lines.append(f"- {root}:")
            lines.extend(f"    {p}" for p in problems[:3])
        pytest.fail("\n".join(lines), pytrace=False)


def test_power_loss_summary() -> None:
    """Prints the counts (the terminal summary shows them too)."""
    for line in wl.REPORT:
        print(line)
