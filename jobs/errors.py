"""The spec's error catalogue (docs/api.md "Error codes"): the one place where a
code gets its HTTP status, message and suggestion, and the error object every failure becomes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ErrorKind:
    code: str
    http_status: int
    meaning: str
    suggestion: str
    transient: bool = False  # retried with backoff by the flow's tasks


_KINDS = [
    ErrorKind("VALIDATION_FAILED", 422, "Request validation failed", "Fix the validation errors and try again."),
    ErrorKind("FILE_TOO_LARGE", 422, "Uploaded file exceeds size limit", "Reduce image resolution or compress PNGs before uploading (max 20MB per file)."),
    ErrorKind("INVALID_FILE_FORMAT", 422, "File is not a valid PNG image", "Ensure all uploaded files are valid PNG images."),
    ErrorKind("INVALID_FILE_COUNT", 422, "Wrong number of files uploaded", "Upload exactly 6 view images and 6 depth render images."),
    ErrorKind("JOB_NOT_FOUND", 404, "Job ID does not exist", "Check the job ID and try again."),
    ErrorKind("JOB_NOT_READY", 409, "Job not in correct state for operation", "Wait for job to complete before downloading. Poll GET /jobs/{job_id} for status."),
    ErrorKind("JOB_EXPIRED", 410, "Job results no longer available", "Job results are no longer available. Submit a new job if needed."),
    ErrorKind("MODEL_FAILED", 500, "Model processing failed", "Model processing failed. Try again with different inputs or contact support."),
    ErrorKind("MODEL_OOM", 500, "System ran out of memory", "System ran out of memory. Try again when resources are available."),
    ErrorKind("MODEL_VRAM_OOM", 500, "GPU ran out of VRAM", "GPU ran out of VRAM (16GB limit). Try again when GPU resources are available.", transient=True),
    ErrorKind("MODEL_CONVERGENCE_FAILED", 500, "Model failed to converge", "Model failed to converge. Try uploading higher-quality or better-lit input images."),
    ErrorKind("QUALITY_THRESHOLD_FAILED", 500, "Reconstruction quality below threshold", "Reconstruction quality below threshold. Try uploading higher-quality input images."),
    ErrorKind("INCOMPLETE_RESULTS", 500, "Job outputs are missing files", "Job outputs are incomplete. Contact support."),
    ErrorKind("GPU_UNAVAILABLE", 503, "No GPU available for processing", "No GPU available. Job will retry automatically.", transient=True),
    ErrorKind("DISK_FULL", 503, "Server disk is full", "Server disk is full. Contact support."),
    ErrorKind("MEMORY_EXHAUSTED", 503, "Server out of memory", "Server out of memory. Try again later."),
    ErrorKind("UNKNOWN_ERROR", 500, "Unexpected error occurred", "An unexpected error occurred. Contact support if this persists."),
    # Not in the spec's table: only used when RECON_API_KEYS enables production authentication.
    ErrorKind("UNAUTHORIZED", 401, "Missing or invalid API key", "Send a valid API key in the X-API-Key header or as Authorization: Bearer <key>."),
    ErrorKind("RATE_LIMITED", 429, "Too many job submissions", "Slow down: wait before submitting more jobs."),
    # Not in the spec's table either: a dependency briefly away. The spec's 503 codes name a full
    # disk, exhausted memory and a missing GPU, each of which would send an operator to the wrong
    # component. First the object store not answering:
    ErrorKind("STORAGE_UNAVAILABLE", 503, "The object store is not answering", "Storage is temporarily unavailable. Try again after the Retry-After delay.", transient=True),
    # The same for the orchestration server (Prefect) or its database: jobs are safe, the API
    # cannot read their state for a moment.
    ErrorKind("ORCHESTRATION_UNAVAILABLE", 503, "The orchestration server is not answering", "Your job is safe and keeps its place. Try again after the Retry-After delay.", transient=True),
]

CATALOGUE: dict[str, ErrorKind] = {k.code: k for k in _KINDS}


class ServiceError(Exception):
    """An error that becomes the documented error object; raised anywhere in api/ and flows/."""

    def __init__(
        self,
        code: str,
        message: str | None = None,
        details: dict[str, Any] | None = None,
        suggestion: str | None = None,
    ) -> None:
        kind = CATALOGUE.get(code) or CATALOGUE["UNKNOWN_ERROR"]
        self.code = kind.code
        self.kind = kind
        self.message = message or kind.meaning
        self.details = details or {}
        self.suggestion = suggestion or kind.suggestion
        super().__init__(self.message)

    @property
    def http_status(self) -> int:
        return self.kind.http_status

    @property
    def transient(self) -> bool:
        return self.kind.transient

    def to_error_object(self) -> dict[str, Any]:
        """The `error` member of the spec's error response."""
        return {
            "code": self.code,
            "message": self.message,
            "details": self.details,
            "suggestion": self.suggestion,
        }

    def to_response_body(self) -> dict[str, Any]:
        return {"error": self.to_error_object()}

    @classmethod
    def from_error_object(cls, obj: dict[str, Any]) -> ServiceError:
        return cls(obj.get("code", "UNKNOWN_ERROR"), obj.get("message"), obj.get("details"), obj.get("suggestion"))


def from_exception(exc: BaseException, **details: Any) -> ServiceError:
    """Classify any exception into a catalogue error (ENOSPC -> DISK_FULL, MemoryError ->
    MEMORY_EXHAUSTED, the object store unreachable -> STORAGE_UNAVAILABLE, recon's typed errors
    keep their code, everything else UNKNOWN_ERROR)."""
    import errno

    from jobs.storage import StorageUnavailable

    if isinstance(exc, ServiceError):
        if details:
            exc.details = {**details, **exc.details}
        return exc
    code = getattr(exc, "code", None)
    if isinstance(code, str) and code in CATALOGUE:
        merged = {**details, **(getattr(exc, "details", None) or {})}
        return ServiceError(code, getattr(exc, "message", str(exc)), merged)
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return ServiceError("DISK_FULL", "No space left on the server's storage", details)
    if isinstance(exc, StorageUnavailable):
        return ServiceError("STORAGE_UNAVAILABLE", f"The object store is not answering: {exc}"[:500], details)
    if isinstance(exc, MemoryError):
        return ServiceError("MEMORY_EXHAUSTED", "The server ran out of memory", details)
    if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError without importing torch
        return ServiceError("MODEL_VRAM_OOM", str(exc).splitlines()[0] if str(exc) else None, details)
    return ServiceError("UNKNOWN_ERROR", f"{type(exc).__name__}: {exc}", details)
