"""The per-host model cache: copies a model-store entry to `cache_dir/{name}/{version}/` once,
verifying every file by sha256, and reuses it for every later job on the host.

- Resumable: files download to `*.part` and continue from their size after an interruption;
  files already present and verified are skipped.
- Self-healing: a cached file whose size/mtime no longer match what was verified is re-hashed and
  re-fetched when it is wrong; a corrupt partial download is re-fetched once from the start.
- Honest: a file that is still wrong after a full fetch means the stored object is corrupt, which
  is MODEL_FAILED naming the file.
- A marker (`{version}.verified.json` beside the folder) records the verified manifest and each
  file's size and mtime, so the next call checks stats instead of re-hashing gigabytes.
- Two processes on one host serialise on a lock file, so they never download the same file twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Literal

from jobs.storage import ObjectNotFound, ObjectStore

from .manifest import CHUNK, ModelFile, ModelManifest, file_key, load_manifest, model_failed, sha256_file

# (bytes done, bytes total), called per file and every REPORT_BYTES downloaded; it may raise to
# abort (a cancelled job).
Progress = Callable[[int, int], None]
REPORT_BYTES = 16 * 1024 * 1024


@dataclass
class CachedModel:
    """Where a verified model lives on this host, and what this call had to do to get it there."""

    path: Path
    manifest: ModelManifest
    downloaded_files: list[str] = field(default_factory=list)
    downloaded_bytes: int = 0  # fetched from the store by this call
    resumed_bytes: int = 0  # kept from interrupted .part downloads
    refetched_files: list[str] = field(default_factory=list)  # cached or partial copies that failed their hash

    @property
    def from_cache(self) -> bool:
        """True when no weight file was fetched (everything was already cached and verified)."""
        return not self.downloaded_files


def manifest_digest(manifest: ModelManifest) -> str:
    return hashlib.sha256(manifest.model_dump_json().encode()).hexdigest()


def fetch_model(
    store: ObjectStore,
    name: str,
    version: str,
    cache_dir: Path,
    *,
    manifest: ModelManifest | None = None,
    verify: Literal["stat", "full"] = "stat",
    progress: Progress | None = None,
) -> CachedModel:
    """Make `cache_dir/{name}/{version}/` hold exactly the verified files of the entry.

    verify="stat" trusts files whose size and mtime match the marker of an earlier verification;
    "full" re-hashes every file."""
    manifest = manifest or load_manifest(store, name, version)
    root = Path(cache_dir) / name / version
    root.mkdir(parents=True, exist_ok=True)
    result = CachedModel(root, manifest)
    marker_path = root.parent / f"{version}.verified.json"
    digest = manifest_digest(manifest)
    done, total = 0, manifest.total_bytes
    with _host_lock(root.parent / f"{version}.lock"):
        marker = _read_marker(marker_path, digest)
        trusted = marker if verify == "stat" else {}
        stats: dict[str, list[int]] = {}
        for entry in manifest.files:
            target = _target(root, entry, name, version)
            if not _stat_matches(target, trusted.get(entry.path)) and not _verified_copy(target, entry):
                if target.exists():
                    result.refetched_files.append(entry.path)
                    target.unlink()
                report = (lambda n, base=done: progress(base + n, total)) if progress else None
                _download(store, file_key(name, version, entry.path), target, entry, name, version, result, report)
                result.downloaded_files.append(entry.path)
            st = target.stat()
            stats[entry.path] = [st.st_size, st.st_mtime_ns]
            done += entry.size
            if progress:
                progress(done, total)
        if stats != marker:
            _write_marker(marker_path, digest, stats)
    return result


def ensure_cached(store: ObjectStore, name: str, version: str, cache_dir: Path) -> Path:
    """The local folder of the verified model (downloads only what is missing or wrong)."""
    return fetch_model(store, name, version, cache_dir).path


def _target(root: Path, entry: ModelFile, name: str, version: str) -> Path:
    target = (root / entry.path).resolve()
    if root.resolve() not in target.parents:
        raise model_failed(f"Manifest of {name}/{version} names a file outside its folder: {entry.path!r}",
                           name, version, file=entry.path)
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def _stat_matches(target: Path, recorded: list[int] | None) -> bool:
    if recorded is None:
        return False
    try:
        st = target.stat()
    except FileNotFoundError:
        return False
    return [st.st_size, st.st_mtime_ns] == recorded


def _verified_copy(target: Path, entry: ModelFile) -> bool:
    """A file already in place (from an earlier, interrupted run) that hashes right."""
    return target.is_file() and target.stat().st_size == entry.size and sha256_file(target) == entry.sha256


def _download(
    store: ObjectStore,
    key: str,
    target: Path,
    entry: ModelFile,
    name: str,
    version: str,
    result: CachedModel,
    report: Callable[[int], None] | None = None,
) -> None:
    """Fetch into target.part (resuming it when present), check sha256, rename into place.
    A mismatch after a resumed download retries once from byte 0; after a full one it is fatal."""
    part = target.with_name(target.name + ".part")
    for attempt in range(2):
        offset = part.stat().st_size if part.exists() else 0
        if offset > entry.size:
            part.unlink()
            offset = 0
        part.touch()
        digest = hashlib.sha256()
        if offset:
            with open(part, "rb") as f:
                while chunk := f.read(CHUNK):
                    digest.update(chunk)
            result.resumed_bytes += offset
        if offset < entry.size:
            try:
                src = store.open_at(key, offset)
            except ObjectNotFound:
                part.unlink()
                raise model_failed(
                    f"Model file '{entry.path}' of {name}/{version} is listed in its manifest but missing "
                    "from the store", name, version, file=entry.path,
                    suggestion=f"Republish the model: python -m jobs.models publish WEIGHTS_DIR --name {name} "
                    f"--version {version} --force",
                ) from None
            except Exception as exc:
                # A store that refuses the ranged read (S3 InvalidRange: the stored object is shorter
                # than the partial file) says the partial file is not a prefix of it: start over.
                # OSErrors (store unreachable) are real failures and propagate.
                if offset and not isinstance(exc, OSError):
                    part.unlink()
                    result.refetched_files.append(entry.path)
                    continue
                raise
            _append(src, part, digest, offset, result, report)
        size = part.stat().st_size
        if size == entry.size and digest.hexdigest() == entry.sha256:
            os.replace(part, target)
            return
        part.unlink()
        if attempt == 0 and offset:
            result.refetched_files.append(entry.path)
            continue
        raise model_failed(
            f"Model file '{entry.path}' of {name}/{version} failed its sha256 check after download "
            f"(expected {entry.sha256[:12]}..., {entry.size} bytes; got {digest.hexdigest()[:12]}..., {size} bytes): "
            "the stored copy is corrupt",
            name, version,
            file=entry.path,
            suggestion=f"Republish the model: python -m jobs.models publish WEIGHTS_DIR --name {name} --version {version} --force",
        )


def _append(
    src: BinaryIO,
    part: Path,
    digest: hashlib._Hash,
    offset: int,
    result: CachedModel,
    report: Callable[[int], None] | None,
) -> None:
    """Copy the rest of the object onto the partial file, hashing as it goes."""
    with src, open(part, "ab") as dst:
        reported = offset
        while chunk := src.read(CHUNK):
            dst.write(chunk)
            digest.update(chunk)
            result.downloaded_bytes += len(chunk)
            if report and dst.tell() - reported >= REPORT_BYTES:
                reported = dst.tell()
                report(reported)


def _read_marker(path: Path, digest: str) -> dict[str, list[int]]:
    """The file stats recorded when this manifest was last verified ({} when none or stale)."""
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    if data.get("manifest_sha256") != digest:
        return {}
    return {k: list(v) for k, v in data.get("files", {}).items()}


def _write_marker(path: Path, digest: str, stats: dict[str, list[int]]) -> None:
    body = {"manifest_sha256": digest, "files": stats, "verified_at": datetime.now(UTC).isoformat()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".marker-")
    with os.fdopen(fd, "w") as f:
        json.dump(body, f, indent=2)
    os.replace(tmp, path)


@contextmanager
def _host_lock(path: Path) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
