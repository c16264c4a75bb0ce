"""Typed errors raised by the reconstruction library.

Each carries one of the spec's error codes (see `jobs.errors.CATALOGUE`), so the service can turn
any failure into the documented error object without guessing. `recon` cannot import `jobs`, so
the codes are plain strings here; a test checks that every code used here is in the catalogue.
"""

from __future__ import annotations

from typing import Any


class ReconError(Exception):
    """Base class: a failure with a spec error code, a message and JSON-able details."""

    code: str = "MODEL_FAILED"

    def __init__(self, message: str, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details: dict[str, Any] = details

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


class InvalidFileFormat(ReconError):
    """A file is not a decodable PNG of an accepted mode/bit depth."""

    code = "INVALID_FILE_FORMAT"


class InvalidFileCount(ReconError):
    """Not exactly six views and six depth maps."""

    code = "INVALID_FILE_COUNT"


class ValidationFailed(ReconError):
    """Decodable input that cannot be reconstructed (empty mask, all-zero depth, bad cameras)."""

    code = "VALIDATION_FAILED"


class ModelFailed(ReconError):
    """An engine failed or is not available on this host."""

    code = "MODEL_FAILED"


class ConvergenceFailed(ReconError):
    """An optimisation diverged or did not improve."""

    code = "MODEL_CONVERGENCE_FAILED"


class VramOOM(ReconError):
    """CUDA ran out of memory (transient: the service retries)."""

    code = "MODEL_VRAM_OOM"


class GpuUnavailable(ReconError):
    """No usable GPU although one was required (transient: the service retries)."""

    code = "GPU_UNAVAILABLE"


class QualityThresholdFailed(ReconError):
    """Re-rendered input views are below the failure band of quality.json."""

    code = "QUALITY_THRESHOLD_FAILED"


class Cancelled(Exception):
    """Raised by `Hooks.check()` when the job was cancelled; not an error of the job."""


ALL_CODES: frozenset[str] = frozenset(
    cls.code
    for cls in (
        ReconError,
        InvalidFileFormat,
        InvalidFileCount,
        ValidationFailed,
        ModelFailed,
        ConvergenceFailed,
        VramOOM,
        GpuUnavailable,
        QualityThresholdFailed,
    )
)
