"""Model-store entries: `models/{name}/{version}/manifest.json` plus the weight files under
`models/{name}/{version}/files/...`, and `publish` that puts a local weights folder there.

The manifest is written last, so an interrupted publish leaves no visible version; versions are
immutable (publishing over one needs force=True), which is what lets each host cache a version
once and trust it afterwards.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from pydantic import BaseModel, Field

from jobs.errors import ServiceError
from jobs.storage import ObjectNotFound, ObjectStore

MANIFEST_NAME = "manifest.json"
CHUNK = 1024 * 1024
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Frameworks whose versions a manifest records when they are installed where it is published.
RECORDED_FRAMEWORKS = ("torch", "safetensors", "numpy", "transformers", "diffusers")


class ModelFile(BaseModel):
    path: str  # relative to the weights folder, "/"-separated
    size: int
    sha256: str


class ModelManifest(BaseModel):
    name: str
    version: str
    files: list[ModelFile]
    frameworks: dict[str, str] = Field(default_factory=dict)
    required_vram_gb: float = 0.0  # free VRAM the loaded model needs; 0 = runs without a GPU
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def check_name(value: str, what: str) -> str:
    """Model names and versions are single key segments (e.g. "trellis-vggt", "v0-2")."""
    if not _SEGMENT.match(value):
        raise ValueError(f"invalid model {what} {value!r}: use letters, digits, '.', '_' or '-'")
    return value


def entry_prefix(name: str, version: str) -> str:
    return f"models/{check_name(name, 'name')}/{check_name(version, 'version')}/"


def manifest_key(name: str, version: str) -> str:
    return entry_prefix(name, version) + MANIFEST_NAME


def file_key(name: str, version: str, path: str) -> str:
    return f"{entry_prefix(name, version)}files/{path}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def installed_frameworks() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for dist in RECORDED_FRAMEWORKS:
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def model_failed(
    message: str, name: str, version: str, *, suggestion: str | None = None, **details: object
) -> ServiceError:
    """MODEL_FAILED at load_weights; details name the weights (the task adds the engine as `model`)."""
    return ServiceError(
        "MODEL_FAILED",
        message,
        {"weights": f"{name}/{version}", "pipeline_stage": "load_weights", **details},
        suggestion,
    )


def load_manifest(store: ObjectStore, name: str, version: str) -> ModelManifest:
    """The entry's manifest; MODEL_FAILED when the store has no such model version."""
    try:
        data = store.get_bytes(manifest_key(name, version))
    except ObjectNotFound:
        available = list_versions(store, name)
        raise model_failed(
            f"Model '{name}' version '{version}' is not in the model store"
            + (f" (published versions: {', '.join(available)})" if available else ""),
            name, version,
            suggestion=f"Publish it with: python -m jobs.models publish WEIGHTS_DIR --name {name} --version {version}",
        ) from None
    return ModelManifest.model_validate_json(data)


def list_versions(store: ObjectStore, name: str) -> list[str]:
    """Published (manifest present) versions of a model, sorted."""
    prefix = f"models/{check_name(name, 'name')}/"
    return sorted(
        info.key[len(prefix):].split("/")[0]
        for info in store.list(prefix)
        if info.key.endswith("/" + MANIFEST_NAME) and info.key.count("/") == 3
    )


class _HashingReader:
    """Hashes what the store reads, so a file is read once to upload and checksum it."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.digest.update(data)
        return data


def publish(
    store: ObjectStore,
    local_dir: Path,
    name: str,
    version: str,
    *,
    required_vram_gb: float = 0.0,
    frameworks: dict[str, str] | None = None,
    force: bool = False,
) -> ModelManifest:
    """Upload every file under `local_dir` and then the manifest (sizes, sha256, framework
    versions, VRAM requirement). Refuses an existing version unless `force`."""
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise NotADirectoryError(f"weights folder not found: {local_dir}")
    key = manifest_key(name, version)
    if store.exists(key) and not force:
        raise FileExistsError(f"model {name}/{version} is already published; versions are immutable")
    if force:
        store.delete_prefix(entry_prefix(name, version))
    paths = sorted(p for p in local_dir.rglob("*") if p.is_file())
    if not paths:
        raise ValueError(f"no files to publish in {local_dir}")
    files = []
    for path in paths:
        rel = path.relative_to(local_dir).as_posix()
        with open(path, "rb") as f:
            reader = _HashingReader(f)
            size = store.put_stream(file_key(name, version, rel), reader, path.stat().st_size)  # type: ignore[arg-type]
        files.append(ModelFile(path=rel, size=size, sha256=reader.digest.hexdigest()))
    manifest = ModelManifest(
        name=name,
        version=version,
        files=files,
        frameworks={**installed_frameworks(), **(frameworks or {})},
        required_vram_gb=required_vram_gb,
    )
    store.put_bytes(key, manifest.model_dump_json(indent=2).encode())
    return manifest
