"""The model store: weights published under `models/{name}/{version}/` of the object
store with a manifest, cached and verified once per host, checked against free VRAM, and kept
resident in the worker process. Typical use in the load_weights task:

    cached = prepare_model(store, "trellis-vggt", "v0-2", settings.cache_dir, device)
    pipeline = RESIDENT.get_or_load(name, version, cached.device, lambda: load(cached.path))

CLI: `python -m jobs.models publish DIR --name N --version V [--required-vram-gb G]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jobs.storage import ObjectStore

from .cache import CachedModel, Progress, ensure_cached, fetch_model
from .manifest import ModelFile, ModelManifest, list_versions, load_manifest, manifest_key, publish, sha256_file
from .resident import RESIDENT, ResidentModels
from .vram import check_vram, resolve_device

__all__ = [
    "RESIDENT", "CachedModel", "ModelFile", "ModelManifest", "PreparedModel", "ResidentModels",
    "check_vram", "ensure_cached", "fetch_model", "list_versions", "load_manifest", "manifest_key",
    "prepare_model", "publish", "resolve_device", "sha256_file",
]


@dataclass
class PreparedModel:
    cached: CachedModel
    device: str  # resolved: "cpu", "cuda" or "cuda:N"

    @property
    def path(self) -> Path:
        return self.cached.path


def prepare_model(
    store: ObjectStore,
    name: str,
    version: str,
    cache_dir: Path,
    device: str = "auto",
    *,
    progress: Progress | None = None,
) -> PreparedModel:
    """Manifest -> VRAM check -> cached, verified files, in that order: a model that cannot fit
    fails before gigabytes are downloaded.

    The VRAM check runs once per (name, version, device) in a process: after it passed, the engine
    keeps the weights resident (engines' load() is idempotent, or RESIDENT holds them), and those
    weights are what now fills the GPU; checking again would refuse the model because of itself."""
    manifest = load_manifest(store, name, version)
    resolved = resolve_device(device)
    key = (name, version, resolved)
    if key not in _VRAM_CHECKED and not RESIDENT.contains(*key):
        resolved = check_vram(manifest, resolved)
        _VRAM_CHECKED.add(key)
    cached = fetch_model(store, name, version, cache_dir, manifest=manifest, progress=progress)
    return PreparedModel(cached, resolved)


_VRAM_CHECKED: set[tuple[str, str, str]] = set()
