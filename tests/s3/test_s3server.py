"""The moto fixture is a real S3 API: conditional writes conflict, reset empties, the server has its own group."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import s3server


def test_put_if_absent_conflicts_on_an_existing_key(s3_bucket: s3server.Bucket) -> None:
    import obstore
    from obstore.exceptions import AlreadyExistsError

    store = s3_bucket.server.obstore(s3_bucket.name)
    obstore.put(store, "t/m/00000001.json", b"first", mode="create")
    with pytest.raises(AlreadyExistsError):
        obstore.put(store, "t/m/00000001.json", b"second", mode="create")
    assert bytes(obstore.get(store, "t/m/00000001.json").bytes()) == b"first"


def test_two_writers_racing_to_create_one_key_have_exactly_one_winner(s3_bucket: s3server.Bucket) -> None:
    code = (
        "import sys, obstore\n"
        "from obstore.store import S3Store\n"
        "from obstore.exceptions import AlreadyExistsError\n"
        "s = S3Store(sys.argv[1], endpoint=sys.argv[2], access_key_id='t', secret_access_key='t',"
        " region='us-east-1', client_options={'allow_http': True})\n"
        "try:\n"
        "    obstore.put(s, 'race', sys.argv[3].encode(), mode='create'); print('won')\n"
        "except AlreadyExistsError:\n"
        "    print('lost')\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, s3_bucket.name, s3_bucket.server.endpoint, f"w{i}"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    results = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert sorted(results) == ["lost", "lost", "lost", "won"]
    import obstore

    winner = results.index("won")
    assert bytes(obstore.get(s3_bucket.server.obstore(s3_bucket.name), "race").bytes()) == f"w{winner}".encode()


def test_if_match_put_rejects_a_stale_etag_and_accepts_the_current_one(s3_bucket: s3server.Bucket) -> None:
    import obstore
    from obstore.exceptions import PreconditionError

    store = s3_bucket.server.obstore(s3_bucket.name)
    first = obstore.put(store, "lease", b"a", mode="create")
    second = obstore.put(store, "lease", b"b", mode={"e_tag": first["e_tag"]})
    assert second["e_tag"] != first["e_tag"]
    with pytest.raises(PreconditionError):
        obstore.put(store, "lease", b"c", mode={"e_tag": first["e_tag"]})
    assert bytes(obstore.get(store, "lease").bytes()) == b"b"


def test_if_match_delete_rejects_a_stale_etag_and_accepts_the_current_one(s3_bucket: s3server.Bucket) -> None:
    from botocore.exceptions import ClientError

    s3 = s3_bucket.server.boto3_client()
    old = s3.put_object(Bucket=s3_bucket.name, Key="lease", Body=b"a")["ETag"]
    new = s3.put_object(Bucket=s3_bucket.name, Key="lease", Body=b"b")["ETag"]
    with pytest.raises(ClientError, match="PreconditionFailed"):
        s3.delete_object(Bucket=s3_bucket.name, Key="lease", IfMatch=old)
    assert s3_bucket.keys() == ["lease"]
    s3.delete_object(Bucket=s3_bucket.name, Key="lease", IfMatch=new)
    assert s3_bucket.keys() == []


def test_reset_empties_the_server() -> None:
    server = s3server.start()  # its own server: a reset of the session's would wipe other tests' buckets
    try:
        name = server.make_bucket()
        server.boto3_client().put_object(Bucket=name, Key="k", Body=b"x")
        assert [b["Name"] for b in server.boto3_client().list_buckets()["Buckets"]] == [name]
        server.reset()
        assert server.boto3_client().list_buckets()["Buckets"] == []
    finally:
        server.stop()
    assert not server.alive()


def test_the_server_runs_in_its_own_process_group(s3_bucket: s3server.Bucket) -> None:
    """A SIGKILL to the test's process group (or a killed writer's) cannot reach the server."""
    assert os.getpgid(s3_bucket.server.proc.pid) == s3_bucket.server.proc.pid
    assert os.getpgid(s3_bucket.server.proc.pid) != os.getpgid(0)
    assert s3_bucket.server.alive()
