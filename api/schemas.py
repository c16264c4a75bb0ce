"""Response and request models of the API contract (docs/api.md), for validation and the OpenAPI docs at /docs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from jobs.lifecycle import JobStatus


class ErrorObject(BaseModel):
    code: str = Field(examples=["INVALID_FILE_COUNT"])
    message: str
    details: dict[str, Any] = Field(default_factory=dict)
    suggestion: str


class ErrorResponse(BaseModel):
    error: ErrorObject


class GpuInfo(BaseModel):
    name: str
    driver_version: str
    memory_total_gb: float
    memory_free_gb: float
    memory_used_gb: float


class HealthResponse(BaseModel):
    status: Literal["healthy", "unhealthy"]
    gpu: GpuInfo | None = None
    error: str | None = Field(None, description="Why the service is unhealthy (503 only)")
    device: str = Field(description="Where jobs run: cuda or cpu")
    note: str | None = None
    prefect: dict[str, Any] = Field(default_factory=dict, description="reachable, api_url")
    storage: dict[str, Any] = Field(default_factory=dict, description="backend, reachable")
    workers: dict[str, Any] = Field(default_factory=dict, description="work pool and workers polling it")
    warnings: list[str] = Field(default_factory=list)


class JobSubmitted(BaseModel):
    job_id: str = Field(examples=["k3m8xq2p"])
    status: Literal["queued"] = "queued"
    model_type: str = Field(examples=["reconviagen"])
    created_at: str = Field(examples=["2026-01-31T12:30:00Z"])


class ModelStatus(BaseModel):
    model: str
    status: JobStatus
    progress: int = Field(ge=0, le=100)
    error: ErrorObject | None = None


class JobStatusResponse(BaseModel):
    job_id: str
    status: JobStatus
    progress: int = Field(ge=0, le=100)
    current_model: str | None
    created_at: str
    updated_at: str
    error: ErrorObject | None
    models: list[ModelStatus] | None = Field(None, description="Only for model_type both: one entry per model")
    options: dict[str, Any] | None = Field(
        None, description="Only for jobs submitted with job options: the target_faces, texture_size and formats given")


class CancelRequest(BaseModel):
    confirm: bool = False


class CancelResponse(BaseModel):
    job_id: str
    status: Literal["cancel_requested", "cancelled"]
    message: str


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 404, 409, 410, 422, 500, 503)
}

# Endpoints that answer a `Range` header (resumable downloads, api/ranges.py).
RANGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    206: {"description": "The requested byte range; Content-Range says which part of how many bytes"},
    416: {"model": ErrorResponse, "description": "Range not satisfiable: VALIDATION_FAILED with details.range, "
                                                 "and Content-Range: bytes */{size}"},
}
