"""The Part 1 readers read a Delta table in a moto bucket with the settings of tests/helpers/s3readers.py.

The table is written by deltalake alone (no bt_frames code), so these tests pin the readers' settings
against moto; the engine's tests reuse the same helpers on a bt_frames table.
"""

from __future__ import annotations

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from tests.helpers import s3readers, s3server
from tests.helpers.faultproxy import FaultProxy


@pytest.fixture
def probe(s3_bucket: s3server.Bucket) -> tuple[str, pl.DataFrame]:
    uri = f"{s3_bucket.uri}/probe"
    return uri, s3readers.write_probe_delta(uri, s3_bucket.storage_options)


def test_the_probe_table_is_two_delta_commits_and_two_parquet_files(
    s3_bucket: s3server.Bucket, probe: tuple[str, pl.DataFrame]
) -> None:
    keys = s3_bucket.keys()
    assert [k for k in keys if k.startswith("t/probe/_delta_log/")] == [
        "t/probe/_delta_log/00000000000000000000.json",
        "t/probe/_delta_log/00000000000000000001.json",
    ]
    assert len([k for k in keys if k.endswith(".parquet")]) == 2


def test_polars_scan_delta_reads_the_bucket(s3_bucket: s3server.Bucket, probe: tuple[str, pl.DataFrame]) -> None:
    uri, want = probe
    got = pl.scan_delta(uri, storage_options=s3_bucket.storage_options).sort("ts").collect()
    assert_frame_equal(got, want)


def test_polars_scan_parquet_glob_reads_the_bucket(s3_bucket: s3server.Bucket, probe: tuple[str, pl.DataFrame]) -> None:
    uri, want = probe
    got = pl.scan_parquet(f"{uri}/*.parquet", storage_options=s3_bucket.storage_options).sort("ts").collect()
    assert_frame_equal(got, want)


def test_duckdb_delta_scan_and_read_parquet_read_the_bucket(
    s3_bucket: s3server.Bucket, probe: tuple[str, pl.DataFrame]
) -> None:
    uri, want = probe
    con = s3readers.duckdb_connect(s3_bucket.storage_options)
    got = con.sql(f"SELECT * FROM delta_scan('{uri}') ORDER BY ts").pl()
    # DuckDB names UTC "Etc/UTC"; the instants must be the same
    assert_frame_equal(got.with_columns(pl.col("ts").dt.convert_time_zone("UTC")), want)
    assert con.sql(f"SELECT count(*), sum(price) FROM read_parquet('{uri}/*.parquet')").fetchone() == (6, 24.0)


# dask 2026.8's parquet reader calls reset_index(inplace=True), which pandas 3.1 deprecates: not ours to fix.
DASK_INPLACE_WARNING = "ignore:The inplace keyword in DataFrame.reset_index:pandas.errors.Pandas4Warning"


@pytest.mark.filterwarnings(DASK_INPLACE_WARNING)
def test_dask_read_parquet_with_s3fs_reads_the_bucket(
    s3_bucket: s3server.Bucket, probe: tuple[str, pl.DataFrame]
) -> None:
    import dask.dataframe as dd

    uri, want = probe
    ddf = dd.read_parquet(f"{uri}/*.parquet", storage_options=s3readers.s3fs_options(s3_bucket.storage_options))
    got = ddf.compute().sort_values("ts").reset_index(drop=True)
    assert got["price"].tolist() == want["price"].to_list()
    assert got["symbol"].tolist() == want["symbol"].to_list()


@pytest.mark.filterwarnings(DASK_INPLACE_WARNING)
@pytest.mark.parametrize("reader", ["polars_delta", "duckdb_delta", "dask_parquet"])
def test_each_reader_goes_through_the_endpoint_it_is_given(
    s3_bucket: s3server.Bucket, s3_proxy: FaultProxy, probe: tuple[str, pl.DataFrame], reader: str
) -> None:
    """The settings route every request to the given endpoint: the proxy sees the reads (and can count them)."""
    uri, want = probe
    so = s3_bucket.via(s3_proxy.endpoint).storage_options
    if reader == "polars_delta":
        n = pl.scan_delta(uri, storage_options=so).collect().height
    elif reader == "duckdb_delta":
        n = s3readers.duckdb_connect(so).sql(f"SELECT count(*) FROM delta_scan('{uri}')").fetchone()[0]
    else:
        import dask.dataframe as dd

        n = len(dd.read_parquet(f"{uri}/*.parquet", storage_options=s3readers.s3fs_options(so)))
    assert n == want.height
    parquet_gets = [r for r in s3_proxy.requests("GET") if r.key.endswith(".parquet")]
    assert {r.key.rsplit("/", 1)[0] for r in parquet_gets} == {"t/probe"}
    assert s3_proxy.snapshot()["GET"] >= 2
