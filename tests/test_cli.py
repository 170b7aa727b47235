"""The command line, run as a real subprocess (``python -m bt_frames ...``) on real stores in tmp_path."""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

import bt_frames as bt
from bt_frames.storage import layout, wal
from bt_frames.storage import manifest as mf
from tests.conftest import ORDERS_SCHEMA, T0, make_orders
from tests.helpers.faults import flip_byte
from tests.helpers.procs import Child

BLOCK_ROWS = 1_000


def run_cli(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bt_frames", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "BT_FRAMES_PROGRESS": "0"},
        check=False,
    )


def assert_clean_error(out: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    """Exit ``code``, one ``bt-frames: error:`` message naming ``needles``, no traceback."""
    assert out.returncode == code, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    assert out.stderr.startswith("bt-frames: error: "), out.stderr
    for n in needles:
        assert n in out.stderr, (n, out.stderr)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A closed store: table 'orders' with 2 blocks (ts 0..1999 s) and 500 hot rows in 2 WAL records."""
    path = tmp_path / "db"
    with bt.BacktraceStore(path) as store:
        t = store.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=BLOCK_ROWS)
        t.append(make_orders(BLOCK_ROWS))
        t.append(make_orders(BLOCK_ROWS, start=BLOCK_ROWS))
        t.append(make_orders(300, start=2 * BLOCK_ROWS))
        t.append(make_orders(200, start=2 * BLOCK_ROWS + 300))
        assert t.wal_state["records"] == 2
    return path


def block_files(db: Path, table: str = "orders") -> list[Path]:
    return sorted((db / table / layout.BLOCKS_DIR).glob("*.parquet"))


def wal_segment(db: Path, table: str = "orders") -> Path:
    segs = wal.list_segments(db / table / layout.WAL_DIR)
    assert len(segs) == 1
    return segs[0][1]


# -- info ------------------------------------------------------------------------------


def test_info_shows_rows_blocks_bytes_wal_and_time_range(db: Path) -> None:
    out = run_cli("info", db)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "1 table(s)" in text
    assert "table 'orders'" in text
    assert "2,500 (2,000 cold in blocks, 500 hot in memory + WAL)" in text
    block_bytes = sum(p.stat().st_size for p in block_files(db))
    assert "blocks       2 (" in text
    assert f"{block_bytes:,} bytes" in text
    assert "WAL          1 segment(s), 2 record(s)" in text
    assert "2024-01-01 00:00:00+00:00 → 2024-01-01 00:41:39+00:00 (ts)" in text  # row 2499 is at 2499 s
    assert "symbol: String" in text


def test_info_with_table_lists_every_block_file(db: Path) -> None:
    out = run_cli("info", db, "orders")
    assert out.returncode == 0, out.stderr
    for p in block_files(db):
        assert p.name in out.stdout
    assert "min.ts" in out.stdout


@pytest.mark.crash
def test_info_works_while_another_process_holds_the_writer_lock(db: Path, tmp_path: Path) -> None:
    holder = Child("hold", "--path", str(db), stderr_path=tmp_path / "hold.err")
    try:
        holder.wait_line("locked")
        with pytest.raises(bt.StoreLockedError):
            bt.BacktraceStore(db)
        out = run_cli("info", db)
        assert out.returncode == 0, out.stderr
        assert "2,500 (2,000 cold" in out.stdout
        assert not list(db.rglob("*.tmp"))
    finally:
        holder.kill()


def test_info_unknown_table_exits_2(db: Path) -> None:
    assert_clean_error(run_cli("info", db, "trades"), 2, "no table 'trades'", "'orders'")


def test_info_on_a_folder_that_is_not_a_store_exits_2(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a store")
    assert_clean_error(run_cli("info", tmp_path), 2, "is not a bt_frames store")
    assert_clean_error(run_cli("info", tmp_path / "missing"), 2, "does not exist")


# -- verify ----------------------------------------------------------------------------


def test_verify_clean_store_exits_0(db: Path) -> None:
    out = run_cli("verify", db)
    assert out.returncode == 0, out.stderr
    assert "VerifyReport(OK: 1 table(s), 1 WAL segment(s) with 2 record(s), 2 block(s)" in out.stdout
    assert out.stdout.rstrip().endswith("checks out")


def test_verify_flipped_byte_in_a_block_exits_1_naming_the_file(db: Path) -> None:
    victim = block_files(db)[1]
    flip_byte(victim, victim.stat().st_size // 2)
    before = {p: p.stat().st_mtime_ns for p in db.rglob("*") if p.is_file()}
    out = run_cli("verify", db)
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    assert f"CORRUPT {victim}" in out.stdout
    assert "CORRUPT: 1 problem(s) found" in out.stderr
    assert str(victim) in out.stderr
    assert block_files(db)[0].name not in out.stderr  # the healthy block is not blamed
    assert {p: p.stat().st_mtime_ns for p in db.rglob("*") if p.is_file()} == before  # read-only


def test_verify_damaged_wal_record_exits_1_naming_file_and_offset(db: Path) -> None:
    seg = wal_segment(db)
    first = wal.SEGMENT_HEADER_SIZE  # the first of two records: damage before a valid record is not a torn tail
    flip_byte(seg, first + wal.RECORD_HEADER_SIZE + 10)
    out = run_cli("verify", db)
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert f"{seg} at byte offset {first}" in out.stderr
    assert "CRC mismatch" in out.stderr


def test_verify_torn_tail_is_reported_but_is_not_corruption(db: Path) -> None:
    seg = wal_segment(db)
    with open(seg, "ab") as f:
        f.write(b"\xe5\xa1\xf0\xb7partial")  # an append cut short by a crash
    out = run_cli("verify", db)
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert f"torn tail {seg}" in out.stdout


# -- query -----------------------------------------------------------------------------


def frame_rows(stdout: str) -> int:
    m = re.search(r"shape: \((\d[\d_]*), (\d+)\)", stdout)
    assert m, stdout
    return int(m.group(1).replace("_", ""))


def test_query_filters_projects_limits_and_prints_the_prune_report(db: Path) -> None:
    out = run_cli(
        "query", db, "orders", "--where", "symbol = 'BTC' and ts >= '2024-01-01 00:20:00'", "-c", "ts,symbol", "-n", "7"
    )
    assert out.returncode == 0, out.stderr
    assert "shape: (7, 2)" in out.stdout
    assert "price" not in out.stdout.split("PruneReport")[0]
    body = [ln for ln in out.stdout.splitlines() if ln.startswith("│ 2024")]
    assert len(body) == 7
    assert all("BTC" in ln for ln in body)
    assert all(ln >= "│ 2024-01-01 00:20:00" for ln in body)
    # block 1 holds 00:00:00-00:16:39: the time bound prunes it, block 2 is read
    assert "PruneReport(table 'orders': 1/2 blocks pruned, 1 scanned; 1,000 rows" in out.stdout
    assert "500 hot rows scanned" in out.stdout


def test_query_result_matches_the_python_api(db: Path) -> None:
    out = run_cli("query", db, "orders", "--where", "qty between 10 and 20 and symbol in ('ETH', 'SOL')", "-n", "1000")
    assert out.returncode == 0, out.stderr
    with bt.BacktraceStore(db, read_only=True) as store:
        want = (
            store.table("orders")
            .scan()
            .filter(pl.col("qty").is_between(10, 20), pl.col("symbol").is_in(["ETH", "SOL"]))
            .collect()
        )
    assert want.height > 0
    assert frame_rows(out.stdout) == want.height


def test_query_without_where_prints_the_first_rows(db: Path) -> None:
    out = run_cli("query", db, "orders", "--limit", "3")
    assert out.returncode == 0, out.stderr
    assert "shape: (3, 4)" in out.stdout
    assert "0/2 blocks pruned" in out.stdout


@pytest.mark.parametrize(
    ("where", "needles"),
    [
        pytest.param("qty >", ["is not a valid expression", "qty >"], id="syntax"),
        pytest.param("volume > 3", ["has no column 'volume'", "columns: ts, symbol, price, qty"], id="column"),
        pytest.param("ts >= 'soon'", ["cannot be applied to table 'orders'", "2024-01-02"], id="bad-time"),
        pytest.param("qty", ["Boolean"], id="not-boolean"),
        pytest.param("qty > 1; drop table orders", ["';' is not allowed"], id="statement"),
    ],
)
def test_query_bad_where_exits_2_with_a_clear_message(db: Path, where: str, needles: list[str]) -> None:
    assert_clean_error(run_cli("query", db, "orders", "--where", where), 2, *needles)


def test_query_where_cannot_read_files_through_a_subquery(db: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.csv"
    secret.write_text("column_1\nTOP-SECRET-42\n")
    where = f"symbol in (select column_1 from read_csv('{secret}'))"
    out = run_cli("query", db, "orders", "--where", where)
    assert_clean_error(out, 2, "'select' is not allowed")
    assert "TOP-SECRET-42" not in out.stdout + out.stderr.replace(str(secret), "")


def test_query_unknown_table_and_column_exit_2(db: Path) -> None:
    assert_clean_error(run_cli("query", db, "trades"), 2, "no table 'trades'")
    assert_clean_error(run_cli("query", db, "orders", "-c", "ts,volume"), 2, "--columns", "'volume'")


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).with_name("bt-frames")
    if not script.exists():
        pytest.skip("bt-frames console script not installed in this environment")
    out = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=False, timeout=60)
    assert out.returncode == 0
    assert out.stdout.strip() == f"bt-frames {bt.__version__}"


def test_no_command_is_a_usage_error() -> None:
    out = run_cli()
    assert out.returncode == 2
    assert "usage: bt-frames" in out.stderr
    assert "_demo_writer" not in out.stderr  # the demo's child process is not advertised


# -- history, vacuum and the lifecycle lines of info -----------------------------------


@pytest.fixture
def changed_db(tmp_path: Path) -> Path:
    """A closed store whose 'orders' table had a delete, an update and an upsert; the retired blocks kept.

    3 blocks of 1,000 rows (ts 0..2999 s), then: delete ts < 1500 s (block 1 retired unread, block 2
    rewritten), update of 60 rows at 2000..2059 s (block 3 rewritten), upsert of 2 rows by ts (one
    existing: block 3's rewrite rewritten; one new). Four retired blocks.
    """
    path = tmp_path / "db"
    with bt.BacktraceStore(path) as store:
        t = store.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=BLOCK_ROWS)
        for i in range(3):
            t.append(make_orders(BLOCK_ROWS, start=i * BLOCK_ROWS))
        assert t.delete(pl.col("ts") < T0 + dt.timedelta(seconds=1_500)) == 1_500
        t.update(make_orders(60, start=2_000, seed=1))
        t.upsert(make_orders(2, start=2_999, seed=2), on="ts")
        t.set_options(retention=dt.timedelta(days=7))
    return path


def body_lines(stdout: str) -> list[str]:
    """The rows of a printed frame (``│ 12 ┆ ...``)."""
    return [ln for ln in stdout.splitlines() if re.match(r"│ \d", ln)]


def operations(stdout: str) -> list[str]:
    return [ln.split("┆")[3].strip() for ln in body_lines(stdout)]


def retired(path: Path) -> list[Path]:
    """The files of the blocks the newest manifest version lists as retired."""
    return [path / "orders" / layout.BLOCKS_DIR / r.block for r in mf.load(path / "orders").retired]


def test_history_prints_every_change_and_hides_housekeeping(changed_db: Path) -> None:
    out = run_cli("history", changed_db, "orders")
    assert out.returncode == 0, out.stderr
    with bt.BacktraceStore(changed_db, read_only=True) as store:
        versions = store.table("orders").versions
    ops = operations(out.stdout)
    want = [op for op in versions["operation"] if op not in ("rotate", "close", "recover")]
    assert ops == want
    assert ops[:4] == ["create", "append", "append", "append"]
    assert ops[-4:] == ["delete", "update", "upsert", "set_options"]
    assert f"table 'orders': {versions.height} version(s)" in out.stdout
    hidden = versions.height - len(want)
    assert hidden >= 1  # the close
    assert f"{len(want)} of {versions.height} version(s) shown; {hidden} housekeeping version(s)" in out.stdout
    delete = next(ln for ln in body_lines(out.stdout) if "┆ delete " in ln)
    cells = [c.strip() for c in delete.strip("│ ").split("┆")]
    assert cells[4:8] == ["0", "1500", "1500", "3"]  # rows_added, rows_removed, rows, blocks after it
    assert 'where=[(col("ts")) < (2024-01-01 00:25:00 UTC)]' in delete


def test_history_all_limit_and_operation_filters(changed_db: Path) -> None:
    out = run_cli("history", changed_db, "orders", "--all")
    assert out.returncode == 0, out.stderr
    assert "close" in operations(out.stdout)
    assert "hidden" not in out.stdout

    out = run_cli("history", changed_db, "orders", "--all", "--limit", "2")
    assert out.returncode == 0, out.stderr
    assert operations(out.stdout) == ["set_options", "close"]
    assert "shape: (2, 10)" in out.stdout
    assert "(the newest 2 of" in out.stdout

    out = run_cli("history", changed_db, "orders", "-o", "delete,upsert", "-o", "update")
    assert out.returncode == 0, out.stderr
    assert operations(out.stdout) == ["delete", "update", "upsert"]

    out = run_cli("history", changed_db, "orders", "--operation", "close")  # named: shown without --all
    assert operations(out.stdout) == ["close"]


def test_history_bad_arguments_exit_2(changed_db: Path) -> None:
    assert_clean_error(run_cli("history", changed_db, "orders", "-o", "merge"), 2, "'merge'", "delete, update")
    assert_clean_error(run_cli("history", changed_db, "orders", "-n", "-1"), 2, "--limit must be >= 0")
    assert_clean_error(run_cli("history", changed_db, "trades"), 2, "no table 'trades'")


def test_info_shows_options_versions_and_retired_blocks(changed_db: Path) -> None:
    kept = retired(changed_db)
    assert len(kept) == 4  # delete: block 1 (unread) and block 2; update: block 3; upsert: the update's block
    size = sum(p.stat().st_size for p in kept)
    out = run_cli("info", changed_db)
    assert out.returncode == 0, out.stderr
    assert "  options      retention=7d, keep_versions=none (until vacuum), auto_compact=True" in out.stdout
    assert f"  versions     {len(mf.list_versions(changed_db / 'orders'))} (see: bt-frames history)" in out.stdout
    assert "  retired      4 block(s) kept for time travel, " in out.stdout
    assert f"({size:,} bytes) (bt-frames vacuum deletes them)" in out.stdout


def test_vacuum_deletes_retired_blocks_and_prints_what_it_freed(changed_db: Path) -> None:
    kept = retired(changed_db)
    sizes = {p.name: p.stat().st_size for p in kept}
    live = {p.name for p in block_files(changed_db)} - set(sizes)
    with bt.BacktraceStore(changed_db, read_only=True) as store:
        t = store.table("orders")
        before_delete = int(t.versions.filter(pl.col("operation") == "delete")["version"][0]) - 1
        assert t.scan(as_of=before_delete).select(pl.len()).collect().item() == 3_000

    out = run_cli("vacuum", changed_db, "orders", "--older-than", "0", "--grace", "0")
    assert out.returncode == 0, out.stdout + out.stderr
    for name, size in sizes.items():
        assert f"  deleted {name} ({size:,} bytes)" in out.stdout
    assert f"deleted 4 file(s), {sum(sizes.values()):,} bytes freed" in out.stdout
    assert "kept" not in out.stdout
    assert not any(p.exists() for p in kept)
    assert {p.name for p in block_files(changed_db)} == live  # the table's own blocks are untouched

    with bt.BacktraceStore(changed_db, read_only=True) as store:
        t = store.table("orders")
        assert t.rows == 1_501
        assert "vacuum" in t.versions["operation"].to_list()[-2:]  # (a close follows only if the LSN moved)
        with pytest.raises(bt.BtError, match="deleted by vacuum"):
            t.scan(as_of=before_delete)
    assert "  retired      0 block(s) kept for time travel" in run_cli("info", changed_db).stdout
    again = run_cli("vacuum", changed_db, "orders", "--older-than", "0", "--grace", "0")
    assert "deleted 0 file(s), 0 bytes freed" in again.stdout


def test_vacuum_keeps_blocks_retired_recently(changed_db: Path) -> None:
    kept = retired(changed_db)
    for args in [(), ("--older-than", "0")]:  # the default 7d; 0, but within the store's 60 s retired_grace
        out = run_cli("vacuum", changed_db, "orders", *args)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "deleted 0 file(s), 0 bytes freed (0 B)" in out.stdout
        assert f"kept 4 retired block(s), {sum(p.stat().st_size for p in kept):,} bytes" in out.stdout
    assert "retired less than 1m ago (--older-than 0s" in out.stdout
    assert all(p.exists() for p in kept)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        pytest.param(["--older-than", "3x"], ["'3x' is not a duration", "7d, 12h, 30m"], id="duration"),
        pytest.param(["--older-than=-1d"], ["is not a duration"], id="negative"),
        pytest.param(["--older-than", "7 days"], ["is not a duration"], id="words"),
        pytest.param(["--grace", "-5"], ["--grace must be >= 0"], id="grace"),
    ],
)
def test_vacuum_bad_arguments_exit_2(changed_db: Path, args: list[str], needles: list[str]) -> None:
    assert_clean_error(run_cli("vacuum", changed_db, "orders", *args), 2, *needles)


def test_vacuum_unknown_table_or_not_a_store_exits_2(changed_db: Path, tmp_path: Path) -> None:
    assert_clean_error(run_cli("vacuum", changed_db, "trades"), 2, "no table 'trades'")
    (tmp_path / "notes").mkdir()
    assert_clean_error(run_cli("vacuum", tmp_path / "notes", "orders"), 2, "is not a bt_frames store")


@pytest.mark.crash
def test_vacuum_refuses_while_another_process_holds_the_store(changed_db: Path, tmp_path: Path) -> None:
    kept = retired(changed_db)
    holder = Child("hold", "--path", str(changed_db), stderr_path=tmp_path / "hold.err")
    try:
        holder.wait_line("locked")
        out = run_cli("vacuum", changed_db, "orders", "--older-than", "0", "--grace", "0")
        assert_clean_error(out, 1, "must open the store as its writer", "another writer holds it", "Nothing was")
        assert all(p.exists() for p in kept)
    finally:
        holder.kill()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write a read-only folder")
def test_vacuum_refuses_a_read_only_folder(changed_db: Path) -> None:
    blocks = changed_db / "orders" / layout.BLOCKS_DIR
    blocks.chmod(0o555)
    try:
        out = run_cli("vacuum", changed_db, "orders", "--older-than", "0", "--grace", "0")
        assert_clean_error(out, 1, "is read-only", "nothing was deleted")
    finally:
        blocks.chmod(0o755)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0),
        ("45s", 45),
        ("30m", 1_800),
        ("12h", 43_200),
        ("7d", 604_800),
        ("2w", 1_209_600),
        ("1.5h", 5_400),
        ("1d 12h", 129_600),
        ("1h30m", 5_400),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    from bt_frames.__main__ import _fmt_duration, parse_duration

    got = parse_duration(text)
    assert got.total_seconds() == seconds
    assert parse_duration(_fmt_duration(got)) == got


# -- demo ------------------------------------------------------------------------------


@pytest.mark.crash
def test_demo_crashes_a_writer_recovers_every_acknowledged_append_and_is_rerunnable(tmp_path: Path) -> None:
    path = tmp_path / "demo_db"
    out = run_cli("demo", path)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    m = re.search(r"Recovered (\d+) acknowledged appends, (\d+) lost", text)
    assert m, text
    assert int(m.group(1)) >= 60
    assert m.group(2) == "0"
    acked = re.search(r"acknowledged batches 0\.\.(\d+) \((\d+) appends", text)
    assert acked
    assert int(acked.group(2)) == int(m.group(1)) == int(acked.group(1)) + 1
    assert "killed with SIGKILL (exit -9)" in text
    assert "recovery: " in text
    assert "replayed" in text
    assert re.search(r"PruneReport\(table 'orders': (\d+)/(\d+) blocks pruned", text)
    assert "identical results" in text
    assert "verify: OK" in text
    # the store holds exactly what the demo said: 300,000 ingested + whole batches of 500 after
    with bt.BacktraceStore(path, read_only=True) as store:
        t = store.table("orders")
        assert (t.rows - 300_000) % 500 == 0
        assert (t.rows - 300_000) // 500 >= int(m.group(1))
        ids = t.scan().select("order_id").collect().get_column("order_id")
        assert ids.is_unique().all()
        assert ids.is_sorted()
    again = run_cli("demo", path)  # idempotent: starts from scratch on its own store
    assert again.returncode == 0, again.stdout + again.stderr
    assert "removed the previous demo store" in again.stdout
    assert "0 lost" in again.stdout


def test_demo_refuses_to_delete_a_folder_that_is_not_a_store(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    assert_clean_error(run_cli("demo", tmp_path), 2, "is not a bt_frames store", "will not delete")
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_demo_refuses_to_replace_a_store_it_did_not_make(db: Path) -> None:
    before = sorted(p.name for p in db.rglob("*"))
    assert_clean_error(run_cli("demo", db), 2, "the demo did not make", "will not delete")
    with bt.BacktraceStore(db) as store:
        store.append("trades", pl.DataFrame({"x": [1]}))
    assert_clean_error(run_cli("demo", db), 2, "holds more than the demo's 'orders' table (trades)")
    assert set(before) <= {p.name for p in db.rglob("*")}
    with bt.BacktraceStore(db, read_only=True) as store:
        assert store.table("orders").rows == 2_500
