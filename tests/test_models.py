"""Model store: publish, per-host cache verified by sha256, resumable downloads, VRAM checks and
the resident-model cache, with a small safetensors model the tests make themselves."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from jobs.errors import ServiceError
from jobs.gpu import free_vram_gb, gpu_count, gpu_info
from jobs.models import (
    RESIDENT,
    ModelManifest,
    ResidentModels,
    check_vram,
    ensure_cached,
    fetch_model,
    list_versions,
    load_manifest,
    prepare_model,
    publish,
    sha256_file,
)
from jobs.models.manifest import file_key
from jobs.storage.fs import FilesystemStore

REPO = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024


@pytest.fixture
def weights_dir(tmp_path) -> Path:
    """A tiny two-file model: weights in safetensors (one 3 MiB tensor so downloads have several
    chunks) and a config in a subfolder, like a Hugging Face snapshot."""
    root = tmp_path / "weights"
    (root / "config").mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    save_file({"encoder.weight": torch.randn(768, 1024, generator=gen),
               "encoder.bias": torch.randn(1024, generator=gen)}, str(root / "model.safetensors"))
    (root / "config" / "pipeline.json").write_text(json.dumps({"name": "tiny", "layers": 1}))
    return root


def _same_weights(a: Path, b: Path) -> bool:
    ta, tb = load_file(str(a)), load_file(str(b))
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_publish_writes_files_and_manifest(store, weights_dir):
    manifest = publish(store, weights_dir, "tiny", "v1", required_vram_gb=2.5)
    assert [f.path for f in manifest.files] == ["config/pipeline.json", "model.safetensors"]
    for f in manifest.files:
        assert f.size == (weights_dir / f.path).stat().st_size
        assert f.sha256 == sha256_file(weights_dir / f.path)
        assert store.stat(file_key("tiny", "v1", f.path)).size == f.size
    assert manifest.frameworks["torch"] == importlib.metadata.version("torch")
    assert "safetensors" in manifest.frameworks and "python" in manifest.frameworks
    assert load_manifest(store, "tiny", "v1") == manifest
    assert list_versions(store, "tiny") == ["v1"]
    with pytest.raises(FileExistsError):
        publish(store, weights_dir, "tiny", "v1")
    assert publish(store, weights_dir, "tiny", "v1", required_vram_gb=3.0, force=True).required_vram_gb == 3.0


def test_unknown_model_is_model_failed_with_a_publish_hint(store, tmp_path):
    with pytest.raises(ServiceError) as err:
        fetch_model(store, "nothing", "v9", tmp_path / "cache")
    assert err.value.code == "MODEL_FAILED"
    assert "nothing" in err.value.message and "python -m jobs.models publish" in err.value.suggestion
    assert err.value.details["pipeline_stage"] == "load_weights"


def test_cache_downloads_once_and_verifies(store, weights_dir, tmp_path):
    publish(store, weights_dir, "tiny", "v1")
    cache = tmp_path / "cache"
    first = fetch_model(store, "tiny", "v1", cache)
    assert sorted(first.downloaded_files) == ["config/pipeline.json", "model.safetensors"]
    assert first.downloaded_bytes == first.manifest.total_bytes and not first.from_cache
    assert first.path == cache / "tiny" / "v1"
    assert _same_weights(first.path / "model.safetensors", weights_dir / "model.safetensors")
    mtime = (first.path / "model.safetensors").stat().st_mtime_ns

    second = fetch_model(store, "tiny", "v1", cache)  # the next job on this host
    assert second.from_cache and second.downloaded_bytes == 0 and second.refetched_files == []
    assert (second.path / "model.safetensors").stat().st_mtime_ns == mtime
    assert ensure_cached(store, "tiny", "v1", cache) == first.path
    assert not list(first.path.rglob("*.part"))


def test_corrupted_cached_file_is_detected_and_refetched(store, weights_dir, tmp_path):
    publish(store, weights_dir, "tiny", "v1")
    cache = tmp_path / "cache"
    path = ensure_cached(store, "tiny", "v1", cache) / "model.safetensors"

    with open(path, "r+b") as f:  # flip bytes in place: same size, new mtime
        f.seek(1000)
        f.write(b"\xff" * 16)
    healed = fetch_model(store, "tiny", "v1", cache)
    assert healed.refetched_files == ["model.safetensors"] and healed.downloaded_files == ["model.safetensors"]
    assert sha256_file(path) == sha256_file(weights_dir / "model.safetensors")

    # Corruption that keeps size and mtime passes the cheap stat check; verify="full" still finds it.
    st = path.stat()
    with open(path, "r+b") as f:
        f.write(b"\x00" * 8)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert fetch_model(store, "tiny", "v1", cache).from_cache
    full = fetch_model(store, "tiny", "v1", cache, verify="full")
    assert full.refetched_files == ["model.safetensors"]
    assert _same_weights(path, weights_dir / "model.safetensors")


def test_corrupt_stored_object_fails_naming_the_file(store, weights_dir, tmp_path):
    publish(store, weights_dir, "tiny", "v1")
    key = file_key("tiny", "v1", "model.safetensors")
    data = bytearray(store.get_bytes(key))
    data[5000] ^= 0xFF
    store.put_bytes(key, bytes(data))  # bit rot in the store: same size, wrong hash
    cache = tmp_path / "cache"
    with pytest.raises(ServiceError) as err:
        ensure_cached(store, "tiny", "v1", cache)
    assert err.value.code == "MODEL_FAILED"
    assert err.value.details["file"] == "model.safetensors" and "model.safetensors" in err.value.message
    assert "sha256" in err.value.message
    folder = cache / "tiny" / "v1"
    assert not (folder / "model.safetensors").exists() and not list(folder.rglob("*.part"))


class Interrupted(Exception):
    pass


def test_interrupted_download_resumes_and_skips_verified_files(store, weights_dir, tmp_path, monkeypatch):
    import jobs.models.cache

    monkeypatch.setattr(jobs.models.cache, "REPORT_BYTES", MiB)  # report (and so interrupt) within a 3 MiB file
    publish(store, weights_dir, "tiny", "v1")
    cache = tmp_path / "cache"
    size = (weights_dir / "model.safetensors").stat().st_size

    def stop_after_one_mib_of_weights(done: int, total: int) -> None:
        if done - (weights_dir / "config" / "pipeline.json").stat().st_size >= MiB:
            raise Interrupted()  # what a cancelled job or a killed worker leaves behind

    with pytest.raises(Interrupted):
        fetch_model(store, "tiny", "v1", cache, progress=stop_after_one_mib_of_weights)
    part = cache / "tiny" / "v1" / "model.safetensors.part"
    assert MiB <= part.stat().st_size < size
    assert (cache / "tiny" / "v1" / "config" / "pipeline.json").exists()

    kept = part.stat().st_size
    resumed = fetch_model(store, "tiny", "v1", cache)
    assert resumed.downloaded_files == ["model.safetensors"]  # the verified config is not fetched again
    assert resumed.resumed_bytes == kept and resumed.refetched_files == []
    assert resumed.downloaded_bytes == size - resumed.resumed_bytes
    assert _same_weights(resumed.path / "model.safetensors", weights_dir / "model.safetensors")


def test_corrupt_partial_download_is_refetched(store, weights_dir, tmp_path):
    publish(store, weights_dir, "tiny", "v1")
    folder = tmp_path / "cache" / "tiny" / "v1"
    folder.mkdir(parents=True)
    (folder / "model.safetensors.part").write_bytes(b"\x00" * MiB)  # a partial file with wrong bytes
    result = fetch_model(store, "tiny", "v1", tmp_path / "cache")
    assert "model.safetensors" in result.refetched_files
    assert _same_weights(folder / "model.safetensors", weights_dir / "model.safetensors")


def _manifest(required: float) -> ModelManifest:
    return ModelManifest(name="big", version="v1", files=[], required_vram_gb=required)


def test_vram_check_codes():
    with pytest.raises(ServiceError) as err:
        check_vram(_manifest(16.0), "cuda", free_gb=6.5)
    assert err.value.code == "MODEL_VRAM_OOM" and err.value.transient
    assert "16.0 GB" in err.value.message and "6.5 GB free" in err.value.message
    assert err.value.details["required_vram_gb"] == 16.0 and err.value.details["free_vram_gb"] == 6.5
    assert check_vram(_manifest(16.0), "cuda", free_gb=20.0) == "cuda"
    assert check_vram(_manifest(16.0), "cpu") == "cpu"


def test_vram_check_on_this_host_measures_the_real_gpu():
    """Without a GPU, device="cuda" is GPU_UNAVAILABLE; with one, an impossible requirement is
    MODEL_VRAM_OOM against the measured free memory. Nothing is faked either way."""
    if gpu_count() == 0:
        with pytest.raises(ServiceError) as err:
            check_vram(_manifest(1.0), "cuda")
        assert err.value.code == "GPU_UNAVAILABLE" and "no NVIDIA GPU" in err.value.message
        assert check_vram(_manifest(1.0), "auto") == "cpu"
        assert gpu_info() is None and free_vram_gb() is None
    else:
        with pytest.raises(ServiceError) as err:
            check_vram(_manifest(100_000.0), "cuda")
        assert err.value.code == "MODEL_VRAM_OOM"
        # "auto" follows torch, not NVML: a GPU host with the CPU torch wheel runs on the CPU
        assert check_vram(_manifest(0.5), "auto") == ("cuda" if torch.cuda.is_available() else "cpu")
        info = gpu_info()
        assert info and info["memory_total_gb"] > 0 and info["driver_version"]
        assert 0 < free_vram_gb() <= info["memory_total_gb"] + 0.1


def test_one_device_decision_for_recon_and_jobs():
    """recon.device.resolve_device is the only decision: the model store, the renderer and the
    engines take its answer, CUDA only when torch itself can use it (NVML only reports), and
    /health's torch_cuda_build reads the same fact without importing torch."""
    from jobs.gpu import torch_cuda_build
    from jobs.models import resolve_device as jobs_resolve_device
    from recon.device import resolve_device
    from recon.engines import build_engine

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert jobs_resolve_device is resolve_device
    assert resolve_device("auto") == expected and resolve_device("cuda:1") == "cuda:1"
    assert torch_cuda_build() == (torch.version.cuda is not None)
    if not torch_cuda_build():  # the CPU wheel: whatever NVML sees, everything says cpu
        assert expected == "cpu" and check_vram(_manifest(1.0), "auto") == "cpu"
        from recon.render import get_backend

        assert get_backend("auto").device.type == "cpu"
        assert build_engine("fusion", resolve_device("auto")).device == "cpu"
    with pytest.raises(ValueError):
        resolve_device("tpu")


def test_prepare_model_checks_vram_before_downloading(store, weights_dir, tmp_path):
    publish(store, weights_dir, "tiny", "v1", required_vram_gb=100_000.0)
    with pytest.raises(ServiceError) as err:
        prepare_model(store, "tiny", "v1", tmp_path / "cache", device="cuda")
    assert err.value.code in ("GPU_UNAVAILABLE", "MODEL_VRAM_OOM")
    assert not (tmp_path / "cache" / "tiny" / "v1" / "model.safetensors").exists()
    prepared = prepare_model(store, "tiny", "v1", tmp_path / "cache", device="cpu")
    assert prepared.device == "cpu" and (prepared.path / "model.safetensors").is_file()


def test_resident_models_load_once_per_key(store, weights_dir, tmp_path):
    publish(store, weights_dir, "tiny", "v1")
    path = ensure_cached(store, "tiny", "v1", tmp_path / "cache")
    resident = ResidentModels(max_entries=2)
    first = resident.get_or_load("tiny", "v1", "cpu", lambda: load_file(str(path / "model.safetensors")))
    again = resident.get_or_load("tiny", "v1", "cpu", lambda: pytest.fail("reloaded a resident model"))
    assert again is first and resident.loads == 1
    resident.get_or_load("tiny", "v2", "cpu", lambda: {"w": torch.zeros(1)})
    resident.get_or_load("other", "v1", "cpu", lambda: {"w": torch.ones(1)})  # evicts the least recent
    assert resident.loads == 3 and resident.keys() == [("tiny", "v2", "cpu"), ("other", "v1", "cpu")]
    assert resident.evict("other", "v1", "cpu") and not resident.contains("other", "v1", "cpu")
    resident.clear()
    assert resident.keys() == [] and RESIDENT.max_entries >= 1


@pytest.mark.parametrize("backend", ["fs", "s3"])
def test_publish_cli(backend, weights_dir, tmp_path, request):
    env = {**os.environ, "RECON_DATA_DIR": str(tmp_path / "data"), "RECON_STORAGE": "fs"}
    if backend == "s3":
        env.update(request.getfixturevalue("s3_env"))
    cmd = [sys.executable, "-m", "jobs.models", "publish", str(weights_dir), "--name", "tiny", "--version", "v3",
           "--required-vram-gb", "4", "--framework", "trellis=0.2"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "published tiny/v3" in proc.stdout
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "already published" in again.stderr
    if backend == "fs":
        store = FilesystemStore(tmp_path / "data" / "store")
    else:
        from jobs.settings import Settings
        from jobs.storage.s3 import S3Store

        store = S3Store(Settings(**{k[6:].lower(): v for k, v in env.items() if k.startswith("RECON_S3")},
                                 storage="s3"))
    manifest = load_manifest(store, "tiny", "v3")
    assert manifest.required_vram_gb == 4.0 and manifest.frameworks["trellis"] == "0.2"
    assert {f.path for f in manifest.files} == {"model.safetensors", "config/pipeline.json"}


def test_prepare_model_skips_the_vram_check_for_a_resident_model(store, weights_dir, tmp_path):
    """The next job on a worker must not be refused because the resident weights of the previous
    one now occupy the VRAM the check measures."""
    publish(store, weights_dir, "tiny", "v7", required_vram_gb=100_000.0)
    with pytest.raises(ServiceError) as err:  # no GPU here, or not one this big
        prepare_model(store, "tiny", "v7", tmp_path / "cache", device="cuda")
    assert err.value.code in ("GPU_UNAVAILABLE", "MODEL_VRAM_OOM")
    path = ensure_cached(store, "tiny", "v7", tmp_path / "cache")
    RESIDENT.get_or_load("tiny", "v7", "cuda", lambda: load_file(str(path / "model.safetensors")))
    try:
        prepared = prepare_model(store, "tiny", "v7", tmp_path / "cache", device="cuda")
        assert prepared.device == "cuda" and prepared.cached.from_cache
    finally:
        RESIDENT.evict("tiny", "v7", "cuda")


def test_partial_file_longer_than_a_truncated_stored_object(store, weights_dir, tmp_path):
    """A stored object shorter than the partial download (S3 refuses the ranged read there) and a
    stored object missing altogether both end as MODEL_FAILED naming the file."""
    publish(store, weights_dir, "tiny", "v1")
    key = file_key("tiny", "v1", "model.safetensors")
    store.put_bytes(key, store.get_bytes(key)[: 2 * MiB])
    folder = tmp_path / "cache" / "tiny" / "v1"
    folder.mkdir(parents=True)
    (folder / "model.safetensors.part").write_bytes(b"\x00" * (2 * MiB + 10))
    with pytest.raises(ServiceError) as err:
        fetch_model(store, "tiny", "v1", tmp_path / "cache")
    assert err.value.code == "MODEL_FAILED" and err.value.details["file"] == "model.safetensors"
    store.delete(key)
    with pytest.raises(ServiceError) as err:
        fetch_model(store, "tiny", "v1", tmp_path / "cache")
    assert err.value.code == "MODEL_FAILED" and "missing from the store" in err.value.message
