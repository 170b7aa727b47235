"""Workloads on the public API, with the expected contents after each step.

A workload is a list of steps (open the store, create/drop a table, append,
flush, compact, close). Every append is a fresh frame of ``make_orders``
rows with its own time range, so a table's contents decode back to the
list of appends it holds (``decode``): "appends 0,1,2,2" says at once what
was duplicated. ``expected[i]`` is the model (table -> append ids) once step
``i`` has committed; ``expected[-1]`` (the first entry) before any step.

Used by tests/test_power_loss.py (record a run, then recover every crash
state) and tests/test_io_errors.py (fail one call, check nothing half-done).
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

import bt_frames as bt
from tests.conftest import ORDERS_SCHEMA, make_orders

Model = dict[str, tuple[int, ...]]  # table -> append ids, in order; a missing key: no such table
STEP_US = 1_000_000
EXTRA_ROWS = 2  # rows of the check append made on a recovered store


@dataclass
class Ctx:
    db: Path
    store: bt.BacktraceStore | None = None


@dataclass
class Step:
    label: str
    run: Callable[[Ctx], object]
    effect: Callable[[Model], Model]
    append_id: int | None = None  # for appends: the id of its frame


@dataclass
class Workload:
    name: str
    setup: list[Step]  # run unrecorded / without faults before ``steps``
    steps: list[Step]
    frames: dict[int, pl.DataFrame]
    starts: dict[int, int] = field(default_factory=dict)  # append id -> global index of its first row
    table_opts: dict[str, Any] = field(default_factory=dict)

    def expected(self) -> list[Model]:
        """[model before the steps (after setup), model after step 0, after step 1, ...]."""
        m: Model = {}
        for s in self.setup:
            m = s.effect(m)
        out = [m]
        for s in self.steps:
            m = s.effect(m)
            out.append(m)
        return out

    def rows(self, ids: tuple[int, ...]) -> pl.DataFrame:
        if not ids:
            return pl.DataFrame(schema=ORDERS_SCHEMA)
        return pl.concat([self.frames[i] for i in ids])

    def decode(self, df: pl.DataFrame) -> str:
        """A table's rows as the appends they came from: '0,1,2(1/3 rows),2' ('?': rows of no append)."""
        starts = sorted((s, i) for i, s in self.starts.items())
        keys = [s for s, _ in starts]
        runs: list[list[int]] = []  # [append id, rows, last row index]
        for v in ((df.get_column("ts").dt.epoch("us") - _T0_US) // STEP_US).to_list():
            j = bisect.bisect_right(keys, v) - 1
            aid = starts[j][1] if j >= 0 and v < keys[j] + self.frames[starts[j][1]].height else -1
            if runs and runs[-1][0] == aid and v == runs[-1][2] + 1:
                runs[-1][1] += 1
                runs[-1][2] = v
            else:
                runs.append([aid, 1, v])
        parts = [_run(a, n, self.frames[a].height) if a >= 0 else f"?({n} rows)" for a, n, _ in runs]
        return ",".join(parts) or "(empty)"


_T0_US = int(make_orders(1).get_column("ts").dt.epoch("us")[0])


def _run(aid: int, n: int, full: int) -> str:
    return str(aid) if n == full else f"{aid}({n}/{full} rows)"


class Builder:
    """Builds a workload's steps; frames get consecutive, non-overlapping time ranges."""

    def __init__(self, name: str, **table_opts: Any) -> None:
        self.w = Workload(name, [], [], {}, table_opts=table_opts)
        self._next_row = 0
        self._target = self.w.steps

    def setup(self) -> Builder:
        self._target = self.w.setup
        return self

    def main(self) -> Builder:
        self._target = self.w.steps
        return self

    def _add(self, step: Step) -> Builder:
        self._target.append(step)
        return self

    def open(self) -> Builder:
        def run(c: Ctx) -> None:
            # no Delta log: derived, written by delta-rs outside the fs seam (no fault or power loss reaches it) and
            # never on the durability path; tests/test_delta.py covers it after a crash. Here it would only double
            # the power-loss states and the time
            c.store = bt.open(c.db, delta_log=False)

        return self._add(Step("open store", run, lambda m: m))

    def create(self, table: str = "orders") -> Builder:
        opts = self.w.table_opts

        def run(c: Ctx) -> None:
            assert c.store is not None
            c.store.create_table(table, ORDERS_SCHEMA, time_column="ts", **opts)

        return self._add(Step(f"create_table {table}", run, lambda m: {**m, table: m.get(table, ())}))

    def append(self, n: int, table: str = "orders") -> Builder:
        aid = len(self.w.frames)
        frame = make_orders(n, start=self._next_row, seed=7)
        self.w.frames[aid] = frame
        self.w.starts[aid] = self._next_row
        self._next_row += n

        def run(c: Ctx) -> None:
            assert c.store is not None
            c.store.table(table).append(frame)

        def effect(m: Model) -> Model:
            return {**m, table: (*m[table], aid)}

        return self._add(Step(f"append #{aid} ({n} rows) to {table}", run, effect, append_id=aid))

    def flush(self, table: str = "orders") -> Builder:
        return self._add(Step(f"flush {table}", lambda c: c.store.table(table).flush(), lambda m: m))  # type: ignore[union-attr]

    def compact(self, table: str = "orders") -> Builder:
        return self._add(Step(f"compact {table}", lambda c: c.store.table(table).compact(), lambda m: m))  # type: ignore[union-attr]

    def drop(self, table: str = "orders") -> Builder:
        def effect(m: Model) -> Model:
            return {k: v for k, v in m.items() if k != table}

        return self._add(Step(f"drop_table {table}", lambda c: c.store.drop_table(table), effect))  # type: ignore[union-attr]

    def close(self) -> Builder:
        return self._add(Step("close store", lambda c: c.store.close(), lambda m: m))  # type: ignore[union-attr]

    def build(self) -> Workload:
        return self.w


def workloads(full: bool = False) -> list[Workload]:
    """The five workloads; ``full`` makes each longer (more crash points / fault points)."""
    r = 2 if full else 1
    ws: list[Workload] = []

    # (a) small appends: 3 rows each, max_block_rows=6 -> a WAL rotation and a background block every 2 appends
    b = Builder("small_appends", max_block_rows=6).setup().open().create().main()
    for _ in range(5 * r):
        b.append(3)
    ws.append(b.append(2).close().build())

    # (b) a large append (>= 3 * max_block_rows rows) goes straight to blocks, between small ones
    b = Builder("large_append", max_block_rows=4).setup().open().create().main()
    b.append(2).append(13).append(1)
    if full:
        b.append(9).append(2)
    ws.append(b.close().build())

    # (c) compaction of small flushed blocks, then more appends
    b = Builder("compaction", max_block_rows=8).setup().open().create().main()
    for _ in range(3 * r):
        b.append(2).flush()
    ws.append(b.compact().append(1).close().build())

    # (d) drop a table with data, create it again, write to it
    b = Builder("drop_create", max_block_rows=4).setup().open().create().append(3).append(3).main()
    b.append(1).drop().create().append(2)
    if full:
        b.append(3).drop().create()
    ws.append(b.append(1).close().build())

    # (e) creating the store and its first table, first appends
    b = Builder("store_creation", max_block_rows=4).open().create().append(2).append(1)
    if full:
        b.append(3)
    ws.append(b.close().build())
    return ws


def full_mode() -> bool:
    return os.environ.get("BT_FRAMES_POWERLOSS_FULL", "") not in ("", "0")


# -- checking a store ---------------------------------------------------------


def read_model(store: bt.BacktraceStore) -> dict[str, pl.DataFrame]:
    return {name: store.table(name).scan().collect() for name in store.tables}


def matches(w: Workload, found: dict[str, pl.DataFrame], model: Model) -> bool:
    if set(found) != set(model):
        return False
    return all(found[t].equals(w.rows(ids)) for t, ids in model.items())


def show(w: Workload, found: dict[str, pl.DataFrame]) -> str:
    return "{" + ", ".join(f"{t}: [{w.decode(df)}]" for t, df in sorted(found.items())) + "}" if found else "{}"


def show_model(model: Model) -> str:
    return "{" + ", ".join(f"{t}: [{','.join(map(str, ids)) or '(empty)'}]" for t, ids in sorted(model.items())) + "}"


def extra_frame(w: Workload) -> pl.DataFrame:
    """Rows for a check append after the workload: after every workload row in time."""
    start = max(w.starts[i] + w.frames[i].height for i in w.frames) + 1_000
    return make_orders(EXTRA_ROWS, start=start, seed=99)


REPORT: list[str] = []  # lines for the terminal summary (tests/conftest.py prints them)
