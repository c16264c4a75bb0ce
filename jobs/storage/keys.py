"""Key validation for every backend, in one place, so a key that is safe for one store is safe
for all: "bucket/path" with bucket in BUCKETS, no absolute paths, no "." or ".." segments, no
empty segments, no backslashes or NUL (which a filesystem would interpret)."""

from __future__ import annotations

from .base import BUCKETS


class InvalidKey(ValueError):
    """The key (or prefix) is not a valid "bucket/path" object key."""


def _check_segments(text: str, segments: list[str], *, allow_trailing_empty: bool) -> None:
    if "\\" in text or "\x00" in text:
        raise InvalidKey(f"invalid character in key {text!r}")
    for i, seg in enumerate(segments):
        if seg == "" and allow_trailing_empty and i == len(segments) - 1:
            continue
        if seg in ("", ".", ".."):
            raise InvalidKey(f"invalid path segment {seg!r} in key {text!r}")


def _split_bucket(text: str, what: str) -> tuple[str, str]:
    if not isinstance(text, str) or not text:
        raise InvalidKey(f"empty or non-string {what} {text!r}")
    if text.startswith("/"):
        raise InvalidKey(f"absolute {what} {text!r}")
    bucket, _, path = text.partition("/")
    if bucket not in BUCKETS:
        raise InvalidKey(f"unknown bucket {bucket!r} in {what} {text!r}; expected one of {BUCKETS}")
    return bucket, path


def split_key(key: str) -> tuple[str, str]:
    """("bucket", "path/inside/bucket") of a full object key; raises InvalidKey."""
    bucket, path = _split_bucket(key, "key")
    if not path:
        raise InvalidKey(f"key {key!r} names a bucket but no object")
    _check_segments(key, path.split("/"), allow_trailing_empty=False)
    return bucket, path


def split_prefix(prefix: str) -> tuple[str, str]:
    """("bucket", "path prefix") of a listing prefix such as "jobs", "jobs/" or "inputs/ab12/".

    The path part is a plain string prefix (its last segment may be partial); the bucket must be
    complete, so a listing never spans buckets."""
    bucket, path = _split_bucket(prefix, "prefix")
    if path:
        _check_segments(prefix, path.split("/"), allow_trailing_empty=True)
    return bucket, path
