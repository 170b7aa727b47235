"""A fault-injecting, request-counting HTTP/1.1 proxy in front of an S3 API on loopback.

``FaultProxy(upstream).start()`` listens on ``127.0.0.1:<port>``; clients use
it as their S3 endpoint (``aws_endpoint_url=proxy.endpoint``, path-style
URLs ``/<bucket>/<key>?<query>``) and it forwards every request to
``upstream`` (the moto server), one upstream connection per request. It is a
threaded stdlib ``http.server``; request and response bodies are read whole.

Counting. Every request is classified when it arrives, before any rule runs:

- ``GET``    GET of an object (a key is present; ranged GETs included)
- ``LIST``   GET of a bucket (no key; ``list-type=2`` or the v1 listing)
- ``HEAD``   HEAD of an object or bucket
- ``PUT``    PUT (objects, parts of a multipart upload, bucket creation)
- ``POST``   POST (multipart create/complete, multi-object delete: obstore's ``delete``)
- ``DELETE`` DELETE

``counts`` is a ``Counter`` of these kinds; ``log`` lists every request as a
``Request`` (method, kind, bucket, key, query, status answered, fault applied).
``reset()`` empties both and removes every rule.

Faults. ``add(Rule(...))`` arms a rule; a rule matches a request whose method
or kind equals ``method`` (``"*"``: any) and whose key matches the glob ``key``
(``fnmatch``, case-sensitive; the key excludes the bucket). Each match counts;
the rule fires on the ``nth`` match and on following matches until it has
fired ``times`` times (``times`` is bounded: every fault is transient). The
first armed rule that fires decides; actions:

- ``"drop"``: forward the request upstream, read the whole response, then close
  the client connection without sending a byte: the request took effect (a
  commit succeeded) but the client never learns it (a lost response).
- ``"error"``: answer ``status`` (500, 503, ...) with an S3 XML error body
  WITHOUT forwarding: the request had no effect.
- ``"delay"``: sleep ``delay_s`` seconds, then forward normally.

Retries seen through this proxy (checked by tests/s3/test_faultproxy.py):
obstore retries a 503, a 500 and a dropped response by the Rust
``object_store`` crate's ``RetryConfig`` (``retry_config=`` of ``S3Store``; with
``max_retries=0`` each surfaces as ``GenericError``). A create (``If-None-Match``)
whose response was dropped is retried and then fails with ``AlreadyExistsError``
although the first attempt wrote the object: a committer must read back what
it finds. Polars retries a failing GET by its own ``max_retries`` storage
option (an int; ``{"max_retries": 1}`` gives up after 2-4 GETs with an
``OSError``; the default kept trying for ~11 s, 18 GETs, here).
"""

from __future__ import annotations

import fnmatch
import http.client
import socket
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
}
KINDS = ("GET", "LIST", "HEAD", "PUT", "POST", "DELETE")
_REASONS = {500: "InternalError", 503: "SlowDown"}


@dataclass
class Rule:
    """Fire ``action`` on the ``nth`` matching request and the next ones, ``times`` times in all."""

    action: Literal["drop", "error", "delay"]
    method: str = "*"  # an HTTP method or a kind (LIST); "*" matches any
    key: str = "*"  # fnmatch glob on the object key (without the bucket)
    nth: int = 1
    times: int = 1
    status: int = 503
    delay_s: float = 0.0
    matched: int = 0
    fired: int = 0

    def __post_init__(self) -> None:
        if self.nth < 1 or self.times < 1:
            raise ValueError(f"nth and times must be >= 1, got nth={self.nth} times={self.times}")

    def matches(self, method: str, kind: str, key: str) -> bool:
        return self.method in ("*", method, kind) and fnmatch.fnmatchcase(key, self.key)


@dataclass(frozen=True)
class Request:
    method: str
    kind: str
    bucket: str
    key: str
    query: str
    status: int | None  # None: no response reached the client (a "drop")
    fault: str | None


def classify(method: str, path: str) -> tuple[str, str, str, str]:
    """(kind, bucket, key, query) of a path-style S3 request."""
    parsed = urllib.parse.urlsplit(path)
    parts = parsed.path.lstrip("/").split("/", 1)
    bucket = urllib.parse.unquote(parts[0])
    key = urllib.parse.unquote(parts[1]) if len(parts) > 1 else ""
    kind = method
    if method == "GET" and not key:
        kind = "LIST"
    return kind, bucket, key, parsed.query


@dataclass
class FaultProxy:
    upstream: str  # http://127.0.0.1:<port>
    counts: Counter[str] = field(default_factory=Counter)
    log: list[Request] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _server: ThreadingHTTPServer | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the proxy first"
        return int(self._server.server_address[1])

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="faultproxy", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def add(self, rule: Rule) -> Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def reset(self) -> None:
        """Forget the counts, the log and every rule."""
        with self._lock:
            self.counts.clear()
            self.log.clear()
            self.rules.clear()

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.counts)

    def requests(self, kind: str | None = None, key: str = "*") -> list[Request]:
        with self._lock:
            return [r for r in self.log if kind in (None, r.kind) and fnmatch.fnmatchcase(r.key, key)]

    def _arrive(self, method: str, kind: str, key: str) -> Rule | None:
        with self._lock:
            self.counts[kind] += 1
            chosen = None
            for rule in self.rules:
                if not rule.matches(method, kind, key):
                    continue
                rule.matched += 1
                if chosen is None and rule.matched >= rule.nth and rule.fired < rule.times:
                    rule.fired += 1
                    chosen = rule
            return chosen

    def _record(self, req: Request) -> None:
        with self._lock:
            self.log.append(req)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: FaultProxy

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _handle(self) -> None:
        method = self.command
        kind, bucket, key, query = classify(method, self.path)
        body = self._body()
        rule = self.owner._arrive(method, kind, key)
        fault = rule.action if rule else None
        if rule is not None and rule.action == "error":
            self.owner._record(Request(method, kind, bucket, key, query, rule.status, "error"))
            self._send_error(rule.status, key)
            return
        if rule is not None and rule.action == "delay":
            time.sleep(rule.delay_s)
        status, reason, headers, payload = self._forward(method, body)
        if rule is not None and rule.action == "drop":
            self.owner._record(Request(method, kind, bucket, key, query, None, "drop"))
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        # recorded before the client can see the answer, so a test that asserts after its call returns sees it
        self.owner._record(Request(method, kind, bucket, key, query, status, fault))
        self.send_response_only(status, reason)
        for name, value in headers:
            lname = name.lower()
            if lname in HOP_BY_HOP or (lname == "content-length" and method != "HEAD"):
                continue
            self.send_header(name, value)
        if method != "HEAD":
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if method != "HEAD" and payload:
            self.wfile.write(payload)
        self.wfile.flush()

    def _forward(self, method: str, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        up = urllib.parse.urlsplit(self.owner.upstream)
        conn = http.client.HTTPConnection(up.hostname or "127.0.0.1", up.port, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            headers["Content-Length"] = str(len(body))
            conn.request(method, self.path, body=body if body else None, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            return resp.status, resp.reason, resp.getheaders(), payload
        finally:
            conn.close()

    def _send_error(self, status: int, key: str) -> None:
        code = _REASONS.get(status, "ServiceUnavailable")
        payload = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>injected by faultproxy</Message><Key>{key}</Key></Error>"
        ).encode()
        self.send_response_only(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        self.wfile.flush()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle
