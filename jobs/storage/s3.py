"""The production object store: MinIO (or any S3 endpoint) through the `minio` client.

The key's bucket segment maps to the S3 bucket f"{settings.s3_bucket_prefix}{bucket}" (created
when missing); the rest of the key is the object name. Uploads are one PUT or a completed
multipart upload, so readers never see a partial object; at most one part (PART_SIZE) is held in
memory. Connection failures raise StorageUnavailable instead of urllib3's retry errors.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING, BinaryIO, Literal

import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import S3Error
from urllib3.exceptions import HTTPError as Urllib3Error

from . import StorageUnavailable
from .base import BUCKETS, ObjectInfo, ObjectNotFound, ObjectStore
from .keys import split_key, split_prefix

if TYPE_CHECKING:
    from jobs.settings import Settings

log = logging.getLogger(__name__)

PART_SIZE = 8 * 1024 * 1024  # multipart part size; the most one upload holds in memory
_MISSING = {"NoSuchKey", "NoSuchObject", "NoSuchBucket", "ResourceNotFound"}


class _CountingReader(io.RawIOBase):
    """Counts the bytes minio reads, so put_stream can return the size of a length -1 upload."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.count = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.count += len(data)
        return data


class _ObjectReader(io.RawIOBase):
    """A GET response as a raw stream; close() releases the pooled connection. An endpoint that
    stops answering mid-body raises StorageUnavailable, like a failed request does."""

    def __init__(self, response: urllib3.BaseHTTPResponse, endpoint: str) -> None:
        self._response = response
        self._endpoint = endpoint

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            data = self._response.read(len(buffer))
        except (Urllib3Error, ConnectionError) as exc:
            raise StorageUnavailable(f"S3 endpoint {self._endpoint} stopped answering mid-object: {exc}") from exc
        n = len(data)
        buffer[:n] = data
        return n

    def close(self) -> None:
        if not self.closed:
            self._response.close()
            self._response.release_conn()
        super().close()


class S3Store(ObjectStore):
    name = "s3"

    def __init__(self, settings: Settings, *, connect_timeout: float | None = None,
                 read_timeout: float | None = None) -> None:
        self.endpoint = settings.s3_endpoint
        self.bucket_prefix = settings.s3_bucket_prefix
        timeout = urllib3.Timeout(connect=connect_timeout or settings.s3_connect_timeout,
                                  read=read_timeout or settings.s3_read_timeout)
        # A read timeout is not retried here: an endpoint that stopped answering would hold the
        # caller for (1 + retries) read timeouts. Callers retry instead (flow tasks with backoff,
        # API clients after the 503's Retry-After).
        http = urllib3.PoolManager(
            timeout=timeout,
            maxsize=16,
            retries=urllib3.Retry(total=2, read=0, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        )
        self.client = Minio(
            settings.s3_endpoint,
            access_key=settings.s3_access_key or None,
            secret_key=settings.s3_secret_key or None,
            secure=settings.s3_secure,
            region=settings.s3_region,
            http_client=http,
        )
        self._ready = False
        self._lock = threading.Lock()
        try:
            self.ensure_buckets()
        except StorageUnavailable as exc:  # keep the process up; every call retries, ping reports it
            log.warning("object store not reachable at start, will retry: %s", exc)

    def __repr__(self) -> str:
        return f"S3Store({self.endpoint!r}, prefix={self.bucket_prefix!r})"

    def bucket_name(self, bucket: str) -> str:
        return f"{self.bucket_prefix}{bucket}"

    def ensure_buckets(self) -> None:
        """Create the four buckets where missing (idempotent; once per process when it succeeds)."""
        if self._ready:
            return
        with self._lock:
            if self._ready:
                return
            with self._errors("create buckets"):
                for bucket in BUCKETS:
                    name = self.bucket_name(bucket)
                    if not self.client.bucket_exists(name):
                        try:
                            self.client.make_bucket(name)
                        except S3Error as exc:  # another process created it first
                            if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                                raise
            self._ready = True

    def _errors(self, what: str, key: str | None = None):
        return _S3Errors(self, what, key)

    def _locate(self, key: str) -> tuple[str, str]:
        bucket, path = split_key(key)
        self.ensure_buckets()
        return self.bucket_name(bucket), path

    def put_stream(self, key: str, stream: BinaryIO, length: int = -1) -> int:
        bucket, name = self._locate(key)
        reader = _CountingReader(stream)
        with self._errors("put", key):
            self.client.put_object(bucket, name, reader, length, part_size=PART_SIZE,  # type: ignore[arg-type]  # minio only calls read(); its BinaryIO annotation is too narrow
                                   num_parallel_uploads=1)
        return reader.count

    def open(self, key: str) -> BinaryIO:
        return self.open_at(key, 0)

    def open_at(self, key: str, offset: int) -> BinaryIO:
        """A ranged GET from `offset` (offset must be below the object's size, as S3 requires)."""
        bucket, name = self._locate(key)
        with self._errors("get", key):
            response = self.client.get_object(bucket, name, offset=offset)
        return io.BufferedReader(_ObjectReader(response, self.endpoint), buffer_size=1024 * 1024)

    def stat(self, key: str) -> ObjectInfo:
        bucket, name = self._locate(key)
        with self._errors("stat", key):
            st = self.client.stat_object(bucket, name)
        return ObjectInfo(key, int(st.size or 0))

    def _iter_objects(self, prefix: str) -> Iterator[tuple[str, ObjectInfo]]:
        bucket, path_prefix = split_prefix(prefix)
        self.ensure_buckets()
        with self._errors("list", prefix):
            for obj in self.client.list_objects(self.bucket_name(bucket), prefix=path_prefix, recursive=True):
                if obj.is_dir or obj.object_name is None:
                    continue
                modified = obj.last_modified.timestamp() if obj.last_modified else None
                yield obj.object_name, ObjectInfo(f"{bucket}/{obj.object_name}", int(obj.size or 0), modified)

    def list(self, prefix: str) -> list[ObjectInfo]:
        return sorted((info for _, info in self._iter_objects(prefix)), key=lambda info: info.key)

    def delete(self, key: str) -> None:
        bucket, name = self._locate(key)
        with self._errors("delete", key):
            try:
                self.client.remove_object(bucket, name)
            except S3Error as exc:
                if exc.code not in _MISSING:
                    raise

    def delete_prefix(self, prefix: str) -> int:
        """One bulk DeleteObjects request per 1000 keys instead of a request per object."""
        bucket = self.bucket_name(split_prefix(prefix)[0])
        names = [name for name, _ in self._iter_objects(prefix)]
        if not names:
            return 0
        with self._errors("delete", prefix):
            failures = list(self.client.remove_objects(bucket, (DeleteObject(n) for n in names)))
        if failures:
            raise OSError(f"could not delete {len(failures)} objects under {prefix!r}: {failures[0]}")
        return len(names)

    def ping(self) -> None:
        self.ensure_buckets()
        with self._errors("ping"):
            if not self.client.bucket_exists(self.bucket_name("jobs")):
                self._ready = False
                raise StorageUnavailable(f"bucket {self.bucket_name('jobs')!r} disappeared from {self.endpoint}")


class _S3Errors:
    """Translate client errors: missing object -> ObjectNotFound, transport -> StorageUnavailable."""

    def __init__(self, store: S3Store, what: str, key: str | None) -> None:
        self.store, self.what, self.key = store, what, key

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> Literal[False]:
        if exc is None:
            return False
        where = f"{self.what} {self.key!r}" if self.key else self.what
        if isinstance(exc, S3Error):
            if exc.code in _MISSING and self.key is not None and self.what in ("get", "stat"):
                raise ObjectNotFound(self.key) from None
            if exc.code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise StorageUnavailable(f"S3 at {self.store.endpoint} refused {where}: {exc.code}") from exc
            return False
        if isinstance(exc, (Urllib3Error, ConnectionError)) and not isinstance(exc, StorageUnavailable):
            raise StorageUnavailable(f"S3 endpoint {self.store.endpoint} unreachable during {where}: {exc}") from exc
        return False
