"""Lifecycle operations under crashes, power loss and failed file-system calls: all or nothing, exactly once.

Each op (delete, update, upsert, retention, compaction, vacuum; the table has
blocks, retired blocks and hot rows, so the op freezes first) is checked
against its model (tests/helpers/lifecycle_ops.py) four ways:

- SIGKILL of a real child process (tests/helpers/lifecycle_child.py) right
  before each file-system call the op makes through the ``bt_frames.storage.fs``
  seam (and half-way through each write), and right after it returned: a
  read-only reader opened first and then the writer's recovery both see the
  table as before the op or as after it, the same one; ``verify()`` passes, no
  temporary file is left, a retry gives "after" exactly once, and the table
  takes an append;
- SIGKILL at random moments of a long random sequence of ops, round after
  round on one store: every acknowledged op applied once, the one in flight
  wholly or not at all;
- power loss (tests/helpers/powerloss.py): every state a power loss can leave
  after each file-system call recovers to before or after the op in flight,
  with every acknowledged op;
- an I/O error (ENOSPC, EIO) at the k-th call of each kind: the op raises a
  BtError and changes nothing (live, on disk, after a reopen) -- or returns,
  having committed; a retry applies it once; files the store did not create
  are never deleted.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import bt_frames as bt
from bt_frames.storage import fs
from tests.helpers import lifecycle_ops as lo
from tests.helpers.faultfs import KINDS as FAULT_KINDS
from tests.helpers.faultfs import FaultFS
from tests.helpers.powerloss import PowerLoss, RecordingFS
from tests.helpers.procs import listing, tmp_files

CHILD = Path(__file__).parent / "helpers" / "lifecycle_child.py"
ALL_POINTS = os.environ.get("BT_FRAMES_LIFECYCLE_ALL_POINTS", "") not in ("", "0")
MAX_POINTS = 4  # kill points per op at CI size (evenly spread; BT_FRAMES_LIFECYCLE_ALL_POINTS=1: every one)
MAX_FAULTS = 6  # failing calls per kind and op at CI size (evenly spread, the last ones always; ALL_POINTS: every)
# crash states a power-loss run checks at CI size (evenly spread over all of them, the last ones always):
# BT_FRAMES_LIFECYCLE_ALL_POINTS=1 checks every state
POWER_STATES = 100
# how every store here is opened: retired blocks go at once; no Delta log, which is derived, written by delta-rs
# outside the fs seam (no fault or power loss reaches it) and never on the durability path -- tests/test_delta.py
# kills a writer between a version and its Delta commit and damages the log; here it would only double the states
OPEN: dict[str, Any] = {"retired_grace": 0, "delta_log": False}
FOREIGN = ("blocks/notes.user.txt", "user-readme.txt")  # files the store did not create: never deleted

# one op of each kind, as the sweeps run it on the template table (400 rows at 1 s, blocks of 40, 7 hot)
OPS: dict[str, dict[str, Any]] = {
    "delete": {"kind": "delete", "where": ["ts_between", 100, 185]},  # whole blocks and two partial ones
    "update": {"kind": "update", "frame": [[150, 30, 5_000_000, 123]]},
    "upsert-id": {"kind": "upsert", "on": ["id"], "frame": [[50, 10, 0, 77], [401, 3, 9_000_000, 88]]},
    "upsert-ts-symbol": {"kind": "upsert", "on": ["ts", "symbol"], "frame": [[200, 45, 0, 66], [401, 2, 8_000, 5]]},
    "retention": {"kind": "retention"},
    "compact": {"kind": "compact", "target": 200},
    "vacuum": {"kind": "vacuum"},
}


def make_template(base: Path) -> tuple[Path, pl.DataFrame]:
    """A store whose table has blocks, retired blocks (a delete) and hot rows; its contents."""
    db = base / "db"
    with bt.open(db, **OPEN) as s:
        m = lo.setup(s)
        t = s.table(lo.TABLE)
        op = {"kind": "delete", "where": ["id_mod", 17, 0]}
        lo.run(t, op)
        m = lo.model(m, op)
        t.append(lo.rows(400, 5))  # hot rows: every op freezes them first
        m = pl.concat([m, lo.rows(400, 5)])
        assert t.hot_rows == 5
        assert_frame_equal(t.scan().collect(), m)
    for f in FOREIGN:
        (db / lo.TABLE / f).write_text("not the store's")
    return db, m


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pl.DataFrame]:
    return make_template(tmp_path_factory.mktemp("template"))


def copy_of(template: tuple[Path, pl.DataFrame], dest: Path) -> Path:
    shutil.copytree(template[0], dest)
    return dest


def run_child(
    db: Path, ops: list[dict[str, Any]], start: int, *extra: str, timeout: float = 120
) -> tuple[int, list[str]]:
    import subprocess
    import sys

    spec = db.parent / f"ops-{db.name}.json"
    spec.write_text(json.dumps(ops))
    out = subprocess.run(
        [sys.executable, str(CHILD), "--path", str(db), "--ops", str(spec), "--start", str(start), *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "BT_FRAMES_PROGRESS": "0"},
        check=False,
    )
    lines = out.stdout.splitlines() if out.stdout.endswith("\n") else out.stdout.splitlines()[:-1]
    if out.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"child failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return out.returncode, lines


def recover_and_check(db: Path, before: pl.DataFrame, after: pl.DataFrame, op: dict[str, Any], what: str) -> str:
    """Reader first, then the writer; both see before or after, the same one. Returns which."""
    on_disk = listing(db)
    with bt.open(db, read_only=True) as ro:
        seen = ro.table(lo.TABLE).scan().collect()
    assert listing(db) == on_disk, f"{what}: a read-only open changed files"
    with bt.open(db, **OPEN) as s:
        t = s.table(lo.TABLE)
        got = t.scan().collect()
        same(got, seen, f"{what}: the writer's recovery vs the reader's view")
        outcome = "after" if got.equals(after) else "before" if got.equals(before) else None
        assert outcome is not None, (
            f"{what}: recovered {got.height} rows, neither before ({before.height}) nor after ({after.height})\n"
            f"{recovery_summary(t)}"
        )
        report = s.verify()
        assert report.ok, f"{what}: {report!r}"
        assert tmp_files(db) == [], f"{what}: temporary files left after the writer's open"
        for v in t.versions["version"].to_list():  # every version reads, or says it was vacuumed
            try:
                t.scan(as_of=v).select(pl.len()).collect()
                message = "vacuum"
            except bt.BtError as e:
                message = str(e)
            assert "vacuum" in message, f"{what}: as_of={v}: {message}"
        if outcome == "before" and not before.equals(after):
            lo.run(t, op)  # the retry applies it once
            same(t.scan().collect(), after, f"{what}: retried")
        extra = lo.rows(100_000, 3)
        t.append(extra)
        same(t.scan().collect(), pl.concat([after, extra]), f"{what}: appended after")
    for f in FOREIGN:
        assert (db / lo.TABLE / f).exists(), f"{what}: recovery deleted {f}, a file the store did not create"
    return outcome


def same(got: pl.DataFrame, want: pl.DataFrame, what: str) -> None:
    try:
        assert_frame_equal(got, want)
    except AssertionError as e:
        raise AssertionError(f"{what}: {e}") from None


def recovery_summary(t: bt.Table) -> str:
    return t.recovery.summary()


# -- SIGKILL at each file-system call of an op -------------------------------------------------------------------


def _spread(ks: list[int], most: int) -> list[int]:
    """At CI size, ``most`` of ``ks`` evenly spread plus the last 4 (around the commit); all with ALL_POINTS."""
    if ALL_POINTS or len(ks) <= most:
        return ks
    step = len(ks) / most
    return sorted({ks[int(i * step)] for i in range(most)} | set(ks[-4:]))


def _points(n: int) -> list[str]:
    """Kill points for an op making ``n`` calls: before each (and half-way through), and after it returned."""
    ks = _spread(list(range(1, n + 1)), MAX_POINTS)
    return [str(k) for k in ks] + [f"{k}:half" for k in ks[::4]] + ["after"]


@pytest.mark.crash
@pytest.mark.parametrize("name", list(OPS))
def test_kill_at_each_file_operation(template: tuple[Path, pl.DataFrame], tmp_path: Path, name: str) -> None:
    op = OPS[name]
    before = template[1]
    after = lo.model(before, op)
    assert name in ("compact", "vacuum") or not after.equals(before), "the op must change something"
    rc, lines = run_child(copy_of(template, tmp_path / "dry"), [op], 0, "--count-calls")
    assert rc == 0
    n = int(next(ln for ln in lines if ln.startswith("calls")).split()[1])
    assert n >= 3, f"{name} made only {n} file-system calls"
    outcomes: dict[str, list[str]] = defaultdict(list)
    for point in _points(n):
        db = copy_of(template, tmp_path / f"p{point.replace(':', '-')}")
        rc, lines = run_child(db, [op], 0, "--die-at", point)
        assert rc == -signal.SIGKILL, f"{name}: the kill at {point} did not fire: {lines}"
        assert "ack 0" not in lines
        outcomes[recover_and_check(db, before, after, op, f"{name} killed at {point}/{n}")].append(point)
        shutil.rmtree(db)
    print(f"{name}: {n} calls; outcomes {dict(outcomes)}")
    if not before.equals(after):
        assert outcomes["before"], f"{name}: no kill point left the table as before the op"
        assert "1" in outcomes["before"], "a kill before the op's first call changed the table"
        assert "after" in outcomes["after"], "an op that returned was not durable"


# -- SIGKILL at random moments of a long sequence ------------------------------------------------------------------


@pytest.mark.crash
def test_kill_9_at_random_moments(tmp_path: Path) -> None:
    rng = random.Random(20150601)
    base = tmp_path / "t"
    base.mkdir()
    db, m = make_template(base)
    ops = lo.sequence(7, 2_000)  # longer than ten rounds of a child can run through
    models = [m]
    for op in ops:
        models.append(lo.model(models[-1], op))
    done = 0  # ops the store holds
    acked_total = 0
    rounds = 10
    kinds_in_flight: set[str] = set()
    for rnd in range(rounds):
        import subprocess
        import sys

        spec = tmp_path / "ops.json"
        spec.write_text(json.dumps(ops))
        proc = subprocess.Popen(
            [sys.executable, str(CHILD), "--path", str(db), "--ops", str(spec), "--start", str(done)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "BT_FRAMES_PROGRESS": "0"},
        )
        time.sleep(rng.uniform(1.5, 4.0))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
        text = out.decode()
        lines = text.splitlines() if text.endswith("\n") else text.splitlines()[:-1]
        acked = [int(ln.split()[1]) for ln in lines if ln.startswith("ack ")]
        tried = [int(ln.split()[1]) for ln in lines if ln.startswith("try ")]
        assert acked == list(range(done, done + len(acked)))
        acked_total += len(acked)
        last = done + len(acked)  # ops the store must hold at least
        in_flight = tried[-1] if tried and tried[-1] == last else None
        if in_flight is not None:
            kinds_in_flight.add(ops[in_flight]["kind"])
        assert last + 1 < len(models), "the sequence ran out: make it longer"
        before, after = models[last], models[last + 1]
        what = f"round {rnd}: {len(acked)} acked, in flight {in_flight} {ops[last]}"
        with bt.open(db, read_only=True) as ro:
            seen = ro.table(lo.TABLE).scan().collect()
        with bt.open(db, **OPEN) as s:
            got = s.table(lo.TABLE).scan().collect()
            same(got, seen, f"{what}: writer vs reader")
            assert s.verify().ok
        if got.equals(before) and (in_flight is None or not got.equals(after)):
            done = last
        else:
            assert in_flight is not None, f"{what}: an op never started was applied"
            same(got, after, what)
            done = last + 1
        assert tmp_files(db) == []
    print(f"{rounds} rounds, {acked_total} ops acknowledged, {done} applied; in flight at kills: {kinds_in_flight}")
    assert acked_total >= rounds, "the children barely ran an op before being killed"


# -- power loss ------------------------------------------------------------------------------------------------


def _allowed(trace: Any, pt: Any) -> tuple[int, ...]:
    acked, begun = -1, -1
    for e in trace.events[: pt.event + 1] if pt.event >= 0 else []:
        if e.kind == "mark":
            what, i = e.label
            if what == "ack":
                acked = i
            else:
                begun = i
    return (acked + 1, begun + 1) if begun > acked else (acked + 1,)


POWER_STEPS: dict[str, list[str]] = {
    "delete+update": ["delete", "update"],
    "upserts": ["upsert-id", "upsert-ts-symbol"],
    "retention+compact+vacuum": ["retention", "compact", "vacuum"],
}


@pytest.mark.powerloss
@pytest.mark.parametrize("name", list(POWER_STEPS))
def test_power_loss_during_lifecycle_ops(tmp_path: Path, name: str) -> None:
    base = tmp_path / "run"
    base.mkdir()
    db, m = make_template(base)
    steps = [OPS[s] for s in POWER_STEPS[name]]
    expected = [m]
    for op in steps:
        expected.append(lo.model(expected[-1], op))
    rec = RecordingFS(base)
    with bt.open(db, **OPEN) as s:
        t = s.table(lo.TABLE)
        with fs.use(rec):
            rec.start()
            for i, op in enumerate(steps):
                rec.mark(("begin", i))
                lo.run(t, op)
                rec.mark(("ack", i))
    trace = rec.trace()
    sim = PowerLoss(trace)
    by_point = {pt.snap: pt for pt in sim.points}
    failures = []
    states = sim.states()
    items = list(states.items())
    if not ALL_POINTS and len(items) > POWER_STATES:  # CI size: spread over the run, and its end
        step = len(items) / POWER_STATES
        keep = {int(i * step) for i in range(POWER_STATES)} | set(range(len(items) - 10, len(items)))
        items = [it for i, it in enumerate(items) if i in keep]
    for n, (_key, st) in enumerate(items):
        allowed = set()
        for o in st.origins:
            allowed.add(_allowed(trace, by_point[o.point]))
        root = st.materialize(tmp_path / "states" / f"{n:05d}", sim.blobs)
        try:
            with bt.open(root / "db", **OPEN) as s:
                got = s.table(lo.TABLE).scan().collect()
                bad = [a for a in allowed if not any(got.equals(expected[i]) for i in a)]
                if bad:
                    failures.append(f"{root}: {got.height} rows, allowed models {bad} ({st.origins[0].variant})")
                    continue
                t = s.table(lo.TABLE)
                t.append(lo.rows(100_000, 2))
                assert t.scan().collect().height == got.height + 2
        except Exception as e:
            failures.append(f"{root}: recovery raised {type(e).__name__}: {str(e)[:300]}")
            continue
        shutil.rmtree(root)
    print(f"power loss {name}: {len(trace.ops())} calls, {len(sim.points)} points, {len(states)} states, "
          f"{len(items)} checked")  # fmt: skip
    assert len(states) > 10
    assert not failures, f"{len(failures)} of {len(states)} crash states recover wrongly:\n" + "\n".join(failures[:10])


# -- I/O errors ------------------------------------------------------------------------------------------------

ERRNOS = {"ENOSPC": errno.ENOSPC, "EIO": errno.EIO}


def _read(db: Path) -> pl.DataFrame:
    with bt.open(db, read_only=True) as ro:
        return ro.table(lo.TABLE).scan().collect()


@pytest.mark.powerloss
@pytest.mark.parametrize("err", list(ERRNOS))
@pytest.mark.parametrize("name", list(OPS))
def test_io_error_during_op(template: tuple[Path, pl.DataFrame], tmp_path: Path, name: str, err: str) -> None:
    op = OPS[name]
    before = template[1]
    after = lo.model(before, op)
    counter = FaultFS()
    db = copy_of(template, tmp_path / "dry")
    with bt.open(db, **OPEN) as s:
        t = s.table(lo.TABLE)
        with fs.use(counter):
            lo.run(t, op)
    problems: list[str] = []
    points = 0
    for kind in FAULT_KINDS:
        for k in _spread(list(range(1, counter.counts.get(kind, 0) + 1)), MAX_FAULTS):
            points += 1
            db = copy_of(template, tmp_path / f"{kind}-{k}")
            ffs = FaultFS(kind, k, ERRNOS[err], root=str(db))
            s = bt.open(db, **OPEN)
            t = s.table(lo.TABLE)
            raised: BaseException | None = None
            with fs.use(ffs):
                try:
                    lo.run(t, op)
                except Exception as e:
                    raised = e
            where = f"{err} at {ffs.injected or f'{kind} #{k}'}"
            live = t.scan().collect()
            disk = _read(db)
            if raised is not None:
                if not isinstance(raised, bt.BtError):
                    problems.append(f"{where}: raised {type(raised).__name__}, not a BtError: {raised}")
                if not (live.equals(before) and disk.equals(before)):
                    problems.append(
                        f"{where}: raised {type(raised).__name__} but changed the table "
                        f"(live {live.height}, disk {disk.height}, before {before.height}, after {after.height})"
                    )
                else:
                    try:
                        lo.run(t, op)  # the fault is gone: the retry applies it once
                    except Exception as e:
                        problems.append(f"{where}: the retry raised {type(e).__name__}: {e}")
            elif not (live.equals(after) and disk.equals(after)):
                problems.append(f"{where}: returned, but live {live.height} / disk {disk.height} rows != after")
            s.close()
            with bt.open(db, **OPEN) as again:
                t2 = again.table(lo.TABLE)
                got = t2.scan().collect()
                if not got.equals(after):
                    problems.append(f"{where}: reopened: {got.height} rows, expected {after.height} (after the op)")
                if not again.verify().ok:
                    problems.append(f"{where}: verify() failed after the reopen")
                t2.append(lo.rows(100_000, 2))
            for f in FOREIGN:
                if not (db / lo.TABLE / f).exists():
                    problems.append(f"{where}: {f}, a file the store did not create, was deleted")
            if tmp_files(db):
                problems.append(f"{where}: temporary files left: {tmp_files(db)}")
            if ffs.injected is None:
                problems.append(f"{kind} #{k} was never reached")
            shutil.rmtree(db)
    print(f"I/O errors {name} {err}: {points} fault points, {len(problems)} problems")
    assert points > 5
    assert not problems, f"{len(problems)} of {points} fault points:\n" + "\n".join(problems[:15])
