"""The engine on a bucket (storage/remote.py): publishing, the lease and its fence, readers, faults.

Every test runs against moto in server mode on loopback (real HTTP, real
conditional PUTs); faults come from the proxy of tests/helpers/faultproxy.py
and from child processes killed with SIGKILL.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import bt_frames as bt
from bt_frames.storage import manifest as mf
from bt_frames.storage import remote
from tests.helpers import faultproxy, s3server
from tests.s3.test_readers import DASK_INPLACE_WARNING

ROOT = Path(__file__).resolve().parents[2]
T0 = dt.datetime(2024, 1, 1)


def frame(start: int, n: int) -> pl.DataFrame:
    return pl.DataFrame(
        {"ts": [T0 + dt.timedelta(seconds=i) for i in range(start, start + n)], "x": list(range(start, start + n))}
    )


def make_table(store: bt.BacktraceStore, *, max_block_rows: int = 50) -> bt.Table:
    return store.create_table("t", frame(0, 1).schema, time_column="ts", max_block_rows=max_block_rows)


@contextlib.contextmanager
def writer(bucket: s3server.Bucket, wal_dir: Path, rows: int = 0, *, flush: bool = True) -> Iterator[bt.Table]:
    """A writer at ``wal_dir`` with table "t" of ``rows`` rows (flushed, or left in its WAL); closed (which
    publishes them) on leaving."""
    with bt.open(bucket.uri, storage_options=bucket.storage_options, wal_dir=wal_dir) as store:
        t = make_table(store)
        if rows:
            t.append(frame(0, rows))
        if flush:
            t.flush()
        yield t


def seed(bucket: s3server.Bucket, wal_dir: Path, rows: int) -> None:
    """Table "t" of ``rows`` rows, published by a writer at ``wal_dir`` that closed with them in its WAL."""
    with writer(bucket, wal_dir, rows, flush=False):
        pass


def flushed_blocks(store: bt.BacktraceStore, blocks: int, rows: int) -> bt.Table:
    """Table "t" of ``blocks`` flushed blocks of ``rows`` rows each, never compacted unless asked."""
    t = store.create_table("t", frame(0, 1).schema, time_column="ts", max_block_rows=50, auto_compact=False)
    for i in range(blocks):
        t.append(frame(i * rows, rows))
        t.flush()
    return t


def kill_at_the_seam(child: subprocess.Popen[Any], paused: Path) -> None:
    """SIGKILL ``child`` once it has reached a test seam (it writes ``paused`` and waits there)."""
    try:
        deadline = time.monotonic() + 60
        while not paused.exists():
            assert child.poll() is None, "the child ended before the seam"
            assert time.monotonic() < deadline, "the child never reached the seam"
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)


def stalled_writer(bucket: s3server.Bucket, wal_dir: Path) -> tuple[bt.BacktraceStore, bt.Table]:
    """A writer whose table "t" has 60 published rows and which has stopped renewing its 1-second lease,
    now expired: another writer may take it over."""
    store = bt.open(bucket.uri, storage_options=bucket.storage_options, wal_dir=wal_dir, lease_seconds=1.0)
    t = make_table(store)
    t.append(frame(0, 60))
    t.flush()
    assert store._lease is not None
    store._lease._stop.set()  # the writer stalls: it stops renewing
    time.sleep(1.2)
    return store, t


def keys_of(bucket: s3server.Bucket) -> list[str]:
    return bucket.keys()


def bucket_versions(bucket: s3server.Bucket, table: str = "t") -> list[str]:
    return [k for k in keys_of(bucket) if f"/{table}/_manifest/" in k]


def get(bucket: s3server.Bucket, key: str) -> bytes:
    body: bytes = bucket.server.boto3_client().get_object(Bucket=bucket.name, Key=key)["Body"].read()
    return body


def run_child(code: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# -- publishing ----------------------------------------------------------------


def test_flush_publishes_blocks_versions_table_json_and_head(s3_bucket: s3server.Bucket, tmp_path: Path) -> None:
    with bt.open(s3_bucket.uri, storage_options=s3_bucket.storage_options, wal_dir=tmp_path / "w") as store:
        t = make_table(store)
        t.append(frame(0, 120))  # straight to blocks: 3 parts
        t.append(frame(120, 10))
        t.flush()
        local = tmp_path / "w" / "t"
        versions = mf.list_versions(local)
        blocks = sorted(p.name for p in (local / "blocks").glob("*.parquet"))
        keys = keys_of(s3_bucket)
        # every local version is in the bucket, byte for byte; every block too
        for v in versions:
            key = f"t/t/_manifest/{mf.version_name(v)}"
            assert get(s3_bucket, key) == (local / "_manifest" / mf.version_name(v)).read_bytes()
        assert [k.rpartition("/")[2] for k in keys if "/blocks/" in k and k.endswith(".parquet")] == blocks
        assert {"t/bt_frames.json", "t/t/table.json", "t/t/_head.bt"} <= set(keys)
        assert "t/_lease.json" in keys  # held while open
    assert "t/_lease.json" not in keys_of(s3_bucket)  # released at close


def test_close_publishes_rows_that_were_only_in_the_wal(s3_bucket: s3server.Bucket, tmp_path: Path) -> None:
    seed(s3_bucket, tmp_path / "w", 7)  # hot: in the local WAL only
    with bt.open(s3_bucket.uri, storage_options=s3_bucket.storage_options, read_only=True) as reader:
        assert reader["t"].read().get_column("x").to_list() == list(range(7))


def test_a_new_wal_dir_takes_the_buckets_tables_and_continues_them(s3_bucket: s3server.Bucket, tmp_path: Path) -> None:
    so = s3_bucket.storage_options
    seed(s3_bucket, tmp_path / "a", 60)
    with bt.open(s3_bucket.uri, storage_options=so, wal_dir=tmp_path / "b") as store:
        t = store["t"]
        assert t.read().height == 60
        t.append(frame(60, 5))
    with bt.open(s3_bucket.uri, storage_options=so, wal_dir=tmp_path / "a") as store:  # behind the bucket: catches up
        assert store["t"].read().get_column("x").to_list() == list(range(65))
        store["t"].append(frame(65, 1))
    with bt.open(s3_bucket.uri, storage_options=so, read_only=True) as reader:
        assert reader["t"].read().get_column("x").to_list() == list(range(66))


# -- readers -------------------------------------------------------------------


def test_reader_in_another_process_sees_the_published_rows(s3_bucket: s3server.Bucket, tmp_path: Path) -> None:
    with bt.open(s3_bucket.uri, storage_options=s3_bucket.storage_options, wal_dir=tmp_path / "w") as store:
        t = make_table(store, max_block_rows=40)
        for i in range(5):
            t.append(frame(i * 25, 25))
        t.flush()
        expected = t.read()
        out = tmp_path / "read.parquet"
        child = run_child(
            f"""
            import bt_frames as bt
            with bt.open({s3_bucket.uri!r}, storage_options={s3_bucket.storage_options!r}, read_only=True) as r:
                r["t"].read().write_parquet({str(out)!r})
            """
        )
        assert child.returncode == 0, child.stderr
        assert pl.read_parquet(out).equals(expected)


def test_reader_refresh_sees_newer_versions(s3_bucket: s3server.Bucket, tmp_path: Path) -> None:
    so = s3_bucket.storage_options
    with writer(s3_bucket, tmp_path / "w", 60) as t, bt.open(s3_bucket.uri, storage_options=so, read_only=True) as r:
        rt = r["t"]
        assert rt.read().height == 60
        t.append(frame(60, 60))
        t.flush()
        assert rt.read().height == 60  # as of opening
        r.refresh()
        assert rt.read().get_column("x").to_list() == list(range(120))


def test_a_reader_whose_blocks_were_compacted_and_vacuumed_away_reads_the_new_ones(
    s3_bucket: s3server.Bucket, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """As a local read-only process does: a block gone from the bucket makes the scan refresh and read again."""
    so = s3_bucket.storage_options
    with bt.open(s3_bucket.uri, storage_options=so, wal_dir=tmp_path / "w", retired_grace=0) as store:
        t = flushed_blocks(store, 4, 20)
        store.sync()
        with bt.open(s3_bucket.uri, storage_options=so, read_only=True) as reader:
            rt = reader["t"]  # nothing fetched yet: four blocks known from the head object
            assert rt.blocks.height == 4
            t.compact()
            t.vacuum()
            store.sync()
            assert not any(b in k for k in keys_of(s3_bucket) for b in rt.blocks["block"].to_list())
            with caplog.at_level(logging.INFO, logger="bt_frames"):
                assert rt.read().get_column("x").to_list() == list(range(80))
            assert "refreshing and reading again" in caplog.text
            assert rt.blocks.height == 2
            t.append(frame(80, 5))
            t.flush()
            store.sync()
            rt.refresh()  # a table's own refresh() reads the bucket too, not only store.refresh()
            assert rt.read().get_column("x").to_list() == list(range(85))


def test_read_only_open_takes_two_requests_and_q1_one_per_surviving_block(
    s3_bucket: s3server.Bucket, s3_proxy: faultproxy.FaultProxy, tmp_path: Path
) -> None:
    with bt.open(s3_bucket.uri, storage_options=s3_bucket.storage_options, wal_dir=tmp_path / "w") as store:
        t = make_table(store, max_block_rows=100)
        t.append(frame(0, 1000))  # 10 blocks of 100 rows, ordered in time
    via = s3_bucket.via(s3_proxy.endpoint)
    s3_proxy.reset()
    with bt.open(via.uri, storage_options=via.storage_options, read_only=True) as reader:
        rt = reader["t"]
        opened = s3_proxy.snapshot()
        assert sum(opened.values()) <= 2, opened
        q1 = pl.col("ts") >= T0 + dt.timedelta(seconds=850)
        got = rt.read(q1)
        assert got.get_column("x").to_list() == list(range(850, 1000))
        surviving = len(rt.prune(q1).survivors)
        assert surviving == 2
        total = s3_proxy.snapshot()
        assert sum(total.values()) <= 3 + surviving, total
        assert total["GET"] - opened["GET"] == surviving  # pruned blocks are never touched


def test_reader_of_a_stale_head_loads_the_newer_versions(s3_bucket: s3server.Bucket, tmp_path: Path) -> None:
    so = s3_bucket.storage_options
    with writer(s3_bucket, tmp_path / "w", 50) as t:
        head = get(s3_bucket, "t/t/_head.bt")
        t.append(frame(50, 50))
        t.flush()
    client = s3_bucket.server.boto3_client()
    client.put_object(Bucket=s3_bucket.name, Key="t/t/_head.bt", Body=head)  # as if the newer head was lost
    with bt.open(s3_bucket.uri, storage_options=so, read_only=True) as reader:
        assert reader["t"].read().get_column("x").to_list() == list(range(100))


# -- the lease and the fence ------------------------------------------------------


def test_second_writer_is_refused_at_open_naming_the_owner(s3_bucket: s3server.Bucket, tmp_path: Path) -> None:
    so = s3_bucket.storage_options
    with bt.open(s3_bucket.uri, storage_options=so, wal_dir=tmp_path / "a") as store:
        make_table(store).append(frame(0, 3))
        child = run_child(
            f"""
            import bt_frames as bt
            try:
                bt.open({s3_bucket.uri!r}, storage_options={so!r}, wal_dir={str(tmp_path / "b")!r})
            except bt.StoreLockedError as e:
                print("LOCKED", e)
            """
        )
        assert child.returncode == 0, child.stderr
        assert child.stdout.startswith("LOCKED"), child.stdout
        for part in (f"pid {os.getpid()}", "until", "Fix:"):
            assert part in child.stdout


def test_expired_lease_is_taken_over_and_the_old_writer_is_fenced(s3_bucket: s3server.Bucket, tmp_path: Path) -> None:
    so = s3_bucket.storage_options
    old, t = stalled_writer(s3_bucket, tmp_path / "a")
    new = bt.open(s3_bucket.uri, storage_options=so, wal_dir=tmp_path / "b")
    try:
        fenced = len(bucket_versions(s3_bucket))
        assert new["t"].read().height == 60
        # the old writer appends (acknowledged: in its WAL) and flushes: its version PUT finds the fence
        t.append(frame(60, 60))
        with pytest.raises(bt.MirrorConflictError, match="another writer published it"):
            t.flush()
        assert len(bucket_versions(s3_bucket)) == fenced  # the loser added no version
        with pytest.raises(bt.MirrorConflictError):
            t.append(frame(120, 1))  # refused from now on
        new["t"].append(frame(200, 1))
        new.flush()
    finally:
        new.close()
    with pytest.raises(bt.MirrorConflictError):
        old.close()
    # the loser's acknowledged rows are kept in its local store
    with bt.open(tmp_path / "a", read_only=True) as local:
        assert local["t"].read().get_column("x").to_list() == list(range(120))
    with bt.open(s3_bucket.uri, storage_options=so, read_only=True) as reader:
        assert reader["t"].read().get_column("x").to_list() == [*range(60), 200]
    # reopening the loser's folder refuses (its versions diverge from the bucket's), changing nothing
    before = sorted(p.name for p in (tmp_path / "a" / "t" / "_manifest").iterdir())
    with pytest.raises(bt.MirrorConflictError, match="Nothing was changed"):
        bt.open(s3_bucket.uri, storage_options=so, wal_dir=tmp_path / "a")
    assert sorted(p.name for p in (tmp_path / "a" / "t" / "_manifest").iterdir()) == before
    assert "t/_lease.json" not in keys_of(s3_bucket)


def test_forced_race_on_the_version_put_one_wins(s3_bucket: s3server.Bucket, tmp_path: Path) -> None:
    """Two writers that both believe they hold the table (the lease bypassed): one version file survives."""
    so = s3_bucket.storage_options
    seed(s3_bucket, tmp_path / "a", 10)
    a = bt.open(s3_bucket.uri, storage_options=so, wal_dir=tmp_path / "a")
    try:
        s3_bucket.server.boto3_client().delete_object(Bucket=s3_bucket.name, Key="t/_lease.json")  # bypassed
        b = bt.open(s3_bucket.uri, storage_options=so, wal_dir=tmp_path / "b")
        try:
            b["t"].append(frame(100, 50))
            b.flush()
            a["t"].append(frame(10, 50))
            with pytest.raises(bt.MirrorConflictError):
                a.flush()
        finally:
            b.close()
    finally:
        with pytest.raises(bt.MirrorConflictError):
            a.close()
    with bt.open(s3_bucket.uri, storage_options=so, read_only=True) as reader:
        assert reader["t"].read().get_column("x").to_list() == [*range(10), *range(100, 150)]


# -- faults ----------------------------------------------------------------------


def test_lost_response_after_the_version_put_is_not_a_conflict(
    s3_bucket: s3server.Bucket, s3_proxy: faultproxy.FaultProxy, tmp_path: Path
) -> None:
    via = s3_bucket.via(s3_proxy.endpoint)
    with writer(via, tmp_path / "w") as t:
        n = len(mf.list_versions(tmp_path / "w" / "t"))
        target = f"t/t/_manifest/{mf.version_name(n + 1)}"
        rule = s3_proxy.add(faultproxy.Rule("drop", method="PUT", key=target))
        t.append(frame(0, 60))  # straight to blocks: version n + 1
        t.flush()  # no conflict with itself
        assert rule.fired == 1
        assert len(s3_proxy.requests("PUT", target)) >= 2  # the retry found its own version there
        assert get(s3_bucket, target) == (tmp_path / "w" / "t" / "_manifest" / mf.version_name(n + 1)).read_bytes()
        t.append(frame(60, 1))
    with bt.open(s3_bucket.uri, storage_options=s3_bucket.storage_options, read_only=True) as reader:
        assert reader["t"].read().get_column("x").to_list() == list(range(61))


@pytest.mark.crash
def test_writer_killed_between_block_upload_and_version_put(s3_bucket: s3server.Bucket, tmp_path: Path) -> None:
    so = s3_bucket.storage_options
    seed(s3_bucket, tmp_path / "w", 10)
    paused = tmp_path / "paused"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import datetime as dt, polars as pl, bt_frames as bt
                s = bt.open({s3_bucket.uri!r}, storage_options={so!r}, wal_dir={str(tmp_path / "w")!r})
                t0 = dt.datetime(2024, 1, 1)
                t = s["t"]
                t.append(pl.DataFrame({{"ts": [t0 + dt.timedelta(seconds=i) for i in range(10, 110)],
                                        "x": list(range(10, 110))}}))
                t.flush()
                """
            ),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "BT_FRAMES_TEST_PAUSE_BEFORE_VERSION_PUT": str(paused)},
    )
    kill_at_the_seam(child, paused)
    version = int(paused.read_text())
    assert (tmp_path / "w" / "t" / "_manifest" / mf.version_name(version)).exists()  # committed locally
    orphans = [k for k in keys_of(s3_bucket) if "/blocks/" in k and k.endswith(".parquet")]
    named = set()  # every block any version in the bucket names
    for key in bucket_versions(s3_bucket):
        v = int(key.rpartition("/")[2].split(".")[0])
        edit, _time, state = mf.decode(Path(key), get(s3_bucket, key), v)
        named |= {e.block for e in edit.add} | {d["block"] for d in (state or {}).get("blocks", [])}
    unnamed = [k for k in orphans if k.rpartition("/")[2] not in named]
    assert unnamed, "the block was uploaded before the kill"
    assert f"t/t/_manifest/{mf.version_name(version)}" not in keys_of(s3_bucket)
    # a reader sees only what was published
    with bt.open(s3_bucket.uri, storage_options=so, read_only=True) as reader:
        assert reader["t"].read().height == 10
    # the writer reopens its folder: the acknowledged rows are published exactly once
    with bt.open(s3_bucket.uri, storage_options=so, wal_dir=tmp_path / "w") as store:
        assert store["t"].read().get_column("x").to_list() == list(range(110))
    with bt.open(s3_bucket.uri, storage_options=so, read_only=True) as reader:
        assert reader["t"].read().get_column("x").to_list() == list(range(110))


def test_orphan_blocks_are_removed_by_the_next_writer_and_nothing_else(
    s3_bucket: s3server.Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    so = s3_bucket.storage_options
    seed(s3_bucket, tmp_path / "w", 60)
    client = s3_bucket.server.boto3_client()
    orphan = "t/t/blocks/00000000000000000099-00000000000000000099.1of1.0123456789abcdef.parquet"
    foreign = ["t/t/blocks/notes.txt", "t/t/blocks/sub/00000000000000000099-00000000000000000099.1of1."
               "0123456789abcdef.parquet", "t/other/file.parquet"]  # fmt: skip
    for key in [orphan, *foreign]:
        client.put_object(Bucket=s3_bucket.name, Key=key, Body=b"x")
    with bt.open(s3_bucket.uri, storage_options=so, wal_dir=tmp_path / "w"):
        pass
    assert orphan in keys_of(s3_bucket)  # younger than the grace period: an upload in flight, perhaps
    monkeypatch.setattr(remote, "ORPHAN_GRACE_S", 0.0)
    with bt.open(s3_bucket.uri, storage_options=so, wal_dir=tmp_path / "w") as store:
        assert store["t"].read().height == 60
    keys = keys_of(s3_bucket)
    assert orphan not in keys
    assert all(k in keys for k in foreign)
    assert len([k for k in keys if "/blocks/" in k and k.endswith(".parquet") and "/sub/" not in k]) == 2


# -- errors ------------------------------------------------------------------------


def test_a_writer_without_wal_dir_is_refused_with_the_fix(s3_bucket: s3server.Bucket) -> None:
    with pytest.raises(bt.BtError, match="needs wal_dir="):
        bt.open(s3_bucket.uri, storage_options=s3_bucket.storage_options)
    assert keys_of(s3_bucket) == []


def test_a_missing_bucket_is_a_bt_error_naming_it(s3_bucket: s3server.Bucket, tmp_path: Path) -> None:
    uri = f"s3://no-such-{s3_bucket.name}/db"
    with pytest.raises(bt.ObjectStoreError, match=r"does not exist\. Fix: create it") as e:
        bt.open(uri, storage_options=s3_bucket.storage_options, wal_dir=tmp_path / "w")
    assert isinstance(e.value, bt.BtError)
    assert f"no-such-{s3_bucket.name}" in str(e.value)


def test_bad_credentials_are_a_bt_error_with_the_fix(s3_bucket: s3server.Bucket, tmp_path: Path) -> None:
    so = {**s3_bucket.storage_options, "aws_endpoint_url": "http://127.0.0.1:9"}  # nothing listens there
    with pytest.raises(bt.ObjectStoreError, match="aws_endpoint_url"):
        bt.open(s3_bucket.uri, storage_options=so, wal_dir=tmp_path / "w")
    with pytest.raises(bt.ObjectStoreError, match="invalid storage_options"):
        bt.open(s3_bucket.uri, storage_options={"no_such_option": "1"}, wal_dir=tmp_path / "w2")


@pytest.mark.parametrize(
    ("text", "credentials"),
    [
        ("Generic S3 error: Error after 3 retries in 2.403s, max_retries:3: error sending request", False),
        ("Server returned non-2xx status code: 503 Service Unavailable after 1.403s", False),
        ("Client error with status 403 Forbidden: <Code>AccessDenied</Code>", True),
        ("Received status code: 403 from the store", True),
    ],
)
def test_the_fix_an_error_suggests_follows_its_status_not_digits_in_its_timings(
    s3_bucket: s3server.Bucket, text: str, credentials: bool
) -> None:
    """Found flaky: an unreachable endpoint's error was read as refused credentials when it took 2.403 s."""
    from bt_frames.storage.objectstore import ObjectStore

    err = ObjectStore(s3_bucket.uri, s3_bucket.storage_options)._error("reading", "k", OSError(text))
    assert isinstance(err, bt.BtError)
    assert ("the store refused the credentials" in str(err)) == credentials, str(err)
    assert ("aws_endpoint_url" in str(err)) != credentials, str(err)


@pytest.mark.parametrize("so", ["aws_region=us-east-1", ["aws_region"]])
def test_storage_options_that_are_not_a_dict_are_a_bt_error(tmp_path: Path, so: Any) -> None:
    for kw in ({"read_only": True}, {"wal_dir": tmp_path / "w"}):
        with pytest.raises(bt.ObjectStoreError, match="storage_options must be a dict"):
            bt.open("s3://bucket/prefix", storage_options=so, **kw)
    assert not (tmp_path / "w").exists()


def test_storage_options_on_a_local_path_are_refused(tmp_path: Path) -> None:
    with pytest.raises(bt.BtError, match="s3://bucket/prefix"):
        bt.open(tmp_path / "db", storage_options={"aws_region": "x"})
    assert not (tmp_path / "db").exists()


# -- Part 1 readers on the bucket (the Delta log follows the versions) ------------------------------------------


def _published(s3_bucket: s3server.Bucket) -> pl.DataFrame:
    with bt.open(s3_bucket.uri, storage_options=s3_bucket.storage_options, read_only=True) as reader:
        return reader["t"].read().sort("x")


@pytest.mark.filterwarnings(DASK_INPLACE_WARNING)
def test_part1_readers_read_the_delta_log_in_the_bucket(s3_bucket: s3server.Bucket, tmp_path: Path) -> None:
    from tests.helpers import s3readers

    so = s3_bucket.storage_options
    with bt.open(s3_bucket.uri, storage_options=so, wal_dir=tmp_path / "a") as store:
        t = make_table(store)
        t.append(frame(0, 120))
        t.append(frame(120, 30))
    with bt.open(s3_bucket.uri, storage_options=so, wal_dir=tmp_path / "b") as store:  # another writer continues
        store["t"].append(frame(150, 20))
    expected = _published(s3_bucket)
    assert expected.get_column("x").to_list() == list(range(170))
    uri = f"{s3_bucket.uri}/t/blocks"
    assert pl.scan_delta(uri, storage_options=so).collect().sort("x").equals(expected)
    got = s3readers.duckdb_connect(so).sql(f"SELECT * FROM delta_scan('{uri}') ORDER BY x").pl()
    assert got.get_column("x").to_list() == expected.get_column("x").to_list()
    import dask.dataframe as dd
    import deltalake

    files = deltalake.DeltaTable(uri, storage_options=so).file_uris()
    ddf = dd.read_parquet(files, storage_options=s3readers.s3fs_options(so))
    assert sorted(ddf["x"].compute().tolist()) == list(range(170))


def test_the_delta_log_in_the_bucket_never_names_an_unpublished_block(
    s3_bucket: s3server.Bucket, tmp_path: Path
) -> None:
    import deltalake

    so = s3_bucket.storage_options
    with bt.open(s3_bucket.uri, storage_options=so, wal_dir=tmp_path / "w") as store:
        t = make_table(store)
        for i in range(4):
            t.append(frame(i * 40, 40))  # hot rows: one block per flush
            t.flush()
            files = deltalake.DeltaTable(f"{s3_bucket.uri}/t/blocks", storage_options=so).file_uris()
            keys = set(keys_of(s3_bucket))
            assert all(f.removeprefix(f"s3://{s3_bucket.name}/") in keys for f in files), files
            assert len(files) == i + 1


def test_blocks_a_compaction_retired_leave_the_bucket_when_vacuumed(s3_bucket: s3server.Bucket, tmp_path: Path) -> None:
    so = s3_bucket.storage_options
    with bt.open(s3_bucket.uri, storage_options=so, wal_dir=tmp_path / "w", retired_grace=0) as store:
        t = flushed_blocks(store, 4, 10)
        before = {k for k in keys_of(s3_bucket) if k.endswith(".parquet")}
        assert len(before) == 4
        t.compact()
        t.vacuum()
        t.append(frame(40, 1))  # the next version forgets the deleted files
        store.flush()
        after = {k for k in keys_of(s3_bucket) if k.endswith(".parquet")}
        assert not before & after  # the four small blocks are gone from the bucket too
        assert len(after) == 2  # the merged block and the last one
    with bt.open(s3_bucket.uri, storage_options=so, read_only=True) as reader:
        assert reader["t"].read().get_column("x").to_list() == list(range(41))


def test_a_block_rewritten_after_its_file_was_forgotten_stays_in_the_bucket(
    s3_bucket: s3server.Bucket, tmp_path: Path
) -> None:
    """Rows updated to B, back, then to B again rewrite B's file under its old name (a block's name is its
    content) after B was retired and deleted: the version that makes B live again also forgets the deleted
    file, and publishing it deleted the live block from the bucket."""
    so = s3_bucket.storage_options

    def values(k: float) -> pl.DataFrame:
        return frame(0, 10).with_columns(pl.col("x") * int(k))

    with bt.open(s3_bucket.uri, storage_options=so, wal_dir=tmp_path / "w", retired_grace=0) as store:
        t = store.create_table("t", frame(0, 1).schema, time_column="ts", keep_versions=0, auto_compact=False)
        t.append(frame(0, 10))
        t.flush()
        for k in (2, 1, 2, 1):  # the third and fourth updates write the files of the first and second again
            t.update(values(k))
        live = t.blocks["block"].to_list()
        store.sync()
        assert all(any(k.endswith("/" + b) for k in keys_of(s3_bucket)) for b in live), live
    with bt.open(s3_bucket.uri, storage_options=so, read_only=True) as reader:
        assert reader["t"].read().get_column("x").to_list() == list(range(10))


def test_a_renewed_lease_outlives_its_seconds(s3_bucket: s3server.Bucket, tmp_path: Path) -> None:
    so = s3_bucket.storage_options
    with bt.open(s3_bucket.uri, storage_options=so, wal_dir=tmp_path / "a", lease_seconds=0.6) as store:
        make_table(store).append(frame(0, 3))
        time.sleep(1.5)  # more than twice the lease: only the renewals keep it
        with pytest.raises(bt.StoreLockedError, match="holds its lease"):
            bt.open(s3_bucket.uri, storage_options=so, wal_dir=tmp_path / "b")
        store["t"].append(frame(3, 3))
    with bt.open(s3_bucket.uri, storage_options=so, read_only=True) as reader:
        assert reader["t"].read().height == 6


def test_an_unreachable_bucket_delays_publishing_and_nothing_is_lost(
    s3_bucket: s3server.Bucket, s3_proxy: faultproxy.FaultProxy, tmp_path: Path
) -> None:
    via = s3_bucket.via(s3_proxy.endpoint)
    with writer(via, tmp_path / "w") as t:
        rule = s3_proxy.add(faultproxy.Rule("error", method="PUT", key="t/t/blocks/*", status=503, times=8))
        t.append(frame(0, 60))  # acknowledged: in blocks locally; the uploads fail for a while
        with pytest.raises(bt.ObjectStoreError, match="retried in the background"):
            t.flush()
        assert not [k for k in keys_of(s3_bucket) if k.endswith(".parquet")]
        t.append(frame(60, 1))  # still taking appends: not a conflict
        deadline = time.monotonic() + 60
        while True:  # the outage ends once the rule is used up; flush() then succeeds
            try:
                t.flush()
                break
            except bt.ObjectStoreError:
                assert time.monotonic() < deadline
        assert rule.fired == 8
    with bt.open(s3_bucket.uri, storage_options=s3_bucket.storage_options, read_only=True) as reader:
        assert reader["t"].read().get_column("x").to_list() == list(range(61))


def test_a_schema_change_reaches_readers_and_the_next_writer(s3_bucket: s3server.Bucket, tmp_path: Path) -> None:
    so = s3_bucket.storage_options
    with bt.open(s3_bucket.uri, storage_options=so, wal_dir=tmp_path / "a") as store:
        t = make_table(store)
        t.append(frame(0, 5))
        t.add_columns({"note": pl.String})
        t.append(frame(5, 5).with_columns(note=pl.lit("n")))
    assert b'"note"' in get(s3_bucket, "t/t/table.json")
    with bt.open(s3_bucket.uri, storage_options=so, wal_dir=tmp_path / "b") as store:
        assert store["t"].schema.names() == ["ts", "x", "note"]
        assert store["t"].read().get_column("note").to_list() == [None] * 5 + ["n"] * 5
    with bt.open(s3_bucket.uri, storage_options=so, read_only=True) as reader:
        assert reader["t"].schema.names() == ["ts", "x", "note"]
        assert reader["t"].read().height == 10


def test_a_reader_of_an_unreachable_endpoint_gets_a_bt_error_with_the_fix(
    s3_bucket: s3server.Bucket, tmp_path: Path
) -> None:
    seed(s3_bucket, tmp_path / "w", 3)
    so = {**s3_bucket.storage_options, "aws_endpoint_url": "http://127.0.0.1:9"}
    with bt.open(s3_bucket.uri, storage_options=so, read_only=True) as reader:
        with pytest.raises(bt.ObjectStoreError, match="aws_endpoint_url") as e:
            reader["t"]
        assert s3_bucket.name in str(e.value)


def test_the_buckets_delta_log_follows_a_rebuilt_local_log(s3_bucket: s3server.Bucket, tmp_path: Path) -> None:
    # rebuild_delta_log() (or a damaged local log, rebuilt at the next sync) starts the local log again at
    # version 0: the bucket's log must still end up naming exactly the published blocks
    so = s3_bucket.storage_options
    with bt.open(s3_bucket.uri, storage_options=so, wal_dir=tmp_path / "w") as store:
        t = flushed_blocks(store, 4, 10)
        t.rebuild_delta_log()
        for i in range(4, 7):
            t.append(frame(i * 10, 10))
            t.flush()
    expected = _published(s3_bucket)
    assert expected.get_column("x").to_list() == list(range(70))
    got = pl.scan_delta(f"{s3_bucket.uri}/t/blocks", storage_options=so).collect().sort("x")
    assert got.get_column("x").to_list() == list(range(70))


def test_a_lost_response_to_a_lease_renewal_keeps_the_lease(
    s3_bucket: s3server.Bucket, s3_proxy: faultproxy.FaultProxy, tmp_path: Path
) -> None:
    # the renewal took effect but its response was lost: the retry's If-Match (the old ETag) fails, and the
    # lease is still this writer's -- not a lost lease
    via = s3_bucket.via(s3_proxy.endpoint)
    with bt.open(via.uri, storage_options=via.storage_options, wal_dir=tmp_path / "w", lease_seconds=0.6) as store:
        t = make_table(store)
        t.flush()
        rule = s3_proxy.add(faultproxy.Rule("drop", method="PUT", key="t/_lease.json"))
        deadline = time.monotonic() + 10
        while rule.fired == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)  # a renewal or two after the lost one
        t.append(frame(0, 60))
        t.flush()  # still the writer: publishing goes on
        with pytest.raises(bt.StoreLockedError, match="holds its lease"):
            bt.open(s3_bucket.uri, storage_options=s3_bucket.storage_options, wal_dir=tmp_path / "b")
    with bt.open(s3_bucket.uri, storage_options=s3_bucket.storage_options, read_only=True) as reader:
        assert reader["t"].read().height == 60


def test_a_lost_response_to_the_lease_create_at_open_is_not_another_writer(
    s3_bucket: s3server.Bucket, s3_proxy: faultproxy.FaultProxy, tmp_path: Path
) -> None:
    via = s3_bucket.via(s3_proxy.endpoint)
    rule = s3_proxy.add(faultproxy.Rule("drop", method="PUT", key="t/_lease.json"))
    with bt.open(via.uri, storage_options=via.storage_options, wal_dir=tmp_path / "w") as store:
        assert rule.fired == 1
        make_table(store).append(frame(0, 5))
    assert "t/_lease.json" not in keys_of(s3_bucket)  # released: it was this writer's


def _bt_threads() -> list[str]:
    import threading

    return sorted(th.name for th in threading.enumerate() if th.name in ("bt_frames-mirror", "bt_frames-lease"))


def test_close_and_a_refused_open_leave_no_thread_and_no_reader_folder(
    s3_bucket: s3server.Bucket, tmp_path: Path
) -> None:
    so = s3_bucket.storage_options
    assert _bt_threads() == []
    store = bt.open(s3_bucket.uri, storage_options=so, wal_dir=tmp_path / "a")
    make_table(store).append(frame(0, 5))
    assert _bt_threads() == ["bt_frames-lease", "bt_frames-mirror"]
    with pytest.raises(bt.StoreLockedError):
        bt.open(s3_bucket.uri, storage_options=so, wal_dir=tmp_path / "b")
    assert _bt_threads() == ["bt_frames-lease", "bt_frames-mirror"]  # only the first writer's
    store.close()
    assert _bt_threads() == []
    reader = bt.open(s3_bucket.uri, storage_options=so, read_only=True)
    scratch = reader._scratch
    assert scratch is not None
    assert os.path.isdir(scratch)
    assert reader["t"].read().height == 5
    reader.close()
    assert not os.path.exists(scratch)
    assert _bt_threads() == []


def test_opening_the_same_bucket_store_twice_in_a_process_gives_the_same_store(
    s3_bucket: s3server.Bucket, tmp_path: Path
) -> None:
    """As a local store does (DuckDB-style): the second bt.open is the first store; each close gives one back."""
    so, wal = s3_bucket.storage_options, tmp_path / "w"
    first = bt.open(s3_bucket.uri, storage_options=so, wal_dir=wal)
    second = bt.open(s3_bucket.uri + "/", storage_options=so, wal_dir=wal)
    assert second is first
    with pytest.raises(bt.StoreLockedError, match=rf"a writer in this process \(pid \d+\) for '{s3_bucket.uri}'"):
        bt.open(wal)  # the wal_dir as a local store: it is the bucket store's folder
    other = dataclasses.replace(s3_bucket, prefix=f"{s3_bucket.prefix}/other")
    with pytest.raises(bt.StoreLockedError, match="another folder for wal_dir"):
        bt.open(other.uri, storage_options=so, wal_dir=wal)
    make_table(second).append(frame(0, 5))
    second.close()
    assert _bt_threads() == ["bt_frames-lease", "bt_frames-mirror"]  # the first handle still holds it
    first["t"].append(frame(5, 5))
    first.close()
    assert _bt_threads() == []
    with bt.open(s3_bucket.uri, storage_options=so, read_only=True) as reader:
        assert reader["t"].read().get_column("x").to_list() == list(range(10))


def test_opening_the_same_bucket_store_again_with_other_storage_options_is_refused(
    s3_bucket: s3server.Bucket, s3_proxy: faultproxy.FaultProxy, tmp_path: Path
) -> None:
    """Another endpoint (or other credentials) is another way to the bucket, maybe another bucket: handing back
    the open store would silently write through the first one's; the refusal does not print the options."""
    so, wal = s3_bucket.storage_options, tmp_path / "w"
    via = s3_bucket.via(s3_proxy.endpoint)
    with bt.open(s3_bucket.uri, storage_options=so, wal_dir=wal) as first:
        with pytest.raises(bt.StoreLockedError, match="other storage_options") as e:
            bt.open(s3_bucket.uri, storage_options=via.storage_options, wal_dir=wal)
        assert s3_proxy.endpoint not in str(e.value)
        with pytest.raises(bt.StoreLockedError, match="other storage_options"):  # (not a dict: no raw error)
            bt.open(s3_bucket.uri, storage_options="aws_region=x", wal_dir=wal)  # type: ignore[arg-type]
        assert bt.open(s3_bucket.uri, storage_options=dict(so), wal_dir=wal) is first  # equal options: the same
        first.close()  # (gives the second handle back)


def test_a_table_that_loses_its_delta_log_loses_it_in_the_bucket(s3_bucket: s3server.Bucket, tmp_path: Path) -> None:
    # a column Delta cannot represent removes the table's log; left in the bucket, it would show other
    # engines the rows of before the change
    with writer(s3_bucket, tmp_path / "w", 10) as t:
        assert any("/_delta_log/" in k for k in keys_of(s3_bucket))
        with pytest.warns(bt.DeltaIncompatibleWarning):
            t.add_columns({"u": pl.UInt32})
        t.append(frame(10, 10).with_columns(u=pl.lit(1, pl.UInt32)))
        t.flush()
        assert t.delta_log.state == "unsupported"
    assert not [k for k in keys_of(s3_bucket) if "/_delta_log/" in k]


def test_a_folder_under_the_prefix_that_is_no_table_is_left_alone(
    s3_bucket: s3server.Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    so = s3_bucket.storage_options
    seed(s3_bucket, tmp_path / "w", 60)
    client = s3_bucket.server.boto3_client()
    mine = [
        "t/notes/readme.txt",
        "t/notes/blocks/00000000000000000001-00000000000000000001.1of1.0123456789abcdef.parquet",
    ]
    for key in mine:
        client.put_object(Bucket=s3_bucket.name, Key=key, Body=b"x")
    monkeypatch.setattr(remote, "ORPHAN_GRACE_S", 0.0)
    with bt.open(s3_bucket.uri, storage_options=so, wal_dir=tmp_path / "w") as store:
        assert store["t"].read().height == 60
        assert store.tables == ["t"]
    with bt.open(s3_bucket.uri, storage_options=so, read_only=True) as reader:
        assert reader.tables == ["t"], "a reader lists what a writer lists: folders with a table.json"
        with pytest.raises(bt.BtError, match="notes"):
            reader.table("notes")
    assert all(k in keys_of(s3_bucket) for k in mine)  # nothing the store did not write is deleted


def test_a_prefix_holding_someone_elses_objects_is_refused_and_left_as_it_was(
    s3_bucket: s3server.Bucket, tmp_path: Path
) -> None:
    client = s3_bucket.server.boto3_client()
    client.put_object(Bucket=s3_bucket.name, Key="t/reports/2024.csv", Body=b"a,b\n")
    before = keys_of(s3_bucket)
    with pytest.raises(bt.BtError, match=r"(?s)is not a bt_frames store.*reports/2024.csv.*new or empty prefix"):
        bt.open(s3_bucket.uri, storage_options=s3_bucket.storage_options, wal_dir=tmp_path / "w")
    assert keys_of(s3_bucket) == before, "a refused open wrote into someone else's prefix"
    assert _bt_threads() == []
    own = dataclasses.replace(s3_bucket, prefix=f"{s3_bucket.prefix}/db")  # the fix the message gives
    seed(own, tmp_path / "w2", 3)
    assert "t/db/bt_frames.json" in keys_of(s3_bucket)
    assert "t/reports/2024.csv" in keys_of(s3_bucket)


@pytest.mark.parametrize(
    ("key", "body"),
    [
        ("t/", b""),  # the "folder" the S3 console's Create folder makes: the prefix itself, empty
        ("t/_lease.json", b'{"owner": "gone", "expires": "2000-01-01T00:00:00+00:00"}'),  # a writer's, expired
    ],
)
def test_a_prefix_holding_only_its_folder_object_or_a_stale_lease_is_a_new_store(
    s3_bucket: s3server.Bucket, tmp_path: Path, key: str, body: bytes
) -> None:
    """Neither is someone else's data: a store is created there (a live lease still refuses the open)."""
    s3_bucket.server.boto3_client().put_object(Bucket=s3_bucket.name, Key=key, Body=body)
    seed(s3_bucket, tmp_path / "w", 3)
    assert "t/bt_frames.json" in keys_of(s3_bucket)
    with bt.open(s3_bucket.uri, storage_options=s3_bucket.storage_options, read_only=True) as reader:
        assert reader["t"].read().height == 3


def test_a_prefix_holding_only_a_live_lease_is_refused_as_locked(s3_bucket: s3server.Bucket, tmp_path: Path) -> None:
    """A writer that took the lease of a prefix whose marker another open has not seen yet: locked, not foreign."""
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    lease = json.dumps({"owner": "other", "host": "elsewhere", "pid": 1, "expires": later}).encode()
    s3_bucket.server.boto3_client().put_object(Bucket=s3_bucket.name, Key="t/_lease.json", Body=lease)
    with pytest.raises(bt.StoreLockedError, match="owner other"):
        bt.open(s3_bucket.uri, storage_options=s3_bucket.storage_options, wal_dir=tmp_path / "w")


def test_a_lease_whose_release_failed_does_not_lock_out_the_same_process(
    s3_bucket: s3server.Bucket, s3_proxy: faultproxy.FaultProxy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # close() could not delete the lease (the bucket failed then): this process knows the lease is no
    # longer held, so reopening here need not wait for it to expire
    via = s3_bucket.via(s3_proxy.endpoint)
    so = via.storage_options
    with bt.open(via.uri, storage_options=so, wal_dir=tmp_path / "w", lease_seconds=600) as store:
        make_table(store).append(frame(0, 5))
        s3_proxy.add(faultproxy.Rule("error", method="POST", key="*", status=503, times=20))
        s3_proxy.add(faultproxy.Rule("error", method="DELETE", key="t/_lease.json", status=503, times=20))
    assert "t/_lease.json" in keys_of(s3_bucket)
    s3_proxy.reset()
    with bt.open(via.uri, storage_options=so, wal_dir=tmp_path / "w") as store:
        assert store["t"].read().height == 5


@pytest.mark.filterwarnings(DASK_INPLACE_WARNING)
def test_a_bucket_readers_files_and_to_dask_read_the_blocks_it_has_not_fetched_yet(
    s3_bucket: s3server.Bucket, tmp_path: Path
) -> None:
    import dask

    so = s3_bucket.storage_options
    seed(s3_bucket, tmp_path / "w", 120)
    with bt.open(s3_bucket.uri, storage_options=so, read_only=True) as reader:
        t = reader["t"]
        files = t.files()
        assert len(files) == 3
        assert all(os.path.isfile(f) for f in files)  # what Spark or DuckDB are given must be there
        with dask.config.set(scheduler="sync"):
            got = t.to_dask().compute()
        assert got["x"].tolist() == list(range(120))


def test_a_bucket_readers_delta_log_status_is_the_buckets_log(s3_bucket: s3server.Bucket, tmp_path: Path) -> None:
    so = s3_bucket.storage_options
    with writer(s3_bucket, tmp_path / "w", 60) as t:
        assert t.delta_log.ok
    with bt.open(s3_bucket.uri, storage_options=so, read_only=True) as reader:
        status = reader["t"].delta_log
        assert status.uri == f"{s3_bucket.uri}/t/blocks"  # where other engines read it
        assert status.ok, status


def test_a_takeover_whose_fence_cannot_be_published_fails_the_open_and_leaves_nothing_running(
    s3_bucket: s3server.Bucket, s3_proxy: faultproxy.FaultProxy, tmp_path: Path
) -> None:
    seed(s3_bucket, tmp_path / "a", 10)
    client = s3_bucket.server.boto3_client()  # a stalled writer on another host, its lease expired
    stale = {"owner": "x", "host": "elsewhere", "pid": 1, "expires": "2020-01-01T00:00:00.000+00:00"}
    client.put_object(Bucket=s3_bucket.name, Key="t/_lease.json", Body=json.dumps(stale).encode())
    via = s3_bucket.via(s3_proxy.endpoint)
    s3_proxy.add(faultproxy.Rule("error", method="PUT", key="t/t/_manifest/*", status=503, times=40))
    with pytest.raises(bt.BtError):
        bt.open(via.uri, storage_options=via.storage_options, wal_dir=tmp_path / "b")
    assert _bt_threads() == []  # no lease renewed forever by a store nobody can close
    s3_proxy.reset()
    with bt.open(via.uri, storage_options=via.storage_options, wal_dir=tmp_path / "b") as store:  # not locked
        assert store["t"].read().height == 10


def table_keys(bucket: s3server.Bucket, table: str = "t") -> list[str]:
    return [k for k in keys_of(bucket) if k.startswith(f"t/{table}/")]


TOMBSTONE = "t/t/_manifest/_dropped.json"  # a dropped table's: it stays until the name is created again

# objects under the table's folder that the store did not make: a drop leaves them
FOREIGN = [
    "t/t/notes.txt",
    "t/t/_manifest/notes.json",
    "t/t/blocks/readme.txt",
    "t/t/blocks/sub/00000000000000000001-00000000000000000001.1of1.0123456789abcdef.parquet",
    "t/t/blocks/_delta_log/mine.txt",
]


def put_foreign(bucket: s3server.Bucket) -> None:
    client = bucket.server.boto3_client()
    for key in FOREIGN:
        client.put_object(Bucket=bucket.name, Key=key, Body=b"x")


def test_drop_table_in_a_bucket_deletes_what_the_store_made_and_nothing_else(
    s3_bucket: s3server.Bucket, tmp_path: Path
) -> None:
    so = s3_bucket.storage_options
    with writer(s3_bucket, tmp_path / "w", 120) as t:
        t.append(frame(120, 5))
        t.flush()
        t.store.sync()
        made = table_keys(s3_bucket)
        assert {"t/t/table.json", "t/t/_head.bt"} <= set(made)
        assert [k for k in made if "/_manifest/" in k]
        assert [k for k in made if k.endswith(".parquet")]
        assert [k for k in made if "/_delta_log/" in k]
        put_foreign(s3_bucket)
        t.store.drop_table("t")  # returns once the bucket no longer shows the table
        assert sorted(table_keys(s3_bucket)) == sorted([*FOREIGN, TOMBSTONE])
        assert t.store.tables == []
        assert not (tmp_path / "w" / "t").exists()
        with pytest.raises(bt.TableDroppedError):
            t.read()
    with bt.open(s3_bucket.uri, storage_options=so, read_only=True) as reader:
        assert reader.tables == []
        with pytest.raises(bt.TableNotFoundError):
            reader["t"]
    for wal_dir in ("w", "other"):  # the next writer open (this disk or another) does not bring it back
        with bt.open(s3_bucket.uri, storage_options=so, wal_dir=tmp_path / wal_dir) as store:
            assert store.tables == []
    assert sorted(table_keys(s3_bucket)) == sorted([*FOREIGN, TOMBSTONE])


def test_a_drop_deletes_in_batches_the_delta_log_before_the_blocks(
    s3_bucket: s3server.Bucket, s3_proxy: faultproxy.FaultProxy, tmp_path: Path
) -> None:
    """A table of many blocks is not one DELETE per object: DeleteObjects batches; the Delta log goes in the
    first, so another engine never reads a log whose files are gone."""
    via = s3_bucket.via(s3_proxy.endpoint)
    with writer(via, tmp_path / "w") as t:
        for i in range(30):
            t.append(frame(i * 10, 10))
            t.flush()  # 30 blocks, 31 versions, 31 Delta commits
        t.store.sync()
        made = table_keys(s3_bucket)
        assert len(made) > 90, made
        s3_proxy.reset()
        t.store.drop_table("t")
        deletes = [r for r in s3_proxy.requests() if r.kind in ("POST", "DELETE")]  # (before close frees the lease)
        assert len(deletes) == 2, deletes  # the first batch, then the versions and blocks (the tombstone is a PUT)
        assert all(r.kind == "POST" and "delete" in r.query for r in deletes), deletes
    assert sorted(table_keys(s3_bucket)) == [TOMBSTONE]


def test_a_table_dropped_by_a_writer_on_another_disk_is_not_published_again_from_a_stale_copy(
    s3_bucket: s3server.Bucket, tmp_path: Path
) -> None:
    """Disk "a" keeps a complete copy of the table; a writer on disk "b" drops it. The next open on "a" must
    drop its copy, not publish it again (it cannot tell it from versions a crash kept from the bucket)."""
    so = s3_bucket.storage_options
    with writer(s3_bucket, tmp_path / "a", 60):
        pass
    with bt.open(s3_bucket.uri, storage_options=so, wal_dir=tmp_path / "b") as store:
        store.drop_table("t")
    for _ in range(2):
        with bt.open(s3_bucket.uri, storage_options=so, wal_dir=tmp_path / "a") as store:
            assert store.tables == []
            store.sync()
        assert not (tmp_path / "a" / "t").exists()
        assert table_keys(s3_bucket) == [TOMBSTONE]
    with bt.open(s3_bucket.uri, storage_options=so, read_only=True) as reader:
        assert reader.tables == []
    with bt.open(s3_bucket.uri, storage_options=so, wal_dir=tmp_path / "a") as store:  # the name is free again
        make_table(store).append(frame(500, 2))
    assert TOMBSTONE not in table_keys(s3_bucket)
    with bt.open(s3_bucket.uri, storage_options=so, read_only=True) as reader:
        assert reader["t"].read().get_column("x").to_list() == [500, 501]


def test_creating_a_dropped_name_while_the_bucket_fails_creates_nothing(
    s3_bucket: s3server.Bucket, s3_proxy: faultproxy.FaultProxy, tmp_path: Path
) -> None:
    via = s3_bucket.via(s3_proxy.endpoint)
    with writer(via, tmp_path / "w", 60) as t:
        t.store.drop_table("t")
        s3_proxy.add(faultproxy.Rule("error", method="POST", times=1000))  # (obstore deletes with POST ?delete)
        with pytest.raises(bt.BtError, match=r"table 't': the tombstone .* could not be deleted.*nothing was created"):
            make_table(t.store)
        assert t.store.tables == []
        assert not (tmp_path / "w" / "t").exists()
        s3_proxy.reset()
        make_table(t.store).append(frame(7, 1))
    with bt.open(s3_bucket.uri, storage_options=s3_bucket.storage_options, read_only=True) as reader:
        assert reader["t"].read().get_column("x").to_list() == [7]


def test_a_fenced_writer_s_refused_drop_leaves_the_new_writer_s_tombstone_alone(
    s3_bucket: s3server.Bucket, tmp_path: Path
) -> None:
    """A writer that lost its lease writes nothing to the bucket: taking back its "own" failed tombstone must
    not delete the one the lease holder put for its drop (readers would see the half-deleted table again)."""
    so = s3_bucket.storage_options
    old, t = stalled_writer(s3_bucket, tmp_path / "a")
    with bt.open(s3_bucket.uri, storage_options=so, wal_dir=tmp_path / "b") as new:
        t.append(frame(60, 1))
        with pytest.raises(bt.MirrorConflictError):
            t.flush()  # fenced
        new.drop_table("t")
        assert TOMBSTONE in keys_of(s3_bucket)
        with pytest.raises(bt.BtError, match="nothing was dropped"):
            old.drop_table("t")
        assert TOMBSTONE in keys_of(s3_bucket)
    with pytest.raises(bt.MirrorConflictError):
        old.close()
    with bt.open(s3_bucket.uri, storage_options=so, read_only=True) as reader:
        assert reader.tables == []


def test_an_open_that_finds_a_drop_to_finish_opens_while_the_bucket_refuses_deletes(
    s3_bucket: s3server.Bucket, s3_proxy: faultproxy.FaultProxy, tmp_path: Path
) -> None:
    """The table is gone for everyone once its tombstone is in: deleting its objects is cleanup, retried in the
    background, not a reason to refuse the store (a bucket whose policy denies deletes would lock it out)."""
    so = s3_bucket.storage_options
    seed(s3_bucket, tmp_path / "w", 60)
    old_blocks = [k for k in table_keys(s3_bucket) if k.endswith(".parquet")]
    assert old_blocks
    s3_bucket.server.boto3_client().put_object(Bucket=s3_bucket.name, Key=TOMBSTONE, Body=b"{}")  # a killed drop
    via = s3_bucket.via(s3_proxy.endpoint)
    s3_proxy.add(faultproxy.Rule("error", method="POST", times=1000))  # (obstore deletes with POST ?delete)
    with bt.open(via.uri, storage_options=via.storage_options, wal_dir=tmp_path / "w") as store:
        assert store.tables == []
        assert not (tmp_path / "w" / "t").exists()
        store.create_table("u", frame(0, 1).schema, time_column="ts").append(frame(3, 1))
        with pytest.raises(bt.BtError, match="drop is not finished"):
            make_table(store)
        s3_proxy.reset()
        make_table(store).append(frame(9, 1))  # (waits for the drop, now that the bucket answers)
    assert not set(old_blocks) & set(keys_of(s3_bucket))
    with bt.open(s3_bucket.uri, storage_options=so, read_only=True) as reader:
        assert reader["t"].read().get_column("x").to_list() == [9]
        assert reader["u"].read().get_column("x").to_list() == [3]


def test_a_forked_child_s_drop_table_is_refused_at_once(s3_bucket: s3server.Bucket, tmp_path: Path) -> None:
    """The child has no mirror thread: a drop it queued would wait for it forever (and drop the parent's table)."""
    so = s3_bucket.storage_options
    with writer(s3_bucket, tmp_path / "w", 5) as t:
        store = t.store
        with warnings.catch_warnings():  # (fork() of a process with threads: the child only raises and exits)
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                signal.alarm(20)  # never a hung child
                with contextlib.suppress(bt.BtError):
                    store.drop_table("t")
                    code = 2  # dropped: wrong
                code = 0 if code == 1 else code
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert store.tables == ["t"]
        assert TOMBSTONE not in keys_of(s3_bucket)
        t.append(frame(5, 1))
    with bt.open(s3_bucket.uri, storage_options=so, read_only=True) as reader:
        assert reader["t"].read().height == 6


def test_a_table_created_again_after_a_drop_is_published_from_version_1(
    s3_bucket: s3server.Bucket, tmp_path: Path
) -> None:
    so = s3_bucket.storage_options
    with writer(s3_bucket, tmp_path / "w", 60) as t:
        for i in range(3):
            t.append(frame(60 + i, 1))
            t.flush()
        store = t.store
        store.drop_table("t")
        again = store.create_table("t", frame(0, 1).schema, time_column="ts", max_block_rows=50)
        again.append(frame(1000, 3))
        again.flush()
        store.sync()
        local = [mf.version_name(v) for v in mf.list_versions(tmp_path / "w" / "t")]
        assert local[0] == mf.version_name(1)
        assert sorted(k.rpartition("/")[2] for k in bucket_versions(s3_bucket)) == local
        with bt.open(s3_bucket.uri, storage_options=so, read_only=True) as reader:
            assert reader["t"].read().get_column("x").to_list() == [1000, 1001, 1002]
    with bt.open(s3_bucket.uri, storage_options=so, wal_dir=tmp_path / "other") as store:
        assert store["t"].read().get_column("x").to_list() == [1000, 1001, 1002]


def test_a_reader_that_had_the_table_open_sees_it_dropped_after_refresh(
    s3_bucket: s3server.Bucket, tmp_path: Path
) -> None:
    so = s3_bucket.storage_options
    with writer(s3_bucket, tmp_path / "w", 60) as t:
        t.store.sync()
        with bt.open(s3_bucket.uri, storage_options=so, read_only=True) as reader:
            seen = reader["t"]
            assert seen.read().height == 60
            t.store.drop_table("t")
            reader.refresh()
            assert "t" not in reader.tables
            with pytest.raises(bt.TableDroppedError, match=f"'t' was dropped from store '{s3_bucket.uri}'"):
                seen.read()
            with pytest.raises(bt.TableNotFoundError, match=f"store '{s3_bucket.uri}' has no table 't'"):
                reader["t"]  # the bucket named, not the reader's scratch folder


def test_a_reader_refresh_keeps_a_table_whose_head_object_is_missing(
    s3_bucket: s3server.Bucket, tmp_path: Path
) -> None:
    """No head object and no newer version is a current table (the head is a cache: a store written before it
    existed has none), not a dropped one: the reader keeps it, through either refresh."""
    so = s3_bucket.storage_options
    seed(s3_bucket, tmp_path / "w", 60)
    with bt.open(s3_bucket.uri, storage_options=so, read_only=True) as reader:
        seen = reader["t"]
        assert seen.read().height == 60
        s3_bucket.server.boto3_client().delete_object(Bucket=s3_bucket.name, Key="t/t/_head.bt")
        reader.refresh()
        assert reader.tables == ["t"]
        assert seen.read().height == 60
        seen.refresh()
        assert seen.read().height == 60


@pytest.mark.parametrize("head", [True, False])
def test_a_reader_refreshed_across_a_drop_and_a_re_creation_reads_the_new_table(
    s3_bucket: s3server.Bucket, tmp_path: Path, head: bool
) -> None:
    """Version numbers start again at 1 after a drop: a reader that knew the old table's versions (it missed
    the tombstone between two refreshes) must not build the new table on the old one's files (found from the
    head object, or from the newest version it holds when the head is not there)."""
    so = s3_bucket.storage_options
    with writer(s3_bucket, tmp_path / "w", 60) as t:
        t.add_columns({"y": pl.Int64})
        t.append(frame(60, 1).with_columns(y=pl.lit(1, pl.Int64)))
        t.flush()
        t.store.sync()
        with (
            bt.open(s3_bucket.uri, storage_options=so, read_only=True) as reader,
            bt.open(s3_bucket.uri, storage_options=so, read_only=True) as other,
        ):
            seen, held = reader["t"], other["t"]
            assert seen.read().height == held.read().height == 61
            t.store.drop_table("t")
            again = t.store.create_table("t", pl.DataFrame({"ts": [T0], "z": ["a"]}).schema, time_column="ts")
            again.append(pl.DataFrame({"ts": [T0], "z": ["new"]}))
            again.flush()
            t.store.sync()
            if not head:
                s3_bucket.server.boto3_client().delete_object(Bucket=s3_bucket.name, Key="t/t/_head.bt")
            reader.refresh()
            got = reader["t"].read()
            assert got.columns == ["ts", "z"]
            assert got.get_column("z").to_list() == ["new"]
            with pytest.raises(bt.TableDroppedError):  # the Table object held was the dropped table
                seen.read()
            with pytest.raises(bt.TableDroppedError):  # (refreshed by itself, too)
                held.refresh()
            assert other["t"].read().get_column("z").to_list() == ["new"]


def test_a_reader_sees_no_table_while_its_drop_is_under_way(s3_bucket: s3server.Bucket, tmp_path: Path) -> None:
    """The tombstone alone (every other object still there) is a dropped table to readers."""
    so = s3_bucket.storage_options
    seed(s3_bucket, tmp_path / "w", 60)
    client = s3_bucket.server.boto3_client()
    with bt.open(s3_bucket.uri, storage_options=so, read_only=True) as reader:
        seen = reader["t"]
        client.put_object(Bucket=s3_bucket.name, Key="t/t/_manifest/_dropped.json", Body=b"{}")
        assert reader.tables == []
        reader.refresh()
        with pytest.raises(bt.TableDroppedError):
            seen.read()
    with bt.open(s3_bucket.uri, storage_options=so, read_only=True) as reader:
        assert "t" not in reader
        with pytest.raises(bt.TableNotFoundError):
            reader["t"]


@pytest.mark.crash
@pytest.mark.parametrize("step", ["tombstone", "delete"])
def test_a_writer_killed_during_a_drop_leaves_it_to_the_next_open_which_finishes_it(
    s3_bucket: s3server.Bucket, tmp_path: Path, step: str
) -> None:
    """Killed just after the tombstone's PUT (the local copy still there) or before the deletion (the
    local copy gone, every object in the bucket): no reader sees the table, and the next writer's open
    finishes the drop instead of bringing the table back from either copy."""
    so = s3_bucket.storage_options
    seed(s3_bucket, tmp_path / "w", 60)
    put_foreign(s3_bucket)
    paused = tmp_path / "paused"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import bt_frames as bt\n"
            f"s = bt.open({s3_bucket.uri!r}, storage_options={so!r}, wal_dir={str(tmp_path / 'w')!r})\n"
            "s.drop_table('t')\n",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "BT_FRAMES_TEST_PAUSE_IN_DROP": f"{step}:{paused}"},
    )
    kill_at_the_seam(child, paused)
    assert "t/t/_manifest/_dropped.json" in keys_of(s3_bucket)
    assert "t/t/table.json" in keys_of(s3_bucket)  # nothing deleted yet
    assert (tmp_path / "w" / "t" / "table.json").exists() == (step == "tombstone")
    with bt.open(s3_bucket.uri, storage_options=so, read_only=True) as reader:
        assert reader.tables == []
        with pytest.raises(bt.TableNotFoundError):
            reader["t"]
    with bt.open(s3_bucket.uri, storage_options=so, wal_dir=tmp_path / "w") as store:
        assert store.tables == []
        assert not (tmp_path / "w" / "t").exists()
    assert sorted(table_keys(s3_bucket)) == sorted([*FOREIGN, TOMBSTONE])
    with bt.open(s3_bucket.uri, storage_options=so, wal_dir=tmp_path / "w") as store:
        assert store.tables == []


@pytest.mark.parametrize("fault", ["error", "drop"])  # refused, or stored with every response lost
def test_a_drop_whose_tombstone_the_bucket_refuses_changes_nothing(
    s3_bucket: s3server.Bucket, s3_proxy: faultproxy.FaultProxy, tmp_path: Path, fault: Any
) -> None:
    via = s3_bucket.via(s3_proxy.endpoint)
    with writer(via, tmp_path / "w", 60) as t:
        t.store.sync()
        before = sorted(table_keys(s3_bucket))
        s3_proxy.add(faultproxy.Rule(fault, method="PUT", key="t/t/_manifest/_dropped.json", times=1000))
        with pytest.raises(bt.BtError, match=r"(?s)table 't': drop_table could not put its tombstone.*nothing was"):
            t.store.drop_table("t")
        s3_proxy.reset()
        after = table_keys(s3_bucket)
        assert set(before) <= set(after)  # (closing the table may have published a version)
        assert "t/t/_manifest/_dropped.json" not in after
        assert t.store.tables == ["t"]
        t2 = t.store["t"]
        t2.append(frame(60, 1))
        t2.flush()
    with bt.open(s3_bucket.uri, storage_options=s3_bucket.storage_options, read_only=True) as reader:
        assert reader["t"].read().get_column("x").to_list() == list(range(61))


def test_a_drop_whose_deletions_fail_is_finished_in_the_background(
    s3_bucket: s3server.Bucket, s3_proxy: faultproxy.FaultProxy, tmp_path: Path
) -> None:
    via = s3_bucket.via(s3_proxy.endpoint)
    with writer(via, tmp_path / "w", 60) as t:
        store = t.store
        store.sync()
        # obstore deletes with a POST ?delete (a batch of one)
        rule = s3_proxy.add(faultproxy.Rule("error", method="POST", times=1000))
        with pytest.raises(bt.BtError, match=r"(?s)table 't' is dropped.*retried in the background"):
            store.drop_table("t")
        assert store.tables == []
        with bt.open(s3_bucket.uri, storage_options=s3_bucket.storage_options, read_only=True) as reader:
            assert reader.tables == []
        with pytest.raises(bt.BtError, match="drop is not finished"):
            store.create_table("t", frame(0, 1).schema, time_column="ts")
        assert store.tables == []
        assert rule.fired
        s3_proxy.reset()
        store.sync()
        assert table_keys(s3_bucket) == [TOMBSTONE]
        store.create_table("t", frame(0, 1).schema, time_column="ts").append(frame(7, 1))
    with bt.open(s3_bucket.uri, storage_options=s3_bucket.storage_options, read_only=True) as reader:
        assert reader["t"].read().get_column("x").to_list() == [7]
