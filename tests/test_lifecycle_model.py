"""Model test of the lifecycle operations: random op sequences against a plain Polars frame.

A Hypothesis state machine appends, deletes (random predicates on time, symbol
and qty, nulls included, as expressions and as DNF tuples), updates, upserts
(``on=["ts", "symbol"]`` and ``on=["id"]``), flushes, compacts, vacuums and
reopens a table, and applies each operation to a Polars frame by the ROW ORDER
RULE of ``bt_frames/_lifecycle.py``'s module docstring. It also changes the
schema: ``add_columns`` (the new columns null for earlier rows) and
``append(..., schema_mode="merge")`` of frames carrying a new column, ``qty``
widened from Int32 (as created) to Int64, and/or lacking a column (null for
their rows); later frames carry every column of the schema of the moment.
After every step:

- ``t.scan().collect()`` equals the model exactly, order included, and
  ``len(t)`` its height;
- ``t.versions`` numbers its versions 1..n, its times never go back, the rows
  of each version differ from the previous one's by ``rows_added -
  rows_removed``, and the history recorded earlier is unchanged;
- every version an operation committed still reads (``scan(as_of=v)``) as the
  model did right after it (the operation froze the hot rows first, so the
  version held every row), with the columns and types the table had then
  (a schema change's version: the earlier rows with the new schema) -- until
  a vacuum deletes its blocks, after which it raises a BtError that says so.

CI size: 40 examples. ``BT_FRAMES_MODEL_EXAMPLES=2000`` runs a long one.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import bt_frames as bt
from tests.helpers.lifecycle_ops import model_delete, model_update, model_upsert

pytestmark = pytest.mark.hypothesis

EXAMPLES = int(os.environ.get("BT_FRAMES_MODEL_EXAMPLES", "40"))
STEPS = int(os.environ.get("BT_FRAMES_MODEL_STEPS", "30"))

SCHEMA = pl.Schema(
    {
        "id": pl.Int64(),
        "ts": pl.Datetime("us", "UTC"),
        "symbol": pl.String(),
        "qty": pl.Int32(),  # Int32 at creation: a merge append of an Int64 qty widens it
        "price": pl.Float64(),
    }
)
T0 = dt.datetime(2015, 3, 1, tzinfo=dt.UTC)
SYMBOLS = ["A", "B", "C", None]
SPAN_S = 40  # seconds of time values: small, so updates and (ts, symbol) keys collide


def at(s: int) -> dt.datetime:
    return T0 + dt.timedelta(seconds=s)


def frame(rows: list[tuple[Any, ...]]) -> pl.DataFrame:
    return pl.DataFrame(
        [(i, at(s), sym, q, p) for i, s, sym, q, p in rows], schema=SCHEMA, orient="row"
    )  # fmt: skip


# -- the model: the ROW ORDER RULE of bt_frames/_lifecycle.py -------------------------------------------------


def extra_values(name: str, dtype: pl.DataType, j: int) -> pl.Expr:
    """The values of a column added after creation, for new rows: a function of ``id`` (null ids: null)."""
    i = pl.col("id")
    if dtype == pl.Int64:
        e = pl.when(i % 4 != 0).then(i * 7 + j)
    elif dtype == pl.Float64:
        e = i.cast(pl.Float64) / 2 + j
    elif dtype == pl.String:
        e = pl.format("s{}", i % 3)
    else:
        e = i % 2 == 0
    return e.cast(dtype).alias(name)


EXTRA_DTYPES = [pl.Int64(), pl.String(), pl.Float64(), pl.Boolean()]
MAX_EXTRA = 4  # columns added after creation


def has_duplicate_keys(df: pl.DataFrame, on: list[str]) -> bool:
    keyed = df.filter(pl.all_horizontal([pl.col(k).is_not_null() for k in on])).select(on)
    return bool(keyed.is_duplicated().any())


# -- predicates: (what delete() gets, the equivalent expression for the model) --------------------------------


def predicates(st: Any) -> Any:
    sec = st.integers(-2, SPAN_S + 2)
    sym = st.sampled_from(["A", "B", "C"])
    qty = st.integers(-1, 10)

    def pair(e: pl.Expr) -> tuple[Any, pl.Expr]:
        return e, e

    atoms = st.one_of(
        sec.map(lambda s: pair(pl.col("ts") < at(s))),
        sec.map(lambda s: pair(pl.col("ts") >= at(s))),
        st.tuples(sec, sec).map(lambda ab: pair(pl.col("ts").is_between(at(min(ab)), at(max(ab))))),
        sym.map(lambda s: pair(pl.col("symbol") == s)),
        st.lists(sym, min_size=1, max_size=2).map(lambda ss: pair(pl.col("symbol").is_in(ss))),
        st.just(pair(pl.col("symbol").is_null())),
        st.just(pair(pl.col("qty").is_null())),
        st.just(pair(pl.lit(True))),  # what delete's error message says to pass to delete every row
        st.just(pair(pl.lit(False))),
        qty.map(lambda q: pair(pl.col("qty") > q)),
        qty.map(lambda q: pair(pl.col("qty") == q)),
        qty.map(lambda q: pair(~(pl.col("qty") <= q))),  # null stays null: kept
        # DNF tuples, as pyarrow's filters=
        sym.map(lambda s: ([("symbol", "==", s)], pl.col("symbol") == s)),
        qty.map(lambda q: ([("qty", ">", q)], pl.col("qty") > q)),
        sec.map(lambda s: ([("ts", "<", at(s))], pl.col("ts") < at(s))),
        st.tuples(sym, qty).map(
            lambda sq: (
                [[("symbol", "==", sq[0])], [("qty", "<=", sq[1])]],
                (pl.col("symbol") == sq[0]) | (pl.col("qty") <= sq[1]),
            )
        ),
    )  # fmt: skip

    def combine(a: tuple[Any, pl.Expr], b: tuple[Any, pl.Expr], how: str) -> tuple[Any, pl.Expr]:
        ea, eb = a[1], b[1]
        e = (ea & eb) if how == "and" else (ea | eb)
        return e, e

    two = st.tuples(atoms, atoms, st.sampled_from(["and", "or"])).map(lambda t: combine(*t))
    return st.one_of(atoms, atoms, two)


# -- the state machine ------------------------------------------------------------------------------------------


def _machine() -> Any:
    from hypothesis import strategies as st
    from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

    row_parts = st.tuples(
        st.integers(0, SPAN_S),
        st.sampled_from(SYMBOLS),
        st.one_of(st.none(), st.integers(0, 9)),
        st.sampled_from([0.5, 1.25, -3.0, 100.0]),
    )

    class Lifecycle(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.dir = Path(tempfile.mkdtemp(prefix="bt-lifecycle-model-"))
            self.mbr = 5
            self.store = bt.open(self.dir / "db", retired_grace=0)
            self.t = self.store.create_table("m", SCHEMA, time_column="ts", max_block_rows=self.mbr, auto_compact=False)
            self.model = pl.DataFrame(schema=SCHEMA)
            self.next_id = 0
            self.extra = 0  # columns added so far (named a0, m1, ...)
            self.recorded: dict[int, pl.DataFrame] = {}  # version -> the model right after its operation
            self.history = self.t.versions

        def teardown(self) -> None:
            try:
                self.store.close()
            finally:
                shutil.rmtree(self.dir, ignore_errors=True)

        # -- helpers ----------------------------------------------------------
        def _new_rows(self, parts: list[tuple[Any, ...]], *, null_id: bool = False) -> pl.DataFrame:
            """New rows with the table's current schema (added columns: ``extra_values``)."""
            rows = []
            for s, sym, q, p in parts:
                rows.append((None if null_id and s % 5 == 0 else self.next_id, s, sym, q, p))
                self.next_id += 1
            df = frame(rows)
            extras = [extra_values(n, d, j) for j, (n, d) in enumerate(self.model.schema.items()) if n not in SCHEMA]
            return df.with_columns(extras).select(self.model.columns).cast(dict(self.model.schema))

        def _newest(self, *operations: str) -> int:
            v = self.t.versions.filter(pl.col("operation").is_in(list(operations)))["version"]
            return int(v.max()) if v.len() else 0

        def _schema_changed(self, operations: tuple[str, ...], before: int) -> None:
            """One new version of ``operations`` (a schema change) holds every row with the new schema."""
            v = self._newest(*operations)
            assert v > before, f"no new {operations} version:\n{self.t.versions}"
            row = self.t.versions.filter(pl.col("version") == v).row(0, named=True)
            assert (row["rows_added"], row["rows_removed"], row["rows"]) == (0, 0, self.model.height), row
            self.recorded[v] = self.model

        def _ops_versions(self, operation: str) -> int:
            v = self.t.versions
            return v.filter(pl.col("operation") == operation).height

        def _committed(self, change: Any, operation: str, before: pl.DataFrame, *, added: int, removed: int) -> None:
            assert change.operation == operation
            assert (change.rows_added, change.rows_removed) == (added, removed), change
            if added == 0 and removed == 0:
                assert change.version == 0, f"{operation} changed nothing yet committed {change}"
                return
            assert change.version > 0, change
            row = self.t.versions.filter(pl.col("version") == change.version).row(0, named=True)
            assert row["operation"] == operation
            assert (row["rows_added"], row["rows_removed"]) == (added, removed), row
            assert row["rows"] == self.model.height, "a lifecycle version holds every row (hot rows frozen first)"
            assert self.model.height - before.height == added - removed
            self.recorded[change.version] = self.model

        # -- rules ------------------------------------------------------------
        @rule(parts=st.lists(row_parts, min_size=0, max_size=12))
        def append(self, parts: list[tuple[Any, ...]]) -> None:
            df = self._new_rows(parts)
            lsn = self.t.append(df)
            assert (lsn is None) == (df.height == 0)
            self.model = pl.concat([self.model, df])

        @precondition(lambda self: self.extra < MAX_EXTRA)
        @rule(dtypes=st.lists(st.sampled_from(EXTRA_DTYPES), min_size=1, max_size=2))
        def add_columns(self, dtypes: list[pl.DataType]) -> None:
            new = {}
            for d in dtypes:
                new[f"a{self.extra}"] = d
                self.extra += 1
            before = self._newest("add_columns", "widen")
            self.t.add_columns(new)
            self.model = self.model.with_columns(pl.lit(None, dtype=d).alias(n) for n, d in new.items())
            assert self.t.schema == self.model.schema, (self.t.schema, self.model.schema)
            self._schema_changed(("add_columns",), before)

        @rule(
            parts=st.lists(row_parts, min_size=0, max_size=8),
            new_col=st.one_of(st.none(), st.sampled_from(EXTRA_DTYPES)),
            widen=st.booleans(),
            drop=st.sampled_from([None, None, "price", "symbol"]),
        )
        def append_merge(
            self, parts: list[tuple[Any, ...]], new_col: pl.DataType | None, widen: bool, drop: str | None
        ) -> None:
            """append(schema_mode="merge"): a new column (at the end), qty as Int64 and/or a column missing."""
            df = self._new_rows(parts)
            old = self.model.schema
            added: dict[str, pl.DataType] = {}
            if new_col is not None and self.extra < MAX_EXTRA:
                name = f"m{self.extra}"
                self.extra += 1
                df = df.with_columns(extra_values(name, new_col, len(df.columns)))
                added[name] = new_col
            if widen:
                df = df.with_columns(pl.col("qty").cast(pl.Int64))
            if drop is not None:
                df = df.drop(drop)
            schema = pl.Schema({**{n: (pl.Int64() if widen and n == "qty" else d) for n, d in old.items()}, **added})
            before = self._newest("add_columns", "widen")
            lsn = self.t.append(df, schema_mode="merge")
            assert (lsn is None) == (df.height == 0)
            assert self.t.schema == schema, (self.t.schema, schema)
            if schema != old:  # the earlier rows, as the schema change's version holds them
                widened = self.model.cast({n: d for n, d in schema.items() if n in old})
                self.model = widened.with_columns(pl.lit(None, dtype=d).alias(n) for n, d in added.items())
                self._schema_changed(("add_columns", "widen"), before)
            else:
                assert self._newest("add_columns", "widen") == before, "a merge that changed nothing made a version"
            filled = df.with_columns(pl.lit(None, dtype=d).alias(n) for n, d in schema.items() if n not in df.columns)
            self.model = pl.concat([self.model, filled.select(schema.names()).cast(dict(schema))])

        @rule(p=predicates(st))
        def delete(self, p: tuple[Any, pl.Expr]) -> None:
            where, expr = p
            before = self.model
            deletes = self._ops_versions("delete")
            self.model, want = model_delete(self.model, expr)
            got = self.t.delete(where)
            assert got == want, f"delete({where}) removed {got} rows, the model {want}"
            change = self.t.last_change
            assert change is not None
            self._committed(change, "delete", before, added=0, removed=want)
            assert self._ops_versions("delete") == deletes + (1 if want else 0)

        @rule(parts=st.lists(row_parts, min_size=0, max_size=6), shift=st.integers(-3, 3))
        def update(self, parts: list[tuple[Any, ...]], shift: int) -> None:
            df = self._new_rows([(min(max(s + shift, 0), SPAN_S), *rest) for s, *rest in parts])
            before = self.model
            self.model, removed = model_update(self.model, df)
            change = self.t.update(df)
            self._committed(change, "update", before, added=df.height, removed=removed)

        @rule(
            data=st.data(),
            on=st.sampled_from([["ts", "symbol"], ["id"]]),
            new=st.lists(row_parts, min_size=0, max_size=4),
        )
        def upsert(self, data: Any, on: list[str], new: list[tuple[Any, ...]]) -> None:
            parts: list[pl.DataFrame] = []
            if self.model.height:  # rows with keys of the table, changed values
                idx = data.draw(st.lists(st.integers(0, self.model.height - 1), max_size=5))
                old = self.model[idx] if idx else self.model.clear()
                fresh = self._new_rows(
                    [(0, "A", data.draw(st.one_of(st.none(), st.integers(0, 9))), 7.5) for _ in range(old.height)]
                )
                keep = on  # the key columns stay, the others change
                parts.append(old.select(keep).hstack(fresh.drop(keep)).select(self.model.columns))
            parts.append(self._new_rows(new, null_id=True))
            df = pl.concat(parts)
            if data.draw(st.booleans()):
                df = df.sample(fraction=1.0, shuffle=True, seed=data.draw(st.integers(0, 99)))
            before = self.model
            if has_duplicate_keys(df, on):
                versions = self.t.versions.height
                with pytest.raises(bt.BtError, match=r"(?s)table 'm'.*repeated"):
                    self.t.upsert(df, on=on)
                assert self.t.versions.height >= versions  # (a freeze may not even have run)
                return
            self.model, removed = model_upsert(self.model, df, on)
            change = self.t.upsert(df, on=on)
            self._committed(change, "upsert", before, added=df.height, removed=removed)

        @rule()
        def flush(self) -> None:
            self.t.flush()
            assert self.t.hot_rows == 0

        @rule(rows=st.sampled_from([None, 3, 12, 40]))
        def compact(self, rows: int | None) -> None:
            self.t.compact(target_rows=rows)

        @rule()
        def reopen(self) -> None:
            self.store.close()
            self.store = bt.open(self.dir / "db", retired_grace=0)
            self.t = self.store.table("m")

        @precondition(lambda self: len(self.recorded) > 0)
        @rule()
        def vacuum(self) -> None:
            self.t.flush()
            self.t.vacuum()
            newest = int(self.t.versions["version"].max())
            assert_frame_equal(self.t.scan(as_of=newest).collect(), self.model)
            for v, m in list(self.recorded.items()):
                try:
                    got = self.t.scan(as_of=v).collect()
                except bt.BtError as e:
                    message = str(e)
                    del self.recorded[v]
                else:
                    assert_frame_equal(got, m)
                    continue
                assert "vacuum" in message, message  # a clear error, not a missing-file corruption report
                assert f"version {v}" in message, message

        # -- invariants -------------------------------------------------------
        @invariant()
        def contents(self) -> None:
            assert_frame_equal(self.t.scan().collect(), self.model)
            assert len(self.t) == self.model.height

        @invariant()
        def versions(self) -> None:
            v = self.t.versions
            n = v.height
            assert v["version"].to_list() == list(range(1, n + 1))
            assert v["time"].is_sorted()
            assert v["rows"][0] == 0
            assert v["operation"][0] == "create"
            if n > 1:
                delta = v["rows"].diff().slice(1)
                net = (v["rows_added"] - v["rows_removed"]).slice(1)
                bad = v.slice(1).filter(delta != net)
                assert bad.height == 0, f"versions whose rows do not add up:\n{bad}"
            assert (v["rows_added"] >= 0).all()
            assert (v["rows_removed"] >= 0).all()
            old = self.history
            assert_frame_equal(v.head(old.height), old, check_exact=True)  # history never changes
            self.history = v

        @invariant()
        def time_travel(self) -> None:
            for ver, m in self.recorded.items():
                assert_frame_equal(self.t.scan(as_of=ver).collect(), m)

    return Lifecycle


def test_lifecycle_matches_the_model() -> None:
    from hypothesis import HealthCheck, settings

    machine = _machine()
    machine.TestCase.settings = settings(
        max_examples=EXAMPLES,
        stateful_step_count=STEPS,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    machine.TestCase().runTest()
