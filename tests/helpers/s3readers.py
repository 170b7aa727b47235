"""The settings each Part 1 reader needs to read a table in a moto bucket, from the engine's storage options.

Every helper takes the ``storage_options`` dict the engine and Polars take
(``aws_endpoint_url``, ``aws_access_key_id``, ``aws_secret_access_key``,
``aws_region``, ``aws_allow_http``; tests/helpers/s3server.py builds it), so the
same call reaches moto directly or through the fault proxy.

- Polars: ``pl.scan_delta(uri, storage_options=so)`` and
  ``pl.scan_parquet(uri + "/*.parquet", storage_options=so)`` take the dict as is.
- deltalake: ``DeltaTable(uri, storage_options=so)`` / ``write_deltalake`` take it as is.
- DuckDB: ``duckdb_connect(so)`` LOADs httpfs and delta from the
  ``duckdb-extension-httpfs`` / ``duckdb-extension-delta`` wheels (no download:
  ``LOAD '<path>'``; a bare ``LOAD httpfs`` would look in ~/.duckdb and then the
  network) and creates an S3 SECRET with ``ENDPOINT host:port``,
  ``URL_STYLE 'path'`` and ``USE_SSL false``; ``read_parquet('s3://...')`` and
  ``delta_scan('s3://...')`` then work.
- Dask: ``dd.read_parquet(..., storage_options=s3fs_options(so))``, s3fs's
  names (``key``, ``secret``, ``endpoint_url``, ``client_kwargs.region_name``).

``write_probe_delta`` writes a tiny Delta table with deltalake alone: what the
self-tests read back, with no bt_frames code involved.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl


def _endpoint(so: Mapping[str, str]) -> urllib.parse.SplitResult:
    return urllib.parse.urlsplit(so["aws_endpoint_url"])


def duckdb_extension_path(name: str) -> Path:
    """The ``<name>.duckdb_extension`` file shipped by the ``duckdb-extension-<name>`` wheel for this DuckDB."""
    import importlib

    import duckdb

    pkg = importlib.import_module(f"duckdb_extension_{name}")
    assert pkg.__file__ is not None
    path = Path(pkg.__file__).parent / "extensions" / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: install duckdb-extension-{name}=={duckdb.__version__}")
    return path


def duckdb_s3_secret(con: Any, so: Mapping[str, str], name: str = "bt_s3") -> None:
    """Load httpfs + delta from their wheels into ``con`` and point an S3 secret at the endpoint of ``so``."""
    for ext in ("httpfs", "delta"):
        con.execute(f"LOAD '{duckdb_extension_path(ext)}'")
    ep = _endpoint(so)
    use_ssl = "false" if ep.scheme == "http" else "true"
    con.execute(
        f"CREATE OR REPLACE SECRET {name} (TYPE s3, KEY_ID '{so['aws_access_key_id']}', "
        f"SECRET '{so['aws_secret_access_key']}', REGION '{so.get('aws_region', 'us-east-1')}', "
        f"ENDPOINT '{ep.netloc}', URL_STYLE 'path', USE_SSL {use_ssl})"
    )


def duckdb_connect(so: Mapping[str, str]) -> Any:
    """A new in-memory DuckDB connection that reads ``s3://`` from the endpoint of ``so``."""
    import duckdb

    con = duckdb.connect()
    duckdb_s3_secret(con, so)
    return con


def s3fs_options(so: Mapping[str, str]) -> dict[str, Any]:
    """``storage_options`` for fsspec/s3fs (Dask's ``read_parquet``) equal to the engine's ``so``."""
    return {
        "key": so["aws_access_key_id"],
        "secret": so["aws_secret_access_key"],
        "endpoint_url": so["aws_endpoint_url"],
        "client_kwargs": {"region_name": so.get("aws_region", "us-east-1")},
        "skip_instance_cache": True,  # a fresh client per call: a test's proxy or server is not reused later
    }


def probe_frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "ts": pl.datetime_range(
                pl.datetime(2024, 1, 1, time_zone="UTC"),
                pl.datetime(2024, 1, 1, 0, 0, 5, time_zone="UTC"),
                "1s",
                eager=True,
            ).dt.cast_time_unit("us"),
            "symbol": ["BTC", "ETH", "SOL", "BTC", "ETH", "SOL"],
            "price": [1.5, 2.5, 3.5, 4.5, 5.5, 6.5],
        }
    )


def write_probe_delta(uri: str, so: Mapping[str, str]) -> pl.DataFrame:
    """Write ``probe_frame()`` as a Delta table at ``uri`` with deltalake (two commits, two files); return it."""
    import deltalake

    df = probe_frame()
    deltalake.write_deltalake(uri, df.head(3).to_arrow(), storage_options=dict(so))
    deltalake.write_deltalake(uri, df.tail(3).to_arrow(), mode="append", storage_options=dict(so))
    return df
