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
