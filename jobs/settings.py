"""Service settings from environment variables with the `RECON_` prefix (documented in README):
the one settings tree of the service, the reconstruction library's configs included.

One `Settings` object is read per process (`get_settings()`); tests build their own with
overrides. Defaults give the embedded stack of docs/architecture.md under `./data`.

Nested values use `__`: `RECON_NVDIFFREC__CPU__JOINT_ITERATIONS=100`, `RECON_FUSION__VERSION=1.2.0`,
`RECON_EXPORT__PREVIEW_MAX=2048`. The engine and export sections are kept as plain mappings here
and validated into recon's typed configs (`recon.engines.*Config`, `recon.pipeline.ExportConfig`)
where they are used, because the API process must not import recon (tests/test_api_validation.py).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from recon.engines import EngineConfig
    from recon.pipeline import ExportConfig


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECON_", env_nested_delimiter="__", extra="ignore")

    # where the embedded stack keeps everything (Prefect SQLite db, filesystem store, caches)
    data_dir: Path = Path("data")

    # object store: "fs" (under data_dir/store) or "s3" (MinIO or any S3 endpoint)
    storage: Literal["fs", "s3"] = "fs"
    s3_endpoint: str = "localhost:9000"  # host:port, as the minio client wants it
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_secure: bool = False
    s3_region: str | None = None
    s3_bucket_prefix: str = ""  # prepended to the bucket names inputs/outputs/jobs/models
    # Short on purpose: an endpoint that stops answering must become a 503 for the API and a
    # retried task for a flow run within seconds, not hang a request for minutes. The read
    # timeout bounds each wait for bytes, not a whole transfer.
    s3_connect_timeout: float = 3.0
    s3_read_timeout: float = 15.0

    # compute ("auto": recon.device.resolve_device, cuda only when torch can use it)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # recon's configs, field names as in recon.engines.<name> / recon.pipeline.ExportConfig
    fusion: dict[str, Any] = Field(default_factory=dict)
    nvdiffrec: dict[str, Any] = Field(default_factory=dict)
    reconviagen: dict[str, Any] = Field(default_factory=dict)
    export: dict[str, Any] = Field(default_factory=dict)
    model_cache_dir: Path | None = None  # default data_dir/model-cache
    work_dir: Path | None = None  # flow runs' scratch space; default data_dir/work

    # API limits (spec: 20 MB per file, 200 MB per request)
    max_file_bytes: int = 20 * 1024 * 1024
    max_request_bytes: int = 200 * 1024 * 1024
    max_pixels: int = 4096 * 4096  # per image, against decompression bombs

    # job lifecycle
    retention_hours: float = 24.0 * 7
    cancel_confirm_seconds: float = 3600.0
    work_pool: str = "gpu"
    deployment: str = "reconstruct/reconstruct"

    # production-only API authentication and rate limiting (off when empty)
    api_keys: str = ""  # comma-separated
    rate_limit_per_minute: int = 0  # job submissions per client per minute; 0 = unlimited

    api_host: str = "127.0.0.1"
    api_port: int = 8000

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "store"

    @property
    def cache_dir(self) -> Path:
        return self.model_cache_dir or self.data_dir / "model-cache"

    @property
    def work_root(self) -> Path:
        return self.work_dir or self.data_dir / "work"

    def engine_configs(self) -> dict[str, EngineConfig]:
        """Every engine's typed config (version included) from these settings."""
        from recon.engines import ENGINE_CONFIGS

        return {name: cls.model_validate(getattr(self, name)) for name, cls in ENGINE_CONFIGS.items()}

    def engine_config(self, name: str) -> EngineConfig:
        """Engine `name`'s typed config; MODEL_FAILED (recon's ModelFailed) for an unknown name."""
        from recon.engines import engine_config

        return engine_config(name, self.engine_configs())

    def export_config(self) -> ExportConfig:
        from recon.pipeline import ExportConfig

        return ExportConfig.model_validate(self.export)

    @property
    def api_key_set(self) -> frozenset[str]:
        return frozenset(k.strip() for k in self.api_keys.split(",") if k.strip())


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
