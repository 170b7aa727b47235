"""A failed file-system call commits nothing, and the store keeps working (append is exactly once).

For each workload (tests/helpers/workloads.py), each kind of call that goes
through the ``bt_frames.storage.fs`` seam, each k (every call of that kind the
workload makes) and each of ENOSPC and EIO, the workload runs with the k-th
call failing once (tests/helpers/faultfs.py). Then:

- an exception reaching the caller is a ``bt.BtError`` (for a failed system
  call, ``bt.StorageIOError``, also an ``OSError`` carrying the injected
  errno); a raw OSError is a failure;
- a step that raised committed nothing: its rows are absent from the open
  store *and* from a read-only view of the files; retried, it succeeds once
  (an append that raised but committed is a failure -- the caller retries it
  and gets a duplicate; a drop/create/flush/compact that raised but took
  effect is listed in the summary);
- once the fault is gone the workload's later steps succeed; at the end no
  ``*.tmp`` file is left in the store, a reopen shows every acknowledged
  append exactly once, and takes a further append.
"""

from __future__ import annotations

import errno
import os
import time
import traceback
import warnings
from pathlib import Path

import polars as pl
import pytest

import bt_frames as bt
from bt_frames.storage import fs
from tests.conftest import ORDERS_SCHEMA
from tests.helpers import workloads as wl
from tests.helpers.faultfs import KINDS, FaultFS

pytestmark = pytest.mark.powerloss

WORKLOADS = wl.workloads(wl.full_mode())
ERRNOS = {"ENOSPC": errno.ENOSPC, "EIO": errno.EIO}
_counts: dict[str, dict[str, int]] = {}


def _run_steps(w: wl.Workload, base: Path, ffs: FaultFS) -> tuple[wl.Ctx, list[str], list[str], wl.Model]:
    """Run the workload with ``ffs``: (ctx, problems, notes, the model of what is committed)."""
    base.mkdir()
    ctx = wl.Ctx(base / "db")
    model: wl.Model = {}
    for s in w.setup:
        s.run(ctx)
        model = s.effect(model)
    problems: list[str] = []
    notes: list[str] = []
    with warnings.catch_warnings(record=True), fs.use(ffs):
        warnings.simplefilter("always")  # a failed background block write warns on the next freeze: allowed
        for s in w.steps:
            try:
                s.run(ctx)
                model = s.effect(model)
                continue
            except Exception as e:
                err = e
            what = f"{s.label} raised {type(err).__name__}: {err}"
            if isinstance(err, OSError) and err.errno != ffs.err:
                problems.append(f"{what} (errno {err.errno}, not the injected {ffs.err})")
            if isinstance(err, OSError) and not isinstance(err, bt.BtError):
                problems.append(f"raw OSError from {s.label}: {_origin(err)}")
            elif not isinstance(err, bt.BtError):
                problems.append(f"{what}: neither a BtError nor an OSError\n{''.join(traceback.format_exception(err))}")
            after = s.effect(model)
            live = _live(ctx)
            disk = _disk(ctx.db)
            states = {"live": live, "on disk": disk}
            if all(v is None or wl.matches(w, v, model) for v in states.values()):
                try:  # nothing committed: the retry must succeed (the fault is gone)
                    s.run(ctx)
                    model = after
                except Exception as e2:
                    problems.append(f"{what}; the retry raised {type(e2).__name__}: {e2}")
                    break
            elif all(v is None or wl.matches(w, v, after) for v in states.values()):
                if s.append_id is not None:
                    problems.append(f"{what}, but the append was committed ({_show(w, states)}): a retry duplicates it")
                else:
                    notes.append(f"{s.label} raised but took effect ({type(err).__name__} {_origin(err)})")
                model = after
            else:
                problems.append(
                    f"{what}; state is neither before {wl.show_model(model)} nor after {wl.show_model(after)}: "
                    f"{_show(w, states)}"
                )
                break
    return ctx, problems, notes, model


def _origin(e: BaseException) -> str:
    tb = [f for f in traceback.extract_tb(e.__traceback__) if "/bt_frames/" in f.filename.replace(os.sep, "/")]
    inner = [f for f in tb if not f.filename.endswith("fs.py")]
    return f"{inner[-1].filename.rsplit('bt_frames/', 1)[1]}:{inner[-1].lineno} {inner[-1].name}" if inner else "?"


def _show(w: wl.Workload, states: dict[str, dict[str, pl.DataFrame] | None]) -> str:
    return "; ".join(f"{k}: {wl.show(w, v) if v is not None else '-'}" for k, v in states.items())


def _live(ctx: wl.Ctx) -> dict[str, pl.DataFrame] | None:
    s = ctx.store
    if s is None:
        return {}
    try:
        return wl.read_model(s)
    except bt.StoreClosedError:
        return None


def _disk(db: Path) -> dict[str, pl.DataFrame]:
    """What the files say now: a read-only view (takes no lock, writes nothing)."""
    if not db.is_dir() or not any(db.iterdir()):  # no folder, or an empty one: no store yet
        return {}
    with bt.open(db, read_only=True) as ro:
        return wl.read_model(ro)


def _check_end(w: wl.Workload, ctx: wl.Ctx, model: wl.Model) -> list[str]:
    problems: list[str] = []
    if ctx.store is not None:
        ctx.store.close()
    tmps = sorted(str(p.relative_to(ctx.db)) for p in ctx.db.rglob("*.tmp")) if ctx.db.is_dir() else []
    if tmps:
        problems.append(f"temporary files left in the store: {tmps}")
    with bt.open(ctx.db, delta_log=False) as store:  # as the workloads open it (tests/helpers/workloads.py)
        found = wl.read_model(store)
        if not wl.matches(w, found, model):
            problems.append(f"reopened: {wl.show(w, found)}, expected {wl.show_model(model)}")
        t = store.create_table("orders", ORDERS_SCHEMA, time_column="ts", **w.table_opts)
        before = t.scan().collect()
        extra = wl.extra_frame(w)
        t.append(extra)
        if not t.scan().collect().equals(pl.concat([before, extra])):
            problems.append("a further append after reopening is not read back")
    return problems


def _call_counts(w: wl.Workload, tmp_path: Path) -> dict[str, int]:
    if w.name not in _counts:
        ffs = FaultFS()
        _ctx, problems, _notes, _m = _run_steps(w, tmp_path / "dry", ffs)
        assert not problems, problems
        _counts[w.name] = dict(ffs.counts)
    return _counts[w.name]


@pytest.mark.parametrize("err_name", list(ERRNOS))
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("w", WORKLOADS, ids=[w.name for w in WORKLOADS])
def test_io_error(w: wl.Workload, kind: str, err_name: str, tmp_path: Path) -> None:
    t0 = time.perf_counter()
    n = _call_counts(w, tmp_path).get(kind, 0)
    if n == 0:
        if err_name == "ENOSPC":
            wl.REPORT.append(f"I/O errors {w.name} {kind}: no call of this kind reaches the fs seam")
        pytest.skip(f"{w.name} makes no {kind!r} call through bt_frames.storage.fs")
    failures: list[str] = []
    notes: set[str] = set()
    for k in range(1, n + 1):
        ffs = FaultFS(kind, k, ERRNOS[err_name], root=str(tmp_path / f"k{k}"))
        try:
            ctx, problems, run_notes, model = _run_steps(w, tmp_path / f"k{k}", ffs)
            if not any("retry raised" in p or "neither before" in p for p in problems):
                problems += _check_end(w, ctx, model)
        except Exception as e:
            problems = [f"the test harness hit {type(e).__name__}: {e}\n{''.join(traceback.format_exception(e))}"]
            run_notes = []
        notes.update(run_notes)
        if ffs.injected is None:
            problems.append(f"{kind} #{k} was never reached (this run made {ffs.counts[kind]} {kind} calls)")
        if problems:
            failures.append(f"- {err_name} at {ffs.injected or f'{kind} #{k}'}:\n    " + "\n    ".join(problems))
    secs = time.perf_counter() - t0
    wl.REPORT.append(
        f"I/O errors {w.name} {kind} {err_name}: {n} fault points, {len(failures)} failing, {secs:.1f}s"
        + "".join(f"\n    note: {x}" for x in sorted(notes))
    )
    if failures:
        pytest.fail(f"{len(failures)} of {n} failed {kind} calls in {w.name}:\n" + "\n".join(failures), pytrace=False)
