"""How a stage failure becomes the job's error object, and which failures are worth a retry.

Every task runs its body inside `failing_as(model, stage)`: any exception becomes a
`jobs.errors.ServiceError` whose details name the model and the pipeline stage (the spec's
MODEL_FAILED details), chained to the original so the retry rule can still see what happened.
Retries (Prefect's own, with exponential backoff) apply only to transient classes: GPU
unavailable, VRAM exhausted, the object store timing out. Validation, quality and every other
failure fail at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from jobs.errors import ServiceError, from_exception
from jobs.storage import StorageUnavailable
from recon.errors import Cancelled

# Exceptions of the object store / network that a retry may cure.
TRANSIENT_IO: tuple[type[BaseException], ...] = (StorageUnavailable, TimeoutError, ConnectionError)

RETRIES = 3
BACKOFF_FACTOR = 5  # delays of 5, 10, 20 s (+ jitter)


def stage_error(exc: BaseException, model: str | None, stage: str) -> ServiceError:
    """The catalogue error for `exc`, with `model` and `pipeline_stage` in its details."""
    details: dict[str, Any] = {"pipeline_stage": stage}
    if model:
        details["model"] = model
    if isinstance(exc, TRANSIENT_IO):  # timeouts and connection errors of any client: the store's
        err = ServiceError("STORAGE_UNAVAILABLE", f"Object store unavailable: {exc}"[:500], details,
                           "The storage backend did not answer, also after retries. Submit the job again later.")
    else:
        err = from_exception(exc, **details)
    err.details.setdefault("pipeline_stage", stage)
    if model:
        err.details.setdefault("model", model)
    return err


def is_transient(exc: BaseException | None) -> bool:
    """True for failures a retry may cure (the kind says so, or the cause is storage I/O)."""
    while exc is not None:
        if isinstance(exc, ServiceError) and exc.transient:
            return True
        if isinstance(exc, TRANSIENT_IO):
            return True
        exc = exc.__cause__
    return False


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry only transient failures."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception as read_error:  # the result itself is unreadable: do not loop on it
        exc = read_error
    return isinstance(exc, BaseException) and is_transient(exc)


@contextmanager
def failing_as(model: str | None, stage: str) -> Iterator[None]:
    """Turn any exception of the block into the job's error object (Cancelled passes through)."""
    try:
        yield
    except (Cancelled, ServiceError) as exc:
        if isinstance(exc, ServiceError):
            exc.details.setdefault("pipeline_stage", stage)
            if model:
                exc.details.setdefault("model", model)
        raise
    except Exception as exc:
        raise stage_error(exc, model, stage) from exc
