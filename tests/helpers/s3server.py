"""A real S3 API on loopback: moto in server mode, run as a child process.

``start()`` launches ``python -m moto.server -H 127.0.0.1 -p PORT`` on a free
port in its own process group (``start_new_session``), so a writer a test
kills with SIGKILL never takes the server with it, and waits until it answers.
``S3Server.stop()`` kills the whole group. ``reset()`` is moto's
``POST /moto-api/reset`` (every bucket and object gone); ``make_bucket(name)``
creates a bucket with boto3; ``storage_options()`` is the dict Polars,
deltalake and the engine take (``aws_endpoint_url``, ``aws_access_key_id``,
``aws_secret_access_key``, ``aws_region``, ``aws_allow_http``), optionally
pointed at another endpoint (the fault proxy of tests/helpers/faultproxy.py).

What moto 5.2 honours (checked by tests/s3/test_s3server.py):

- ``If-None-Match: *`` on PUT: a second create of a key fails with 412
  (obstore ``put(mode="create")`` raises ``AlreadyExistsError``).
- ``If-Match: <etag>`` on PUT (conditional overwrite): a stale ETag fails with
  412 (obstore ``put(mode={"e_tag": ...})`` raises ``PreconditionError``); the
  current ETag succeeds and returns the new ETag.
- ``If-Match: <etag>`` on DELETE: a stale ETag fails with 412 and the object
  stays; the current ETag deletes. obstore 0.12's ``delete`` takes no
  condition, so a conditional delete goes through boto3 (``IfMatch=``) or a
  signed request of one's own.

This module is also loaded by path from benchmarks/object_store.py (the
benchmarks do not import the tests package), so it imports only the standard
library at module level.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"
START_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def storage_options_for(endpoint: str) -> dict[str, str]:
    """The option names Polars (object_store), deltalake and the engine take, for an S3 API at ``endpoint``."""
    return {
        "aws_endpoint_url": endpoint,
        "aws_access_key_id": ACCESS_KEY,
        "aws_secret_access_key": SECRET_KEY,
        "aws_region": REGION,
        "aws_allow_http": "true",
    }


@dataclass
class S3Server:
    """A running moto server; ``endpoint`` is ``http://127.0.0.1:<port>``."""

    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path | None = None
    _boto: Any = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def storage_options(self, endpoint: str | None = None) -> dict[str, str]:
        return storage_options_for(endpoint or self.endpoint)

    def boto3_client(self) -> Any:
        """A boto3 S3 client for this server (cached); for setup and for what obstore cannot send."""
        if self._boto is None:
            import boto3

            self._boto = boto3.client(
                "s3",
                endpoint_url=self.endpoint,
                aws_access_key_id=ACCESS_KEY,
                aws_secret_access_key=SECRET_KEY,
                region_name=REGION,
            )
        return self._boto

    def obstore(self, bucket: str, endpoint: str | None = None) -> Any:
        """An ``obstore.store.S3Store`` on ``bucket`` (through ``endpoint`` if given, e.g. the fault proxy)."""
        from obstore.store import S3Store

        return S3Store(
            bucket,
            endpoint=endpoint or self.endpoint,
            access_key_id=ACCESS_KEY,
            secret_access_key=SECRET_KEY,
            region=REGION,
            client_options={"allow_http": True},
        )

    def reset(self) -> None:
        """Moto's reset: every bucket and object of this server is gone."""
        req = urllib.request.Request(self.endpoint + "/moto-api/reset", method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()

    def make_bucket(self, name: str | None = None) -> str:
        name = name or new_bucket_name()
        self.boto3_client().create_bucket(Bucket=name)
        return name

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)


def new_bucket_name(prefix: str = "bkt") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(endpoint + "/moto-api/data.json", timeout=1) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start(log_path: Path | None = None, python: str = sys.executable) -> S3Server:
    """Start moto on a free loopback port in its own process group; return once it answers."""
    port = free_port()
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed below
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    try:
        proc = subprocess.Popen(
            [python, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
    finally:
        if log_path:
            out.close()  # type: ignore[union-attr]
    server = S3Server(port, proc, log_path)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _answers(server.endpoint):
        if proc.poll() is not None or time.monotonic() > deadline:
            server.stop()
            log = log_path.read_text(errors="replace")[-2000:] if log_path else "(no log)"
            raise RuntimeError(f"moto server on port {port} did not start (exit {proc.poll()}): {log}")
        time.sleep(0.05)
    return server


@dataclass(frozen=True)
class Bucket:
    """A fresh bucket for one test: ``uri`` is ``s3://<name>/<prefix>``; ``storage_options`` point at moto."""

    server: S3Server
    name: str
    prefix: str
    storage_options: dict[str, str]

    @property
    def uri(self) -> str:
        return f"s3://{self.name}/{self.prefix}" if self.prefix else f"s3://{self.name}"

    def keys(self) -> list[str]:
        """Every key in the bucket (boto3 list, paginated)."""
        out: list[str] = []
        pages = self.server.boto3_client().get_paginator("list_objects_v2").paginate(Bucket=self.name)
        for page in pages:
            out.extend(o["Key"] for o in page.get("Contents", []))
        return sorted(out)

    def via(self, endpoint: str) -> Bucket:
        """The same bucket reached through another endpoint (the fault proxy)."""
        return Bucket(self.server, self.name, self.prefix, storage_options_for(endpoint))
