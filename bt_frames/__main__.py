"""The ``bt-frames`` command line (also ``python -m bt_frames``).

::

    bt-frames info PATH [TABLE]       tables, blocks, rows (cold/hot), bytes, WAL state, time range
    bt-frames verify PATH             every WAL record and block checksum; exit 1 on corruption
    bt-frames query PATH TABLE [--where EXPR] [--columns a,b] [--limit N]
    bt-frames history PATH TABLE [--limit N] [--operation OP] [--all]
                                      the table's manifest versions (``table.versions``)
    bt-frames vacuum PATH TABLE [--older-than 7d] [--grace SECONDS]
                                      delete retired blocks; print the files and bytes freed
    bt-frames delta-log PATH TABLE [--rebuild]
                                      the state of the table's Delta log; --rebuild writes it again
    bt-frames demo PATH               ingest, kill -9 a writer, recover, run a pruned query

``info``, ``verify``, ``query`` and ``history`` open the store read-only: they
take no lock, write nothing, and work while another process is writing.
``vacuum`` deletes files, so it opens the store as its writer: it refuses (exit
1, nothing deleted) while another process holds the store, or when the folder
cannot be written.

Exit codes: 0 success; 1 corruption (``verify``) or an error from the engine;
2 bad usage (unknown table or column, a bad ``--where``, a path that is not a
store). Errors are one message on stderr, never a traceback.

``--where`` is a SQL expression (``symbol = 'BTC'``, ``qty > 100 and price < 5``,
``ts >= '2024-01-02'``, ``symbol in ('BTC', 'ETH')``, ``qty between 1 and 10``,
``note is null``) parsed by Polars' SQL front end, never by Python ``eval``.
Subqueries are refused: the expression sees only the one table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bt_frames.errors import BtError, InvalidTableNameError, SchemaMismatchError, TableNotFoundError
from bt_frames.storage import layout

if TYPE_CHECKING:
    import polars as pl

    from bt_frames.store import BacktraceStore

PROG = "bt-frames"
# the public subcommands (README and tests check them)
COMMANDS = ("info", "verify", "query", "history", "vacuum", "delta-log", "demo")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


class UsageError(BtError, ValueError):
    """A command line the store cannot answer: bad ``--where``, unknown column, a path that is not a store.

    >>> main(["query", "demo_db", "orders", "--where", "qty >"])  # doctest: +SKIP
    bt-frames: error: --where 'qty >' is not a valid expression (unable to parse 'qty >' as Expr). ...
    """


# -- helpers -------------------------------------------------------------------------


def looks_like_store(path: Path) -> bool:
    """A folder bt_frames wrote: it has the store marker, the ``LOCK`` file or at least one table folder."""
    if not path.is_dir():
        return False
    if (path / layout.STORE_MARKER).is_file() or (path / layout.LOCK_NAME).is_file():
        return True
    return any((p / layout.TABLE_JSON).is_file() for p in path.iterdir() if p.is_dir())


def _open_read_only(path: str) -> BacktraceStore:
    from bt_frames.store import BacktraceStore

    p = Path(path)
    if not p.exists():
        raise UsageError(f"{path!r} does not exist; give the folder of a bt_frames store")
    if not looks_like_store(p):
        raise UsageError(
            f"{path!r} is not a bt_frames store (no {layout.LOCK_NAME} file and no table folders); "
            "give the folder you passed to bt.open()"
        )
    return BacktraceStore(p, read_only=True)


_TOKEN = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|[A-Za-z_][A-Za-z0-9_]*|.", re.S)
_FORBIDDEN_WORDS = frozenset({"select", "from", "with", "union", "values"})
_SQL_TABLE = "__bt_frames_cli_table"


def parse_where(where: str, schema: pl.Schema, *, table: str) -> pl.Expr:
    """Check a ``--where`` string and return it as a Polars expression (its literals still untyped).

    Only a single SQL expression over the table's columns is accepted. The text
    is screened before Polars sees it: Polars' SQL would run a subquery (which
    can read files) while parsing, so ``SELECT``/``FROM`` and ``;`` outside
    quotes are refused.
    """
    import polars as pl

    for tok in _TOKEN.findall(where):
        if tok == ";" or tok.lower() in _FORBIDDEN_WORDS:
            raise UsageError(
                f"--where {where!r}: {tok!r} is not allowed; give one expression over the columns of "
                f"table {table!r}, e.g. \"symbol = 'BTC' and qty > 100\" (subqueries are not supported)"
            )
    if not where.strip():
        raise UsageError("--where is empty; give an expression such as \"symbol = 'BTC'\" or leave it out")
    try:
        expr = pl.sql_expr(where)
    except Exception as e:
        raise UsageError(
            f"--where {where!r} is not a valid expression ({_first_line(e)}). "
            'Examples: "symbol = \'BTC\'", "qty > 100 and price < 5", "ts >= \'2024-01-02\'".'
        ) from None
    missing = [c for c in expr.meta.root_names() if c not in schema]
    if missing:
        raise UsageError(
            f"--where {where!r}: table {table!r} has no column {', '.join(map(repr, missing))} "
            f"(columns: {', '.join(schema.names())}); fix the column name"
        )
    return expr


def filter_where(lf: pl.LazyFrame, where: str, schema: pl.Schema, *, table: str) -> pl.LazyFrame:
    """``lf`` filtered by a ``--where`` string, with literals typed by the columns (``ts >= '2024-01-02'``).

    Polars' SQL context types each literal against its column, which a bare
    ``pl.sql_expr`` cannot. The filter is checked on an empty frame of the
    table's schema first, so a type error is reported before anything is read.
    """
    import polars as pl

    parse_where(where, schema, table=table)
    query = f"SELECT * FROM {_SQL_TABLE} WHERE {_times_as_sql(where, schema, table=table)}"

    def run(frame: pl.LazyFrame) -> pl.LazyFrame:
        return pl.SQLContext(frames={_SQL_TABLE: frame}).execute(query, eager=False)

    try:
        run(pl.LazyFrame(schema=schema)).collect()
    except Exception as e:
        hint = ""
        if any(schema[c].is_temporal() for c in parse_where(where, schema, table=table).meta.root_names()):
            hint = " (write times as '2024-01-02' or '2024-01-02 13:45:00')"
        raise UsageError(f"--where {where!r} cannot be applied to table {table!r}: {_first_line(e)}{hint}") from None
    return run(lf)


_SQL_KEYWORDS = frozenset({"and", "or", "not", "in", "between", "is", "null", "like", "ilike", "true", "false"})


def _times_as_sql(where: str, schema: pl.Schema, *, table: str) -> str:
    """``where`` with each quoted time next to a Date/Datetime column rewritten by the parser ``where=`` uses.

    A quoted string belongs to the nearest column name before it (after it, when
    none precedes: ``'2024-01-02' <= ts``). When that column is a Date or Datetime,
    the string is parsed by :func:`bt_frames.prune.time_literal` (ISO 8601, naive =
    the column's zone, offsets converted) and written back in a form Polars' SQL
    reads exactly, so ``--where "ts >= '...'"`` and ``where=[("ts", ">=", "...")]``
    agree. Anything else is left to Polars' SQL.
    """
    import polars as pl

    from bt_frames.prune import time_literal

    tokens = _TOKEN.findall(where)

    def column(tok: str) -> str | None:
        if tok.startswith('"') and len(tok) >= 2:
            name = tok[1:-1].replace('""', '"')
        elif tok[:1].isalpha() or tok[:1] == "_":
            if tok.lower() in _SQL_KEYWORDS:
                return None
            name = tok
        else:
            return None
        return name if name in schema else None

    cols = [column(t) for t in tokens]
    out = list(tokens)
    last: str | None = None
    for i, tok in enumerate(tokens):
        if cols[i] is not None:
            last = cols[i]
            continue
        if not (tok.startswith("'") and len(tok) >= 2):
            continue
        subject = last if last is not None else next((c for c in cols[i + 1 :] if c is not None), None)
        if subject is None or not isinstance(schema[subject], (pl.Datetime, pl.Date)):
            continue
        try:
            lit = time_literal(tok[1:-1].replace("''", "'"), schema[subject], table=table, column=subject)
        except BtError as e:
            raise UsageError(f"--where {where!r} cannot be applied to table {table!r}: {e}") from None
        value = pl.select(lit.alias("v")).to_series()
        fmt = "%Y-%m-%d" if value.dtype == pl.Date else "%Y-%m-%d %H:%M:%S%.f"
        if getattr(value.dtype, "time_zone", None):
            fmt += "%:z"
        out[i] = f"'{value.dt.to_string(fmt).item()}'"
    return "".join(out)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _print_frame(df: pl.DataFrame, *, rows: int | None = None) -> None:
    import polars as pl

    with pl.Config(
        tbl_rows=rows if rows is not None else df.height, tbl_cols=-1, tbl_width_chars=250, fmt_str_lengths=100
    ):
        print(df)


# -- info ------------------------------------------------------------------------------


def cmd_info(args: argparse.Namespace) -> int:
    from bt_frames import _display

    store = _open_read_only(args.path)
    try:
        names = [args.table] if args.table else store.tables
        print(f"store {str(store.path)!r}: {len(store.tables)} table(s) (opened read-only)")
        for name in names:
            t = store.table(name)
            print()
            print(_display.table_report(t))
            print(_lifecycle_report(t))
            if args.table:
                blocks = t.blocks
                tc = t.time_column
                cols = ["block", "first_lsn", "last_lsn", "rows", "bytes"]
                cols += [c for c in (f"min.{tc}", f"max.{tc}") if tc and c in blocks.columns]
                print("  blocks:")
                _print_frame(blocks.select(cols))
    finally:
        store.close()
    return EXIT_OK


def _lifecycle_report(t: Any) -> str:
    """The lines ``info`` adds to a table's report: its options, versions and the retired blocks kept."""
    from bt_frames.prune import _fmt_bytes
    from bt_frames.storage import manifest as mf

    opts = t.options
    keep = opts["keep_versions"]
    lines = [
        f"  options      retention={_fmt_duration(opts['retention'])}, "
        f"keep_versions={_fmt_duration(keep) if keep is not None else 'none (until vacuum)'}, "
        f"auto_compact={opts['auto_compact']}",
    ]
    compaction = getattr(t, "compaction", None)  # the background compactor's status, where there is one
    if compaction is not None:
        lines.append(f"  compaction   {compaction}")
    versions = mf.list_versions(t.path)
    kept = _retired_files(t)
    size = sum(n for _name, n in kept)
    lines.append(f"  versions     {len(versions)} (see: bt-frames history)")
    lines.append(
        f"  retired      {len(kept)} block(s) kept for time travel, {_fmt_bytes(size)} ({size:,} bytes)"
        + (" (bt-frames vacuum deletes them)" if kept else "")
    )
    status = t.delta_log
    detail = (
        f"txn version {status.txn_version}"
        if not status.unsupported
        else "columns " + ", ".join(f"{c} ({why.split(':')[0]})" for c, why in status.unsupported.items())
    )
    lines.append(f"  delta log    {status.state} ({detail}; see: bt-frames delta-log)")
    return "\n".join(lines)


def _retired_files(t: Any) -> list[tuple[str, int]]:
    """(file name, bytes) of each retired block of ``t`` whose file is still there."""
    from bt_frames.storage import manifest as mf

    out = []
    for r in mf.load(t.path).retired:
        try:
            out.append((r.block, (t.path / layout.BLOCKS_DIR / r.block).stat().st_size))
        except FileNotFoundError:  # deleted; the next version forgets it
            continue
    return out


_UNITS = {"w": 7 * 86_400, "d": 86_400, "h": 3_600, "m": 60, "s": 1}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([wdhms]?)\s*")


def parse_duration(text: str) -> dt.timedelta:
    """``7d``, ``12h``, ``30m``, ``45s``, ``2w``, ``1d 12h`` or ``0`` (a bare number is seconds) as a timedelta."""
    parts = text.strip().lower()
    seconds = 0.0
    pos = 0
    while parts and pos < len(parts):
        m = _DURATION_PART.match(parts, pos)
        if m is None:
            break
        seconds += float(m.group(1)) * _UNITS[m.group(2) or "s"]
        pos = m.end()
    if not parts or pos < len(parts):
        raise UsageError(
            f"{text!r} is not a duration; write a number and a unit: 7d, 12h, 30m, 45s, 2w, 1d 12h (or 0 for none)"
        )
    return dt.timedelta(seconds=seconds)


def _fmt_duration(td: dt.timedelta | None) -> str:
    """``td`` as ``parse_duration`` reads it (``1d 12h``); ``none`` for None."""
    if td is None:
        return "none"
    left = td.total_seconds()
    if left == 0:
        return "0s"
    parts = []
    for unit, size in _UNITS.items():
        if unit == "w":
            continue
        n = int(left // size)
        if n:
            parts.append(f"{n}{unit}")
            left -= n * size
    if left:
        parts.append(f"{left:g}s")
    return " ".join(parts)


# -- verify ----------------------------------------------------------------------------


def cmd_verify(args: argparse.Namespace) -> int:
    store = _open_read_only(args.path)
    try:
        report = store.verify()
    finally:
        store.close()
    print(repr(report))
    if report.ok:
        print(f"OK: every WAL record and block in {args.path} checks out")
        return EXIT_OK
    print(f"CORRUPT: {len(report.problems)} problem(s) found:", file=sys.stderr)
    for p in report.problems:
        where = f"{p.path}" + (f" at byte offset {p.offset}" if p.offset is not None else "")
        print(f"  {where}: {p.message}", file=sys.stderr)
    return EXIT_ERROR


# -- query -----------------------------------------------------------------------------


def cmd_query(args: argparse.Namespace) -> int:
    if args.limit < 0:
        raise UsageError(f"--limit must be >= 0, not {args.limit}")
    store = _open_read_only(args.path)
    try:
        t = store.table(args.table)
        schema = t.schema
        lf = t.scan()
        if args.where is not None:
            lf = filter_where(lf, args.where, schema, table=t.name)
        if args.columns:
            cols = [c.strip() for c in args.columns.split(",") if c.strip()]
            missing = [c for c in cols if c not in schema]
            if missing:
                raise UsageError(
                    f"--columns: table {t.name!r} has no column {', '.join(map(repr, missing))} "
                    f"(columns: {', '.join(schema.names())})"
                )
            lf = lf.select(cols)
        try:
            df = lf.head(args.limit).collect()
        except BtError:
            raise
        except Exception as e:
            raise UsageError(f"query on table {t.name!r} failed: {_first_line(e)}") from None
        _print_frame(df, rows=args.limit)
        report = t.last_plan
        if report is not None:
            print(repr(report))
    finally:
        store.close()
    return EXIT_OK


# -- history ---------------------------------------------------------------------------

HOUSEKEEPING = ("rotate", "close", "recover")  # versions that change no row: hidden unless --all
OPERATIONS = (  # every operation a manifest version can record (storage/manifest.py)
    "create", "upgrade", "publish", "append", "compact", "rotate", "close", "purge", "adopt", "recover",
    "delete", "update", "upsert", "retention", "set_options", "vacuum",
)  # fmt: skip


def cmd_history(args: argparse.Namespace) -> int:
    import polars as pl

    if args.limit is not None and args.limit < 0:
        raise UsageError(f"--limit must be >= 0, not {args.limit}")
    wanted = [op.strip() for ops in args.operation or [] for op in ops.split(",") if op.strip()]
    unknown = [op for op in wanted if op not in OPERATIONS]
    if unknown:
        raise UsageError(
            f"--operation {', '.join(map(repr, unknown))}: not an operation; the versions record "
            f"{', '.join(OPERATIONS)}"
        )
    store = _open_read_only(args.path)
    try:
        versions = store.table(args.table).versions
    finally:
        store.close()
    shown = versions
    hidden = 0
    if wanted:
        shown = shown.filter(pl.col("operation").is_in(wanted))
    elif not args.all:
        shown = shown.filter(~pl.col("operation").is_in(HOUSEKEEPING))
        hidden = versions.height - shown.height
    matching = shown.height
    if args.limit is not None:
        shown = shown.tail(args.limit)
    print(f"table {args.table!r}: {versions.height} version(s)")
    _print_frame(shown)
    note = f"{shown.height} of {versions.height} version(s) shown"
    if matching > shown.height:
        note += f" (the newest {shown.height} of {matching}: --limit)"
    if hidden:
        note += f"; {hidden} housekeeping version(s) ({'/'.join(HOUSEKEEPING)}) hidden, --all shows them"
    print(note)
    return EXIT_OK


# -- delta-log -------------------------------------------------------------------------


def cmd_delta_log(args: argparse.Namespace) -> int:
    from bt_frames.errors import StoreLockedError
    from bt_frames.store import BacktraceStore

    check = _open_read_only(args.path)  # a store, with that table
    try:
        status = check.table(args.table).delta_log
    finally:
        check.close()
    if args.rebuild:
        try:
            store = BacktraceStore(Path(args.path), progress=False)
        except StoreLockedError as e:
            raise BtError(
                f"--rebuild writes the Delta log, so it must open the store as its writer, and another writer "
                f"holds it ({e}) Nothing was changed. Call table.rebuild_delta_log() in that writer."
            ) from None
        try:
            status = store.table(args.table).rebuild_delta_log()
        finally:
            store.close()
    print(f"table {args.table!r}: Delta log at {status.uri}: {status.state}")
    print(f"  manifest version {status.manifest_version}; the log's txn version {status.txn_version}")
    for column, why in status.unsupported.items():
        print(f"  column {column!r}: {why}")
    if status.error:
        print(f"  error: {status.error}")
    return 0


# -- vacuum ----------------------------------------------------------------------------


def cmd_vacuum(args: argparse.Namespace) -> int:
    from bt_frames.errors import StoreLockedError
    from bt_frames.prune import _fmt_bytes
    from bt_frames.store import BacktraceStore

    older = parse_duration(args.older_than)
    if args.grace is not None and args.grace < 0:
        raise UsageError(f"--grace must be >= 0 seconds, not {args.grace}")
    check = _open_read_only(args.path)  # the read-only commands' checks first: a store, with that table
    try:
        check.table(args.table)
    finally:
        check.close()
    path = Path(args.path)
    for d in (path, path / args.table, path / args.table / layout.BLOCKS_DIR):
        if d.exists() and not os.access(d, os.W_OK):
            raise BtError(
                f"vacuum deletes files, and {str(d)!r} is read-only (no write permission); nothing was deleted. "
                "Run it as a user who can write the store."
            )
    options: dict[str, Any] = {} if args.grace is None else {"retired_grace": args.grace}
    try:
        store = BacktraceStore(path, progress=False, **options)
    except StoreLockedError as e:
        raise BtError(
            f"vacuum deletes files, so it must open the store as its writer, and another writer holds it ({e}) "
            "Nothing was deleted. Stop that writer first, or call table.vacuum(older_than=...) in it."
        ) from None
    try:
        t = store.table(args.table)
        before = dict(_retired_files(t))
        freed = t.vacuum(older)
        after = dict(_retired_files(t))
        grace = store.retired_grace
    finally:
        store.close()
    gone = sorted(set(before) - set(after))
    print(f"table {args.table!r}: vacuum of the blocks retired at least {_fmt_duration(older)} ago")
    for name in gone:
        print(f"  deleted {name} ({before[name]:,} bytes)")
    print(f"deleted {len(gone)} file(s), {freed:,} bytes freed ({_fmt_bytes(freed)})")
    if after:
        size = sum(after.values())
        print(
            f"kept {len(after)} retired block(s), {size:,} bytes: retired less than "
            f"{_fmt_duration(max(older, dt.timedelta(seconds=grace)))} ago (--older-than {_fmt_duration(older)}; "
            f"the store's retired_grace, {grace:g} s, protects readers in other processes: --grace)"
        )
    return EXIT_OK


# -- demo --------------------------------------------------------------------------------

DEMO_TABLE = "orders"
DEMO_BATCHES = 75
DEMO_BATCH_ROWS = 4_000
DEMO_BLOCK_ROWS = 24_000
CRASH_BATCH_ROWS = 500
_DEMO_T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
_DEMO_STEP_US = 1_200_000  # one order every 1.2 s
_SYMBOLS = ("BTC", "ETH", "SOL", "XRP", "ADA", "DOGE")
_SYMBOL_P = (0.30, 0.25, 0.18, 0.12, 0.10, 0.05)
_BASE_PRICE = (42_000.0, 2_300.0, 100.0, 0.6, 0.5, 0.08)


def demo_schema() -> dict[str, Any]:
    import polars as pl

    return {
        "ts": pl.Datetime("us", "UTC"),
        "order_id": pl.Int64,
        "symbol": pl.String,
        "side": pl.String,
        "price": pl.Float64,
        "qty": pl.Int64,
    }


def demo_orders(first_id: int, n: int) -> pl.DataFrame:
    """``n`` synthetic orders with ids ``first_id ..``; order ``i`` is at T0 + i * 1.2 s (a pure function)."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(first_id)
    ids = np.arange(first_id, first_id + n, dtype=np.int64)
    sym = rng.choice(len(_SYMBOLS), size=n, p=_SYMBOL_P)
    price = np.asarray(_BASE_PRICE)[sym] * rng.lognormal(0.0, 0.01, n)
    t0_us = int(_DEMO_T0.timestamp()) * 1_000_000
    return pl.DataFrame(
        {
            "ts": pl.Series(t0_us + ids * _DEMO_STEP_US, dtype=pl.Int64).cast(pl.Datetime("us", "UTC")),
            "order_id": ids,
            "symbol": np.asarray(_SYMBOLS)[sym],
            "side": np.where(rng.random(n) < 0.5, "buy", "sell"),
            "price": price.round(4),
            "qty": rng.integers(1, 1_000, n),
        },
        schema=demo_schema(),
    )


def _demo_store_problem(path: Path) -> str | None:
    """Why ``path`` is not a store the demo made (None: it is one, safe to replace)."""
    import polars as pl

    from bt_frames.storage import catalog

    if not looks_like_store(path):
        return "is not a bt_frames store"
    foreign = sorted(
        e.name
        for e in path.iterdir()
        if e.name not in (layout.LOCK_NAME, layout.STORE_MARKER)
        and not layout.is_transient_dir(e.name)
        and not (e.name == DEMO_TABLE and (e / layout.TABLE_JSON).is_file())
    )
    if foreign:
        return f"holds more than the demo's {DEMO_TABLE!r} table ({', '.join(foreign[:5])})"
    if (path / DEMO_TABLE / layout.TABLE_JSON).is_file():
        try:
            meta = catalog.TableMeta.load(path / DEMO_TABLE / layout.TABLE_JSON)
        except BtError as e:
            return f"has a {DEMO_TABLE!r} table that cannot be read ({e})"
        if meta.schema != pl.Schema(demo_schema()):
            return f"has an {DEMO_TABLE!r} table that the demo did not make (schema {meta.schema})"
    return None


def _fresh_demo_dir(path: Path) -> bool:
    """Remove a previous demo store at ``path`` (under its writer lock); refuse anything else."""
    from bt_frames.storage.locking import StoreLock

    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return False
    problem = _demo_store_problem(path)
    if problem is not None:
        raise UsageError(
            f"{str(path)!r} exists and {problem}; the demo starts from scratch and will not delete it. "
            "Give another path (e.g. `bt-frames demo demo_db`)."
        )
    lock = StoreLock(path)
    lock.acquire()  # StoreLockedError if a writer (another demo?) is using it
    try:
        shutil.rmtree(path)
    finally:
        lock.release()
    return True


class _Lines:
    """Collect a child's complete stdout lines in a thread (a line cut by the kill is not counted)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            if not raw.endswith(b"\n"):
                break
            with self._cond:
                self.lines.append(raw.decode().strip())
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, ok: Callable[[list[str]], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not ok(self.lines):
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return ok(self.lines)
                self._cond.wait(min(left, 0.2))
            return True

    def join(self) -> None:
        self._thread.join(10)

    def acked(self) -> list[int]:
        with self._cond:
            return [int(s) for s in self.lines if s.isdigit()]


def cmd_demo(args: argparse.Namespace) -> int:
    import polars as pl

    from bt_frames.store import BacktraceStore

    path = Path(args.path)
    t_start = time.perf_counter()
    removed = _fresh_demo_dir(path)
    print(f"bt_frames demo in {str(path)!r}" + (" (removed the previous demo store)" if removed else ""))

    # 1. ingest ------------------------------------------------------------------------------
    n_rows = DEMO_BATCHES * DEMO_BATCH_ROWS
    print(f"\n1. Ingest {n_rows:,} synthetic orders in {DEMO_BATCHES} appends, each durable (fsync) when it returns")
    frames = [demo_orders(i * DEMO_BATCH_ROWS, DEMO_BATCH_ROWS) for i in range(DEMO_BATCHES)]
    store = BacktraceStore(path, progress=args.progress)
    try:
        orders = store.create_table(DEMO_TABLE, demo_schema(), time_column="ts", max_block_rows=DEMO_BLOCK_ROWS)
        bar = store._progress("ingest", min_total=2)
        it: Any = bar(frames, len(frames)) if bar is not None else frames
        t0 = time.perf_counter()
        for df in it:
            orders.append(df)
        secs = time.perf_counter() - t0
        print(f"   {n_rows:,} rows in {secs:.2f} s ({n_rows / secs:,.0f} rows/s)")
        print(_indent(repr(orders)))
        print(f"   blocks (max_block_rows={DEMO_BLOCK_ROWS:,}; the last rows are still hot, in the WAL):")
        blocks = orders.blocks.select("first_lsn", "last_lsn", "rows", "bytes", "min.ts", "max.ts")
        _print_frame(blocks.head(3))
        print(f"   ... {blocks.height} blocks in all")
        rows_before = orders.rows
    finally:
        store.close()

    # 2. crash -------------------------------------------------------------------------------
    print(f"\n2. Crash: a child process appends {CRASH_BATCH_ROWS}-order batches and prints each batch id once")
    print("   append() has returned; we SIGKILL it mid-ingest")
    acked, kill_note = _crash_writer(path, rows_before)
    print(f"   {kill_note}")

    # 3. recover -----------------------------------------------------------------------------
    print("\n3. Reopen the store (recovery runs on open)")
    store = BacktraceStore(path, progress=args.progress)
    try:
        orders = store.table(DEMO_TABLE)
        print(f"   recovery: {orders.recovery.summary()}")
        ids = (
            orders.scan()
            .filter(pl.col("order_id") >= rows_before)
            .select(((pl.col("order_id") - rows_before) // CRASH_BATCH_ROWS).alias("batch"))
            .collect()
            .get_column("batch")
        )
        counts = ids.value_counts(sort=False)
        found = set(counts.get_column("batch").to_list())
        partial = counts.filter(pl.col("count") != CRASH_BATCH_ROWS).height
        ordered = ids.is_sorted()
        lost = sorted(set(acked) - found)
        extra = sorted(found - set(acked))
        print(f"   Recovered {len(acked)} acknowledged appends, {len(lost)} lost")
        if extra:
            print(
                f"   (+{len(extra)} append in flight: its WAL record was written, the kill came before "
                "append() returned; durable, so it is kept, exactly once)"
            )
        if lost or partial or not ordered or any(b > max(acked, default=-1) + 1 for b in extra):
            print(
                f"   BUG: lost={lost[:10]} partial batches={partial} in order={ordered} unexpected={extra[:10]}",
                file=sys.stderr,
            )
            return EXIT_ERROR
        print(f"   the table now holds {orders.rows:,} rows: {orders.cold_rows:,} in blocks, {orders.hot_rows:,} hot")

        # 4. a pruned query --------------------------------------------------------------------
        a = _DEMO_T0 + dt.timedelta(days=2, hours=6)
        b = a + dt.timedelta(hours=2)
        print(f"\n4. A pruned query: BTC orders between {a:%Y-%m-%d %H:%M} and {b:%H:%M} UTC")
        print(
            '   orders.scan().filter(pl.col("ts").is_between(a, b), pl.col("symbol") == "BTC")'
            '.select("ts", "order_id", "price", "qty")'
        )

        def query(prune: bool) -> pl.LazyFrame:
            return (
                orders.scan(prune=prune)
                .filter(pl.col("ts").is_between(a, b), pl.col("symbol") == "BTC")
                .select("ts", "order_id", "price", "qty")
            )

        result, t_pruned = _best_of(3, query(True).collect)
        report = orders.last_plan
        full, t_full = _best_of(3, query(False).collect)
        _print_frame(result, rows=6)
        if report is not None:
            print(_indent(repr(report)))
            print(
                f"   blocks: {report.blocks_total} total, {report.blocks_pruned} pruned, {report.blocks_scanned} "
                f"scanned; {report.rows_avoided:,} rows and {report.bytes_avoided:,} bytes never read"
            )
        same = "identical" if result.equals(full) else "DIFFERENT (a bug!)"
        print(
            f"   {result.height:,} rows in {1000 * t_pruned:.1f} ms with pruning, {1000 * t_full:.1f} ms "
            f"without (best of 3): {same} results"
        )
        rep = store.verify()
        print(f"\nverify: {'OK' if rep.ok else 'CORRUPT'} ({rep.blocks} blocks, {rep.wal_records} WAL records checked)")
    finally:
        store.close()
    print(f"done in {time.perf_counter() - t_start:.1f} s. Look around: bt-frames info {args.path} {DEMO_TABLE}")
    return EXIT_OK if result.equals(full) and rep.ok else EXIT_ERROR


def _best_of(n: int, fn: Callable[[], pl.DataFrame]) -> tuple[pl.DataFrame, float]:
    best = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def _indent(text: str, prefix: str = "   ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def _crash_writer(path: Path, first_id: int) -> tuple[list[int], str]:
    """Run the ``_demo_writer`` child, SIGKILL it after a random number of acknowledgements."""
    env = {**os.environ, "BT_FRAMES_PROGRESS": "0"}
    cmd = [sys.executable, "-m", "bt_frames", "_demo_writer", str(path), "--first-id", str(first_id)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    lines = _Lines(proc)
    target = random.randint(60, 120)
    try:
        if not lines.wait_for(lambda ls: sum(s.isdigit() for s in ls) >= target, timeout=60):
            proc.kill()
            err = proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr else ""
            raise BtError(f"the demo writer stopped before acknowledging {target} appends:\n{err}")
        time.sleep(random.uniform(0.0, 0.004))  # land the kill anywhere in the next append
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        lines.join()
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()
    acked = lines.acked()
    note = (
        f"child pid {proc.pid}: acknowledged batches 0..{max(acked)} ({len(acked)} appends, "
        f"{len(acked) * CRASH_BATCH_ROWS:,} rows), then killed with SIGKILL (exit {proc.returncode})"
    )
    return acked, note


def cmd_demo_writer(args: argparse.Namespace) -> int:
    """Child of ``demo``: append batch after batch, print each id once ``append`` returned; never closes."""
    from bt_frames.store import BacktraceStore

    store = BacktraceStore(args.path)
    orders = store.table(DEMO_TABLE)
    print("open", flush=True)
    for k in range(args.max_batches):
        orders.append(demo_orders(args.first_id + k * CRASH_BATCH_ROWS, CRASH_BATCH_ROWS))
        print(k, flush=True)  # acknowledged: durable
    store.close()
    return EXIT_OK


# -- the parser ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Inspect, check and query a bt_frames store, read a table's history, vacuum it; "
        "run the crash-recovery demo.",
        epilog="Exit codes: 0 ok, 1 corruption or engine error, 2 bad usage.",
    )
    from bt_frames import __version__

    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}", required=True)

    s = sub.add_parser(
        "info",
        help="tables, blocks, rows (cold/hot), bytes, WAL state, time range",
        description="Show a store's tables: rows (in blocks / hot), blocks, bytes, WAL segments/records/bytes and "
        "time range; with TABLE, also its blocks. Opens the store read-only (works while a writer runs).",
    )
    s.add_argument("path", metavar="PATH", help="the store's folder")
    s.add_argument("table", metavar="TABLE", nargs="?", help="show only this table, with its blocks")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser(
        "verify",
        help="check every WAL record and block checksum; exit 1 on corruption",
        description="Check every WAL record (CRC, LSN order, payload) and every block (xxh3 digest, Parquet "
        "footer). Read-only. Exit 0 if clean, 1 naming each damaged file (and byte offset in a WAL).",
    )
    s.add_argument("path", metavar="PATH", help="the store's folder")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser(
        "query",
        help="print rows matching --where and what pruning skipped",
        description="Print the first --limit rows of TABLE matching --where, then the prune report (blocks "
        "total/pruned/scanned, rows and bytes avoided). Read-only.",
        epilog='--where examples: "symbol = \'BTC\'"  "qty > 100 and price < 5"  "ts >= \'2024-01-02\'"  '
        "\"symbol in ('BTC', 'ETH')\"  \"qty between 10 and 20\"",
    )
    s.add_argument("path", metavar="PATH", help="the store's folder")
    s.add_argument("table", metavar="TABLE", help="the table to query")
    s.add_argument("--where", "-w", help="a SQL expression over the columns (no subqueries)")
    s.add_argument("--columns", "-c", help="comma-separated columns to show (default: all)")
    s.add_argument("--limit", "-n", type=int, default=20, help="rows to print (default: 20)")
    s.set_defaults(func=cmd_query)

    s = sub.add_parser(
        "history",
        help="the table's versions: what each change did (table.versions)",
        description="Print TABLE's manifest versions, oldest first, one row per version (table.versions): "
        "version, lsn, time, operation, rows_added, rows_removed, then rows, blocks and bytes after it, and "
        "detail. Housekeeping versions (" + ", ".join(HOUSEKEEPING) + ") are hidden unless --all or "
        "--operation names them. Read-only.",
    )
    s.add_argument("path", metavar="PATH", help="the store's folder")
    s.add_argument("table", metavar="TABLE", help="the table")
    s.add_argument("--limit", "-n", type=int, default=None, help="print only the newest N versions")
    s.add_argument(
        "--operation",
        "-o",
        action="append",
        metavar="OP",
        help="only versions of this operation (repeat, or comma-separate: delete,update,upsert)",
    )
    s.add_argument("--all", "-a", action="store_true", help="also the housekeeping versions")
    s.set_defaults(func=cmd_history)

    s = sub.add_parser(
        "vacuum",
        help="delete retired blocks; print the files and bytes freed",
        description="Delete the files of TABLE's blocks that were retired (by a compaction, delete, update, "
        "upsert or retention) at least --older-than ago; the versions that needed them can no longer be read "
        "with scan(as_of=...). Never deletes a block the table uses now. Opens the store as its writer: "
        "refuses (exit 1, nothing deleted) while another process holds it, or if the folder is read-only.",
        epilog="DURATION: a number and a unit: 7d, 12h, 30m, 45s, 2w; 0 for every retired block.",
    )
    s.add_argument("path", metavar="PATH", help="the store's folder")
    s.add_argument("table", metavar="TABLE", help="the table")
    s.add_argument(
        "--older-than",
        default="7d",
        metavar="DURATION",
        help="only blocks retired at least this long ago (default: 7d, as Delta's VACUUM)",
    )
    s.add_argument(
        "--grace",
        type=float,
        default=None,
        metavar="SECONDS",
        help="the store's retired_grace: blocks retired less than this ago are kept for readers in other "
        "processes, whatever --older-than says (default: 60)",
    )
    s.set_defaults(func=cmd_vacuum)

    s = sub.add_parser(
        "delta-log",
        help="the state of a table's Delta log; --rebuild writes it again",
        description="Print the state of TABLE's Delta Lake log (<table>/blocks/_delta_log, which other engines "
        "read: pl.scan_delta, DuckDB delta_scan): up to date, behind, failed, unsupported (column types Delta "
        "cannot represent). --rebuild removes the log and writes it again from the manifest; it opens the "
        "store as its writer and refuses (exit 1, nothing changed) while another process holds it.",
    )
    s.add_argument("path", metavar="PATH", help="the store's folder")
    s.add_argument("table", metavar="TABLE", help="the table")
    s.add_argument("--rebuild", action="store_true", help="write the log again from the manifest")
    s.set_defaults(func=cmd_delta_log)

    s = sub.add_parser(
        "demo",
        help="ingest, kill -9 a writer, recover, run a pruned query",
        description="Ingest 300,000 synthetic orders into a fresh store at PATH, SIGKILL a writer process in "
        "the middle of appending, reopen and check that every acknowledged append survived exactly once, then "
        "run a pruned query. An existing bt_frames store at PATH is replaced; any other folder is refused.",
    )
    s.add_argument("path", metavar="PATH", help="folder for the demo store (default used by dev.py: demo_db)")
    s.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars (default: only in a terminal)",
    )
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("_demo_writer")  # the demo's child process; not listed
    s.add_argument("path")
    s.add_argument("--first-id", type=int, required=True)
    s.add_argument("--max-batches", type=int, default=20_000)
    s.set_defaults(func=cmd_demo_writer)
    return p


_USAGE_ERRORS = (UsageError, TableNotFoundError, InvalidTableNameError, SchemaMismatchError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (``bt-frames`` and ``python -m bt_frames`` exit with it)."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except _USAGE_ERRORS as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BtError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:  # `bt-frames query ... | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
