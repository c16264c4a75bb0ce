"""The embedded stack's object store: files under `root/bucket/path`.

Writes go to a temp file under `root/.tmp` (same filesystem, never listed) and are renamed into
place with os.replace, so readers see the old object or the whole new one. Errors such as ENOSPC
propagate as OSError; jobs.errors.from_exception turns them into DISK_FULL.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

from .base import BUCKETS, ObjectInfo, ObjectNotFound, ObjectStore
from .keys import split_key, split_prefix

CHUNK = 1024 * 1024
_TMP_DIR = ".tmp"


class FilesystemStore(ObjectStore):
    name = "fs"

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        for bucket in BUCKETS:
            (self.root / bucket).mkdir(parents=True, exist_ok=True)
        self._tmp = self.root / _TMP_DIR
        self._tmp.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"FilesystemStore({str(self.root)!r})"

    def path_of(self, key: str) -> Path:
        """The file that holds `key` (validated; never outside the root)."""
        bucket, path = split_key(key)
        return self.root / bucket / path

    def put_stream(self, key: str, stream: BinaryIO, length: int = -1) -> int:
        dest = self.path_of(key)
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix="put-")
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                while True:
                    want = CHUNK if length < 0 else min(CHUNK, length - size)
                    if want == 0:
                        break
                    chunk = stream.read(want)
                    if not chunk:
                        break
                    out.write(chunk)
                    size += len(chunk)
                if 0 <= length != size:
                    raise OSError(errno.EIO, f"stream for {key!r} ended after {size} of {length} bytes")
                out.flush()
                os.fsync(out.fileno())
            self._replace(tmp_name, dest)
        except BaseException:
            try:
                os.unlink(tmp_name)
            except FileNotFoundError:
                pass
            raise
        return size

    def _replace(self, tmp_name: str, dest: Path) -> None:
        # A concurrent delete may prune the (empty) parent between mkdir and replace: retry once.
        for attempt in range(2):
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(tmp_name, dest)
                return
            except FileNotFoundError:
                if attempt:
                    raise

    def open(self, key: str) -> BinaryIO:
        path = self.path_of(key)
        try:
            return open(path, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key) from None

    def open_at(self, key: str, offset: int) -> BinaryIO:
        f = self.open(key)
        f.seek(offset)
        return f

    def stat(self, key: str) -> ObjectInfo:
        path = self.path_of(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(key) from None
        if not path.is_file():
            raise ObjectNotFound(key)
        return ObjectInfo(key, st.st_size)

    def list(self, prefix: str) -> list[ObjectInfo]:
        bucket, path_prefix = split_prefix(prefix)
        # Walk only the deepest complete directory of the prefix, then filter by string prefix.
        dir_part = path_prefix.rpartition("/")[0]
        base = self.root / bucket / dir_part if dir_part else self.root / bucket
        out: list[ObjectInfo] = []
        for dirpath, _dirs, files in os.walk(base):
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for name in files:
                key = f"{rel_dir}/{name}"
                if key.startswith(f"{bucket}/{path_prefix}"):
                    try:
                        st = os.stat(os.path.join(dirpath, name))
                    except FileNotFoundError:  # deleted while listing
                        continue
                    out.append(ObjectInfo(key, st.st_size, st.st_mtime))
        out.sort(key=lambda info: info.key)
        return out

    def delete(self, key: str) -> None:
        path = self.path_of(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            return
        except IsADirectoryError:
            return
        self._prune(path.parent, self.root / split_key(key)[0])

    @staticmethod
    def _prune(directory: Path, stop: Path) -> None:
        """Remove now-empty parent folders up to the bucket folder, so deleted jobs leave nothing."""
        while directory != stop and stop in directory.parents:
            try:
                directory.rmdir()
            except OSError:  # not empty (or raced with a writer): keep it
                return
            directory = directory.parent

    def ping(self) -> None:
        for bucket in BUCKETS:
            if not (self.root / bucket).is_dir():
                raise OSError(errno.ENOENT, f"store bucket folder missing: {self.root / bucket}")
        if not os.access(self._tmp, os.W_OK):
            raise OSError(errno.EACCES, f"store is not writable: {self._tmp}")
