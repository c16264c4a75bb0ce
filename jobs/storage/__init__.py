"""Object stores: one interface (`base.ObjectStore`), a filesystem and an S3/MinIO backend.

Keys are "bucket/path": the first segment is one of BUCKETS. The filesystem backend maps a key to
`root/bucket/path`; the S3 backend maps the bucket to `{prefix}{bucket}` and the rest to the object
name. Layout: inputs/{job_id}/views/..., inputs/{job_id}/depths/..., outputs/{job_id}/{model}/...,
jobs/{job_id}/job.json, models/{name}/{version}/...
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import BUCKETS, ObjectInfo, ObjectNotFound, ObjectStore
from .keys import InvalidKey

if TYPE_CHECKING:
    from jobs.settings import Settings

__all__ = ["BUCKETS", "InvalidKey", "ObjectInfo", "ObjectNotFound", "ObjectStore", "StorageUnavailable", "get_store"]


class StorageUnavailable(ConnectionError):
    """The object store cannot be reached (or refused our credentials): transient, worth a retry."""


def get_store(settings: Settings) -> ObjectStore:
    """The backend that `settings.storage` selects: "fs" under settings.store_dir, or "s3".

    Not cached: each call builds a new client (cheap for fs; S3 checks its buckets), so
    long-lived processes should keep the store they get."""
    if settings.storage == "s3":
        from .s3 import S3Store  # the minio client is only imported where S3 is used

        return S3Store(settings)
    from .fs import FilesystemStore

    return FilesystemStore(settings.store_dir)
