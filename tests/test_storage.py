"""The object-store contract, run unchanged against the filesystem and the S3 (moto) backend."""

from __future__ import annotations

import hashlib
import io
import threading
from pathlib import Path

import pytest

from jobs.errors import from_exception
from jobs.settings import Settings
from jobs.storage import InvalidKey, ObjectNotFound, StorageUnavailable, get_store
from jobs.storage.fs import FilesystemStore

MB = 1024 * 1024


class PatternStream(io.RawIOBase):
    """`size` deterministic bytes produced on demand (never held whole), recording the largest
    single read so a test can see the consumer streamed it."""

    def __init__(self, size: int, seed: int = 7) -> None:
        self.size, self.pos, self.max_read = size, 0, 0
        self._block = hashlib.sha256(str(seed).encode()).digest() * 4096  # 128 KiB repeating block

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        n = min(len(buffer), self.size - self.pos)
        self.max_read = max(self.max_read, len(buffer))
        for start in range(0, n, len(self._block)):
            off = (self.pos + start) % len(self._block)
            piece = (self._block[off:] + self._block[:off])[: min(len(self._block), n - start)]
            buffer[start : start + len(piece)] = piece
        self.pos += n
        return n


def pattern_sha256(size: int, seed: int = 7) -> str:
    digest = hashlib.sha256()
    src = PatternStream(size, seed)
    while chunk := src.read(MB):
        digest.update(chunk)
    return digest.hexdigest()


def test_put_get_stat_exists(store):
    assert store.put_bytes("inputs/ab12cd34/views/0-front.png", b"hello") == 5
    assert store.get_bytes("inputs/ab12cd34/views/0-front.png") == b"hello"
    assert store.stat("inputs/ab12cd34/views/0-front.png").size == 5
    assert store.exists("inputs/ab12cd34/views/0-front.png")
    assert not store.exists("inputs/ab12cd34/views/1-back.png")
    store.put_bytes("jobs/empty/job.json", b"")
    assert store.get_bytes("jobs/empty/job.json") == b""


def test_put_file_and_download_file(store, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(bytes(range(256)) * 100)
    assert store.put_file("outputs/j1/fusion/mesh.glb", src) == 25600
    dest = tmp_path / "deep" / "copy.bin"
    store.download_file("outputs/j1/fusion/mesh.glb", dest)
    assert dest.read_bytes() == src.read_bytes()
    assert not dest.with_name("copy.bin.part").exists()


@pytest.mark.parametrize("known_length", [True, False], ids=["length", "unknown-length"])
def test_large_object_streams_both_ways(store, known_length):
    """25 MB goes in from a generator-like stream and comes back in 1 MiB chunks: neither side
    reads it whole (the S3 backend holds at most one multipart part)."""
    size = 25 * MB + 123
    src = PatternStream(size)
    assert store.put_stream("outputs/big/fusion/mesh.ply", src, size if known_length else -1) == size
    assert src.max_read <= 8 * MB + 1  # minio reads one byte past a part to find the end
    assert store.stat("outputs/big/fusion/mesh.ply").size == size
    digest, largest, total = hashlib.sha256(), 0, 0
    for chunk in store.iter_chunks("outputs/big/fusion/mesh.ply", MB):
        digest.update(chunk)
        largest = max(largest, len(chunk))
        total += len(chunk)
    assert total == size and largest <= MB
    assert digest.hexdigest() == pattern_sha256(size)


def test_partial_reads_from_open(store):
    store.put_bytes("models/m/1/weights.bin", bytes(range(200)))
    with store.open("models/m/1/weights.bin") as f:
        assert f.read(10) == bytes(range(10))
        assert f.read(5) == bytes(range(10, 15))
        assert f.read() == bytes(range(15, 200))
        assert f.read() == b""


def test_short_stream_with_declared_length_fails_and_stores_nothing(store):
    with pytest.raises(OSError):
        store.put_stream("inputs/short/views/0-a.png", io.BytesIO(b"abc"), 10)
    assert not store.exists("inputs/short/views/0-a.png")


def test_list_is_recursive_sorted_and_prefix_exact(store):
    keys = [
        "inputs/job1/views/1-b.png",
        "inputs/job1/views/0-a.png",
        "inputs/job1/depths/0-a.png",
        "inputs/job10/views/0-a.png",
        "outputs/job1/fusion/mesh.glb",
    ]
    for i, key in enumerate(keys):
        store.put_bytes(key, b"x" * (i + 1))
    listed = store.list("inputs/job1/")
    assert [o.key for o in listed] == sorted(keys[:3])
    assert {o.key: o.size for o in listed}["inputs/job1/views/0-a.png"] == 2
    # a plain string prefix: "job1" also matches "job10"
    assert [o.key for o in store.list("inputs/job1")] == sorted(keys[:4])
    assert [o.key for o in store.list("inputs/job1/views/0")] == ["inputs/job1/views/0-a.png"]
    assert [o.key for o in store.list("outputs")] == ["outputs/job1/fusion/mesh.glb"]
    assert store.list("inputs/nothing/") == []
    assert store.list("jobs/") == []


def test_delete_and_delete_prefix(store):
    for key in ("outputs/j2/fusion/a", "outputs/j2/fusion/b", "outputs/j2/nvdiffrec/c", "outputs/j20/fusion/a"):
        store.put_bytes(key, b"1")
    store.delete("outputs/j2/fusion/a")
    store.delete("outputs/j2/fusion/a")  # missing: not an error
    assert not store.exists("outputs/j2/fusion/a")
    assert store.delete_prefix("outputs/j2/") == 2
    assert store.list("outputs/j2/") == []
    assert [o.key for o in store.list("outputs/")] == ["outputs/j20/fusion/a"]
    assert store.delete_prefix("outputs/j2/") == 0


def test_missing_key_raises_object_not_found(store):
    with pytest.raises(ObjectNotFound):
        store.open("jobs/nope/job.json")
    with pytest.raises(ObjectNotFound):
        store.stat("jobs/nope/job.json")
    with pytest.raises(ObjectNotFound):
        store.get_bytes("jobs/nope/job.json")
    with pytest.raises(KeyError):  # ObjectNotFound is a KeyError, as base.py promises
        store.get_bytes("models/none/1/manifest.json")


@pytest.mark.parametrize(
    "key",
    ["", "/inputs/a", "inputs", "inputs/", "secrets/a", "inputs/../jobs/x", "inputs/a/../../b",
     "inputs/./a", "inputs//a", "inputs/a/", "inputs\\a", "inputs/a\x00b", "..", "../inputs/a"],
)
def test_invalid_keys_are_refused_everywhere(store, key):
    for op in (lambda: store.put_bytes(key, b"x"), lambda: store.open(key), lambda: store.stat(key),
               lambda: store.delete(key)):
        with pytest.raises(InvalidKey):
            op()


@pytest.mark.parametrize("prefix", ["", "/inputs", "nope/", "inputs/../", "inputs/a/../"])
def test_invalid_prefixes_are_refused(store, prefix):
    with pytest.raises(InvalidKey):
        store.list(prefix)


def test_overwrite_is_atomic_for_concurrent_readers(store):
    """While a writer replaces a 3 MB object again and again, every read sees one whole version."""
    size = 3 * MB
    versions = {bytes([v]) * size for v in range(4)}
    store.put_bytes("jobs/atomic/job.json", bytes([0]) * size)
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for v in range(1, 8):
                store.put_bytes("jobs/atomic/job.json", bytes([v % 4]) * size)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            stop.set()

    thread = threading.Thread(target=writer)
    thread.start()
    reads = 0
    while not stop.is_set() or reads < 3:
        data = store.get_bytes("jobs/atomic/job.json")
        assert data in versions, f"torn read: {len(data)} bytes, first {data[:1]!r} last {data[-1:]!r}"
        reads += 1
    thread.join()
    assert not errors
    assert store.get_bytes("jobs/atomic/job.json") == bytes([7 % 4]) * size


def test_ping_succeeds(store):
    store.ping()


def test_fs_store_leaves_no_temp_files_or_empty_folders(tmp_path):
    store = FilesystemStore(tmp_path / "s")
    store.put_bytes("inputs/j/views/0-a.png", b"a")
    with pytest.raises(OSError):
        store.put_stream("inputs/j/views/1-b.png", io.BytesIO(b"ab"), 5)
    assert list((tmp_path / "s" / ".tmp").iterdir()) == []
    store.delete_prefix("inputs/j/")
    assert list((tmp_path / "s" / "inputs").iterdir()) == []


_DISK_FULL_SCRIPT = """
import io, sys
from jobs.errors import from_exception
from jobs.storage.fs import FilesystemStore
store = FilesystemStore(sys.argv[1])
try:
    store.put_stream("outputs/j/fusion/mesh.ply", io.BytesIO(b"x" * 3_000_000), 3_000_000)
except OSError as exc:
    leftovers = list((store.root / ".tmp").iterdir())
    print(from_exception(exc).code, exc.errno, len(leftovers), store.exists("outputs/j/fusion/mesh.ply"))
"""


def test_fs_store_disk_full_propagates_enospc(tmp_path):
    """A real full filesystem (a 1 MiB tmpfs in a private mount namespace): the write fails with
    ENOSPC as OSError, which from_exception maps to DISK_FULL, and no temp file is left behind."""
    import errno
    import os
    import shutil
    import subprocess
    import sys

    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) not available to mount a small tmpfs")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = tmp_path / "fill.py"
    script.write_text(_DISK_FULL_SCRIPT)
    cmd = f'mount -t tmpfs -o size=1m tmpfs "{mnt}" && exec "{sys.executable}" "{script}" "{mnt}/store"'
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": repo}
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", cmd], capture_output=True, text=True, timeout=60, env=env)
    if proc.returncode != 0 and "Traceback" not in proc.stderr:  # unshare/mount refused by the host
        pytest.skip(f"cannot mount tmpfs here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["DISK_FULL", str(errno.ENOSPC), "0", "False"]


def test_get_store_selects_backend(tmp_path, s3_settings):
    fs = get_store(Settings(data_dir=tmp_path / "d"))
    assert fs.name == "fs" and (tmp_path / "d" / "store" / "jobs").is_dir()
    s3 = get_store(s3_settings)
    assert s3.name == "s3"
    s3.put_bytes("jobs/x/job.json", b"{}")
    names = {b.name for b in s3.client.list_buckets()}  # type: ignore[attr-defined]
    assert {f"{s3_settings.s3_bucket_prefix}{b}" for b in ("inputs", "outputs", "jobs", "models")} <= names


def test_s3_unreachable_endpoint_raises_storage_unavailable(tmp_path):
    from jobs.storage.s3 import S3Store
    from tests.fixtures.s3 import free_port

    settings = Settings(data_dir=tmp_path, storage="s3", s3_endpoint=f"127.0.0.1:{free_port()}",
                        s3_access_key="a", s3_secret_key="b", s3_region="us-east-1")
    store = S3Store(settings, connect_timeout=0.5)  # starts even when the endpoint is down
    with pytest.raises(StorageUnavailable, match="unreachable"):
        store.ping()
    with pytest.raises(StorageUnavailable):
        store.get_bytes("jobs/x/job.json")
    assert from_exception(StorageUnavailable("x")).code == "STORAGE_UNAVAILABLE"
    assert from_exception(StorageUnavailable("x")).http_status == 503


def test_open_at_resumes_from_an_offset(store):
    store.put_bytes("models/m/1/files/w.bin", bytes(range(256)) * 4)
    with store.open_at("models/m/1/files/w.bin", 1000) as f:
        assert f.read() == (bytes(range(256)) * 4)[1000:]
    with store.open_at("models/m/1/files/w.bin", 0) as f:
        assert len(f.read()) == 1024
    with pytest.raises(ObjectNotFound):
        store.open_at("models/m/1/files/missing.bin", 10)
