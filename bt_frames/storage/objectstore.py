"""The only module that talks to an object store (S3 and S3-compatible: MinIO, R2, moto).

A store URI is ``s3://<bucket>/<prefix>``; every key below is relative to
``<prefix>`` and built by the callers from ``layout`` names. Options are the
``storage_options`` Polars and ``deltalake`` take (``aws_endpoint_url``,
``aws_access_key_id``, ``aws_secret_access_key``, ``aws_region``,
``aws_allow_http``, ...); they are handed to obstore's ``S3Store`` as they are.

Contract (what the rest of bt_frames relies on):

- ``put_if_absent(key, data)`` is one conditional PUT (``If-None-Match: *``):
  True when this call created the object, False when an object already had
  that key (nothing changed). Every upload carries a SHA-256 checksum header
  (``x-amz-checksum-sha256``) that the store checks before it accepts the
  object, so a body damaged on the way is refused, never stored.
- ``put_if_match(key, data, etag)`` overwrites only the version with that
  ETag (``If-Match``): the new ETag, or None when the object changed since.
- ``put`` overwrites (used only for caches), ``get``/``get_range``/``head``
  return None for a missing key, ``list`` yields ``(key, size, modified)``
  in key order after ``start_after``, ``delete`` of a missing key is fine.
- Every other failure raises ``ObjectStoreError`` (a ``BtError``) naming the
  bucket and key and saying what to check (credentials, endpoint, bucket).
- ``requests`` counts the requests made, by kind (tests and benchmarks).

obstore is imported lazily (``import bt_frames`` stays light); without it,
``MissingOptionalDependencyError`` says which extra to install.
"""

from __future__ import annotations

import collections
import datetime as dt
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bt_frames.errors import BtError, MissingOptionalDependencyError, ObjectStoreError

SCHEME = "s3://"
PAGE = 1000  # keys per LIST response (S3's maximum)
# obstore retries for up to 3 minutes by default: a wrong endpoint would look like a hang
_RETRY = {"max_retries": 3, "retry_timeout": dt.timedelta(seconds=20)}
_CLIENT = {"connect_timeout": "5s", "timeout": "60s"}
_FIX = (
    "Check storage_options: aws_endpoint_url (and aws_allow_http='true' for an http:// endpoint), "
    "aws_access_key_id/aws_secret_access_key, aws_region, and that the bucket exists."
)


def is_uri(path: object) -> bool:
    return isinstance(path, str) and path.startswith(SCHEME)


def split_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b/`` -> ``("bucket", "a/b")``; raises BtError for a URI without a bucket."""
    rest = uri[len(SCHEME) :] if uri.startswith(SCHEME) else ""
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise BtError(f"{uri!r} is not an object store URI; write it as 's3://<bucket>/<prefix>'")
    return bucket, prefix.strip("/")


# obstore clients by (bucket, prefix, options): opening a store again in this process reuses one
_CLIENTS: dict[tuple[str, str, tuple[tuple[str, str], ...]], Any] = {}
_CLIENTS_LOCK = threading.Lock()


@dataclass(frozen=True)
class Entry:
    key: str
    size: int
    modified: dt.datetime
    etag: str | None


class ObjectStore:
    """One bucket prefix, with counted, error-wrapped requests (see the module docstring)."""

    def __init__(self, uri: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.bucket, self.prefix = split_uri(uri)
        self.uri = f"{SCHEME}{self.bucket}/{self.prefix}".rstrip("/")
        if storage_options is not None and not isinstance(storage_options, Mapping):
            raise ObjectStoreError(
                f"{self.uri}: storage_options must be a dict of option name -> value, not "
                f"{type(storage_options).__name__} {storage_options!r}. {_FIX}"
            )
        self.storage_options = {str(k): v for k, v in (storage_options or {}).items()}
        self.requests: collections.Counter[str] = collections.Counter()
        self._count_lock = threading.Lock()
        try:
            from obstore.store import S3Store
        except ImportError as e:  # pragma: no cover - obstore is in the s3 extra
            raise MissingOptionalDependencyError.needs(f"{self.uri}: object storage", "obstore", "s3") from e
        config = {k.lower(): str(v).lower() if isinstance(v, bool) else v for k, v in self.storage_options.items()}
        config.setdefault("aws_checksum_algorithm", "sha256")  # the store verifies every upload's body
        key = (self.bucket, self.prefix, tuple(sorted((k, str(v)) for k, v in config.items())))
        with _CLIENTS_LOCK:
            cached = _CLIENTS.get(key)
        if cached is not None:  # a client (its connection pool) is made once per bucket and options
            self._store = cached
            return
        try:
            self._store = S3Store(
                self.bucket,
                prefix=self.prefix or None,
                config=config,  # type: ignore[arg-type]
                retry_config=_RETRY,  # type: ignore[arg-type]
                client_options=_CLIENT,  # type: ignore[arg-type]
            )
        except Exception as e:
            raise ObjectStoreError(f"{self.uri}: invalid storage_options ({_short(e)}). {_FIX}") from e
        with _CLIENTS_LOCK:
            _CLIENTS[key] = self._store

    # -- naming ----------------------------------------------------------------

    def url(self, key: str) -> str:
        """The full ``s3://`` URL of ``key`` (what Polars, deltalake and DuckDB are given)."""
        return f"{self.uri}/{key}"

    def _count(self, kind: str) -> None:
        with self._count_lock:
            self.requests[kind] += 1

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    def _error(self, what: str, key: str, e: BaseException) -> ObjectStoreError:
        text = str(e)
        if "NoSuchBucket" in text:
            hint = f"bucket {self.bucket!r} does not exist. Fix: create it, or correct the URI."
        elif any(s in text for s in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied")) or re.search(
            r"403 Forbidden|status(?: code)?:? 403\b", text
        ):  # (a bare "403" also appears in durations such as "elapsed 2.403s")
            hint = "the store refused the credentials. Fix: check aws_access_key_id/aws_secret_access_key."
        elif "BadDigest" in text or "XAmzContentSHA256Mismatch" in text or "checksum" in text.lower():
            hint = "the store refused the upload: its checksum did not match (damaged in transit); it is retried."
        else:
            hint = _FIX
        return ObjectStoreError(f"{self.url(key)}: {what} failed ({_short(e)}); {hint}")

    # -- requests --------------------------------------------------------------

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create ``key`` unless it exists (one conditional PUT): True if created, False if it existed."""
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        self._count("put")
        try:
            obstore.put(self._store, key, data, mode="create", use_multipart=False)
        except (AlreadyExistsError, PreconditionError):
            return False
        except Exception as e:
            raise self._error("uploading", key, e) from e
        return True

    def put_if_match(self, key: str, data: bytes, etag: str) -> str | None:
        """Overwrite ``key`` only if its ETag is still ``etag``: the new ETag, or None if it changed."""
        import obstore
        from obstore.exceptions import AlreadyExistsError, NotFoundError, PreconditionError

        self._count("put")
        try:
            got = obstore.put(self._store, key, data, mode={"e_tag": etag}, use_multipart=False)
        except (PreconditionError, AlreadyExistsError, NotFoundError, FileNotFoundError):
            return None
        except Exception as e:
            raise self._error("uploading", key, e) from e
        return got["e_tag"]

    def put(self, key: str, data: bytes) -> None:
        """Create or overwrite ``key`` (caches only: never for anything a version names)."""
        import obstore

        self._count("put")
        try:
            obstore.put(self._store, key, data, use_multipart=False)
        except Exception as e:
            raise self._error("uploading", key, e) from e

    def get(self, key: str) -> bytes | None:
        got = self.get_with_etag(key)
        return None if got is None else got[0]

    def get_with_etag(self, key: str) -> tuple[bytes, str | None] | None:
        """The object's bytes and ETag (one GET), or None if there is no such key."""
        import obstore

        self._count("get")
        try:
            res = obstore.get(self._store, key)
            return bytes(res.bytes()), res.meta.get("e_tag")
        except Exception as e:
            if _missing(e):
                return None
            raise self._error("reading", key, e) from e

    def get_range(self, key: str, start: int, end: int) -> bytes | None:
        import obstore

        self._count("get")
        try:
            return bytes(obstore.get_range(self._store, key, start=start, end=end))
        except Exception as e:
            if _missing(e):
                return None
            raise self._error("reading", key, e) from e

    def head(self, key: str) -> Entry | None:
        import obstore

        self._count("head")
        try:
            m = obstore.head(self._store, key)
        except Exception as e:
            if _missing(e):
                return None
            raise self._error("reading the metadata of", key, e) from e
        return Entry(key, int(m["size"]), m["last_modified"], m.get("e_tag"))

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[Entry]:
        """Objects under ``prefix`` (a folder: ends with '/'), in key order, after ``start_after``."""
        import obstore

        self._count("list")
        try:
            for page in obstore.list(self._store, prefix, offset=start_after):
                for m in page:
                    yield Entry(m["path"], int(m["size"]), m["last_modified"], m.get("e_tag"))
        except Exception as e:
            raise self._error("listing", prefix, e) from e

    def list_first(self, prefix: str, start_after: str | None = None) -> tuple[Sequence[Entry], bool]:
        """The first page of ``list`` (one request): its entries, and whether they are all there are."""
        import obstore

        self._count("list")
        try:
            it = iter(obstore.list(self._store, prefix, offset=start_after, chunk_size=PAGE))
            page = next(it, [])
        except Exception as e:
            raise self._error("listing", prefix, e) from e
        entries = [Entry(m["path"], int(m["size"]), m["last_modified"], m.get("e_tag")) for m in page]
        return entries, len(entries) < PAGE

    def folders(self, prefix: str = "") -> Sequence[str]:
        """The names of the "folders" directly under ``prefix`` (one LIST with a delimiter)."""
        import obstore

        self._count("list")
        try:
            got = obstore.list_with_delimiter(self._store, prefix or None)
        except Exception as e:
            raise self._error("listing", prefix, e) from e
        return sorted(p.rstrip("/").rpartition("/")[2] for p in got["common_prefixes"])

    def delete(self, key: str) -> None:
        import obstore

        self._count("delete")
        try:
            obstore.delete(self._store, key)
        except Exception as e:
            if _missing(e):
                return
            raise self._error("deleting", key, e) from e

    def delete_many(self, keys: Sequence[str]) -> None:
        """Delete ``keys`` (absent ones are no error): S3's DeleteObjects, one request per 1,000 keys."""
        import obstore

        if not keys:
            return
        for _ in range(0, len(keys), 1000):
            self._count("delete")
        try:
            obstore.delete(self._store, list(keys))
        except Exception as e:
            if _missing(e):
                return
            raise self._error(f"deleting {len(keys)} objects, e.g.", keys[0], e) from e

    def check(self) -> None:
        """One LIST: raise ObjectStoreError naming the fix when the bucket cannot be reached or read."""
        next(iter(self.list("", None)), None)


def _missing(e: BaseException) -> bool:
    try:
        from obstore.exceptions import NotFoundError
    except ImportError:  # pragma: no cover
        return False
    return (isinstance(e, (NotFoundError, FileNotFoundError))) and "NoSuchBucket" not in str(e)


def _short(e: BaseException) -> str:
    """The first line of an obstore error (the rest is a debug dump of the request)."""
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__
