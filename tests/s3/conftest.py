"""Fixtures of the object-storage tests: a moto S3 server on loopback, a fresh bucket per test.

``s3_server`` (session) is one moto process in its own process group, killed
at session end; ``s3_bucket`` (function) is a new bucket on it with a
``Bucket`` (tests/helpers/s3server.py): ``.uri`` (``s3://<name>/t``),
``.name``, ``.storage_options``, ``.keys()``. ``s3_proxy`` (function) is a
``FaultProxy`` (tests/helpers/faultproxy.py) in front of the server: reach the
bucket through it with ``s3_bucket.via(s3_proxy.endpoint)``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import faultproxy, s3server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[s3server.S3Server]:
    server = s3server.start(log_path=tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server: s3server.S3Server) -> s3server.Bucket:
    if not s3_server.alive():
        pytest.fail(f"the moto server died (exit {s3_server.proc.poll()}); log: {s3_server.log_path}")
    name = s3_server.make_bucket()
    return s3server.Bucket(s3_server, name, "t", s3_server.storage_options())


@pytest.fixture
def s3_proxy(s3_server: s3server.S3Server) -> Iterator[faultproxy.FaultProxy]:
    with faultproxy.FaultProxy(s3_server.endpoint) as proxy:
        yield proxy
