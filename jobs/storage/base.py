"""The object-store interface every backend implements (and passes the same tests)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

BUCKETS: tuple[str, ...] = ("inputs", "outputs", "jobs", "models")


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: float | None = None  # unix time of the last write, where the backend's listing gives it


class ObjectNotFound(KeyError):
    """The key does not exist."""


class ObjectStore(ABC):
    """Put/get/list/delete of immutable objects addressed by "bucket/path" keys.

    Writes are atomic: a reader sees the old object or the whole new one, never a partial one
    (filesystem: write to a temp file and rename; S3: single PUT or completed multipart upload).
    """

    name: str = "abstract"

    @abstractmethod
    def put_stream(self, key: str, stream: BinaryIO, length: int = -1) -> int:
        """Store the stream's bytes (read in chunks, never whole into memory); returns the size."""

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """A readable binary stream of the object; close it after use. Raises ObjectNotFound."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Size of the object; raises ObjectNotFound."""

    @abstractmethod
    def list(self, prefix: str) -> list[ObjectInfo]:
        """All objects whose key starts with `prefix` ("bucket/..."), recursively, sorted by key."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete one object; missing keys are not an error."""

    @abstractmethod
    def ping(self) -> None:
        """Raise if the store is unreachable (used by /health)."""

    # Conveniences written once on top of the primitives.

    def put_bytes(self, key: str, data: bytes) -> int:
        import io

        return self.put_stream(key, io.BytesIO(data), len(data))

    def put_file(self, key: str, path: Path) -> int:
        with open(path, "rb") as f:
            return self.put_stream(key, f, path.stat().st_size)

    def get_bytes(self, key: str) -> bytes:
        with self.open(key) as f:
            return f.read()

    def download_file(self, key: str, path: Path) -> None:
        import shutil

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        with self.open(key) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1024 * 1024)
        tmp.replace(path)

    def open_at(self, key: str, offset: int) -> BinaryIO:
        """Like open(), positioned at byte `offset` (for resumed downloads). Backends override it
        with a seek or a ranged GET; this default reads and discards the first `offset` bytes."""
        f = self.open(key)
        remaining = offset
        while remaining > 0 and (chunk := f.read(min(remaining, 1024 * 1024))):
            remaining -= len(chunk)
        return f

    def iter_chunks(self, key: str, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        with self.open(key) as f:
            while chunk := f.read(chunk_size):
                yield chunk

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
            return True
        except ObjectNotFound:
            return False

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix`; returns how many were deleted."""
        items = self.list(prefix)
        for item in items:
            self.delete(item.key)
        return len(items)
