"""A job's progress as Prefect artifacts: the flow writes them (`ProgressArtifacts`), the API reads
them back (`read_jobs_progress` -> `ReportedProgress`), with the keys and row shape defined once:
a progress artifact `job-{job_id}-progress` (0-100) and a table artifact `job-{job_id}-models`
(one `ModelRow` per model)."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict, cast
from uuid import UUID

from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient

log = logging.getLogger(__name__)

# Prefect's server answers at most PREFECT_API_DEFAULT_LIMIT (200) rows per filter request.
PAGE = 200


def progress_artifact_key(job_id: str) -> str:
    return f"job-{job_id}-progress"


def models_artifact_key(job_id: str) -> str:
    return f"job-{job_id}-models"


class ModelRow(TypedDict, total=False):
    """One row of the models table artifact, written by the flow at every stage."""

    model: str
    status: str  # pending | running | completed | failed | cancelled
    stage: str  # validate | load_weights | inference | export | metrics
    progress: int  # 0-100 within this model
    error: dict[str, Any] | None  # the error object when this model failed


@dataclass
class ReportedProgress:
    """What the flow has reported so far (both artifacts, read with one request)."""

    progress: int | None = None
    models: list[ModelRow] | None = None

    @property
    def current_model(self) -> str | None:
        """The model being worked on: the first running row, else the last row that started."""
        rows = self.models or []
        for row in rows:
            if row.get("status") == "running":
                return row.get("model")
        started = [r for r in rows if r.get("status") not in (None, "pending")]
        return started[-1].get("model") if started else None


class ProgressArtifacts:
    """The flow's side: writes one job's two artifacts (the progress one is created once, then
    updated in place). Failures are logged, never raised: progress is advisory."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self._artifact_id: UUID | None = None

    def write(self, percent: float, description: str, rows: list[ModelRow] | None = None) -> None:
        from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact

        try:
            if self._artifact_id is None:
                # Called from sync code outside an event loop, so async_dispatch runs the sync
                # implementation and returns the UUID, not a coroutine.
                self._artifact_id = cast(UUID, create_progress_artifact(
                    percent, key=progress_artifact_key(self.job_id), description=description))
            else:
                update_progress_artifact(self._artifact_id, percent, description=description)
            if rows is not None:
                create_table_artifact([dict(r) for r in rows], key=models_artifact_key(self.job_id),
                                      description="per-model status")
        except Exception as exc:  # never fail a job over its progress display
            log.warning("could not write progress artifacts for %s: %s", self.job_id, exc)


def clamp_progress(value: Any) -> int | None:
    """Artifact data -> an int in 0..100 (None when unusable)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if math.isnan(number):
        return None
    return max(0, min(100, int(round(number))))


def _parse_table(data: Any) -> list[ModelRow] | None:
    """Table artifacts store their rows as a JSON string (list of dicts)."""
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError:
            return None
    if isinstance(data, list) and all(isinstance(r, dict) for r in data):
        return [ModelRow(**r) for r in data]
    return None


async def read_job_progress(client: PrefectClient, job_id: str) -> ReportedProgress:
    """Latest progress and models-table artifacts of a job in one request."""
    return (await read_jobs_progress(client, [job_id]))[job_id]


async def read_jobs_progress(client: PrefectClient, job_ids: list[str]) -> dict[str, ReportedProgress]:
    """Both artifacts of many jobs with one request per 100 jobs (the API's status watcher)."""
    result = {job_id: ReportedProgress() for job_id in job_ids}
    owners = {}
    for job_id in job_ids:
        owners[progress_artifact_key(job_id)] = (job_id, "progress")
        owners[models_artifact_key(job_id)] = (job_id, "models")
    keys = list(owners)
    for start in range(0, len(keys), PAGE):
        page = keys[start:start + PAGE]
        collections = await client.read_latest_artifacts(
            artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(any_=page)),
            limit=len(page),
        )
        for c in collections:
            owner = owners.get(c.key)
            if owner is None:
                continue
            job_id, kind = owner
            if kind == "progress":
                result[job_id].progress = clamp_progress(c.data)
            elif kind == "models":
                result[job_id].models = _parse_table(c.data)
    return result
