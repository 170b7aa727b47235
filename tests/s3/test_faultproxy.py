"""The fault proxy counts what clients do, and its faults have the effects they claim."""

from __future__ import annotations

import io
import time

import polars as pl
import pytest

from tests.helpers import s3server
from tests.helpers.faultproxy import FaultProxy, Rule


def test_counts_equal_the_requests_a_client_made(s3_bucket: s3server.Bucket, s3_proxy: FaultProxy) -> None:
    import obstore

    store = s3_bucket.server.obstore(s3_bucket.name, endpoint=s3_proxy.endpoint)
    for i in range(3):
        obstore.put(store, f"t/k{i}", b"x" * (i + 1))
    assert bytes(obstore.get(store, "t/k1").bytes()) == b"xx"
    assert obstore.head(store, "t/k2")["size"] == 3
    listed = [m["path"] for batch in obstore.list(store, prefix="t/") for m in batch]
    obstore.delete(store, "t/k0")  # object_store deletes with a multi-object delete: POST /<bucket>?delete
    assert sorted(listed) == ["t/k0", "t/k1", "t/k2"]
    assert s3_proxy.snapshot() == {"PUT": 3, "GET": 1, "HEAD": 1, "LIST": 1, "POST": 1}
    assert s3_proxy.requests("POST")[0].query == "delete"
    assert [r.status for r in s3_proxy.requests("PUT")] == [200, 200, 200]
    assert s3_bucket.keys() == ["t/k1", "t/k2"]
    s3_proxy.reset()
    assert s3_proxy.snapshot() == {}
    assert s3_proxy.log == []


def test_a_dropped_response_after_a_put_leaves_the_object_in_the_bucket(
    s3_bucket: s3server.Bucket, s3_proxy: FaultProxy
) -> None:
    import obstore
    from obstore.exceptions import AlreadyExistsError

    store = s3_bucket.server.obstore(s3_bucket.name, endpoint=s3_proxy.endpoint)
    rule = s3_proxy.add(Rule("drop", method="PUT", key="t/manifest/*"))
    # The commit lands, its answer is lost; obstore retries the create, which now finds the key: the client
    # sees AlreadyExistsError for a write that succeeded -- the case a committer must resolve by reading back.
    with pytest.raises(AlreadyExistsError):
        obstore.put(store, "t/manifest/00000001.json", b"v1", mode="create")
    assert rule.fired == 1
    assert [(r.fault, r.status) for r in s3_proxy.requests("PUT")] == [("drop", None), (None, 412)]
    assert s3_bucket.keys() == ["t/manifest/00000001.json"]
    direct = s3_bucket.server.obstore(s3_bucket.name)
    assert bytes(obstore.get(direct, "t/manifest/00000001.json").bytes()) == b"v1"


def test_an_injected_503_is_not_forwarded_and_obstore_retries_it(
    s3_bucket: s3server.Bucket, s3_proxy: FaultProxy
) -> None:
    import obstore

    store = s3_bucket.server.obstore(s3_bucket.name, endpoint=s3_proxy.endpoint)
    s3_proxy.add(Rule("error", method="PUT", key="t/a", status=503, times=2))
    obstore.put(store, "t/a", b"payload")  # object_store's RetryConfig: 503 is retried with backoff
    assert [(r.fault, r.status) for r in s3_proxy.requests("PUT")] == [("error", 503), ("error", 503), (None, 200)]
    assert s3_bucket.keys() == ["t/a"]


def test_an_injected_500_on_a_create_has_no_effect_in_the_bucket(
    s3_bucket: s3server.Bucket, s3_proxy: FaultProxy
) -> None:
    import obstore

    store = s3_bucket.server.obstore(s3_bucket.name, endpoint=s3_proxy.endpoint)
    s3_proxy.add(Rule("error", method="PUT", key="t/b", status=500, times=1))
    obstore.put(store, "t/b", b"v", mode="create")  # retried once; the retry creates (the 500 changed nothing)
    assert [(r.fault, r.status) for r in s3_proxy.requests("PUT")] == [("error", 500), (None, 200)]
    assert s3_bucket.keys() == ["t/b"]


def test_polars_retries_a_503_on_a_get_of_parquet(s3_bucket: s3server.Bucket, s3_proxy: FaultProxy) -> None:
    df = pl.DataFrame({"a": [1, 2, 3]})
    buf = io.BytesIO()
    df.write_parquet(buf)
    s3_bucket.server.boto3_client().put_object(Bucket=s3_bucket.name, Key="t/x.parquet", Body=buf.getvalue())
    s3_proxy.add(Rule("error", method="GET", key="t/x.parquet", status=503, times=1))
    got = pl.read_parquet(
        f"{s3_bucket.uri}/x.parquet", storage_options=s3_bucket.via(s3_proxy.endpoint).storage_options
    )
    assert got.equals(df)
    gets = s3_proxy.requests("GET", "t/x.parquet")
    assert gets[0].fault == "error"
    assert all(r.status in (200, 206) for r in gets[1:])
    assert len(gets) >= 2


def test_obstore_retries_come_from_its_retry_config(s3_bucket: s3server.Bucket, s3_proxy: FaultProxy) -> None:
    """With ``retry_config={"max_retries": 0}`` one 503 and one dropped response surface as errors."""
    import datetime as dt

    import obstore
    from obstore.exceptions import GenericError
    from obstore.store import S3Store

    so = s3_bucket.via(s3_proxy.endpoint).storage_options
    store = S3Store(
        s3_bucket.name,
        endpoint=so["aws_endpoint_url"],
        access_key_id=so["aws_access_key_id"],
        secret_access_key=so["aws_secret_access_key"],
        region=so["aws_region"],
        client_options={"allow_http": True},
        retry_config={
            "max_retries": 0,
            "retry_timeout": dt.timedelta(seconds=5),
            "backoff": {
                "init_backoff": dt.timedelta(milliseconds=10),
                "max_backoff": dt.timedelta(seconds=1),
                "base": 2,
            },
        },
    )
    s3_proxy.add(Rule("error", method="PUT", key="t/a", status=503))
    s3_proxy.add(Rule("drop", method="PUT", key="t/b"))
    with pytest.raises(GenericError, match="503"):
        obstore.put(store, "t/a", b"v")
    with pytest.raises(GenericError, match="error sending request"):
        obstore.put(store, "t/b", b"v", mode="create")
    assert [(r.key, r.fault) for r in s3_proxy.requests("PUT")] == [("t/a", "error"), ("t/b", "drop")]
    assert s3_bucket.keys() == ["t/b"]  # the dropped create landed; the client only got an error


def test_polars_retries_come_from_its_max_retries_option(s3_bucket: s3server.Bucket, s3_proxy: FaultProxy) -> None:
    """A GET that keeps failing with 503 ends in an OSError after Polars' ``max_retries`` storage option."""
    buf = io.BytesIO()
    pl.DataFrame({"a": [1]}).write_parquet(buf)
    s3_bucket.server.boto3_client().put_object(Bucket=s3_bucket.name, Key="t/x.parquet", Body=buf.getvalue())
    s3_proxy.add(Rule("error", method="GET", key="t/x.parquet", status=503, times=100))
    so = {**s3_bucket.via(s3_proxy.endpoint).storage_options, "max_retries": 1}
    with pytest.raises(OSError, match="503"):
        pl.read_parquet(f"{s3_bucket.uri}/x.parquet", storage_options=so)
    attempts = len(s3_proxy.requests("GET", "t/x.parquet"))
    assert 2 <= attempts <= 4  # 1 + max_retries per read Polars starts (it starts two here)


def test_rule_fires_on_the_nth_match_only_for_its_bounded_count(
    s3_bucket: s3server.Bucket, s3_proxy: FaultProxy
) -> None:
    import obstore

    store = s3_bucket.server.obstore(s3_bucket.name, endpoint=s3_proxy.endpoint)
    obstore.put(store, "t/c", b"v")
    rule = s3_proxy.add(Rule("delay", method="GET", key="t/c", nth=2, times=1, delay_s=0.3))
    durations = []
    for _ in range(4):
        t0 = time.perf_counter()
        obstore.get(store, "t/c").bytes()
        durations.append(time.perf_counter() - t0)
    assert rule.matched == 4
    assert rule.fired == 1
    assert [r.fault for r in s3_proxy.requests("GET")] == [None, "delay", None, None]
    assert durations[1] >= 0.3 > max(durations[0], durations[2], durations[3])


def test_a_rule_on_another_key_never_fires(s3_bucket: s3server.Bucket, s3_proxy: FaultProxy) -> None:
    import obstore

    store = s3_bucket.server.obstore(s3_bucket.name, endpoint=s3_proxy.endpoint)
    rule = s3_proxy.add(Rule("error", method="PUT", key="t/other/*", times=5))
    obstore.put(store, "t/mine", b"v")
    assert (rule.matched, rule.fired) == (0, 0)
    assert [r.status for r in s3_proxy.requests("PUT")] == [200]


def test_rule_rejects_unbounded_or_zero_counts() -> None:
    with pytest.raises(ValueError, match="nth and times"):
        Rule("error", times=0)
