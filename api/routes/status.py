"""GET /jobs/{job_id}: the job's status per docs/architecture.md (jobs.lifecycle.view), from memory (api.job_watch)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from api.context import ApiContext, get_context
from api.schemas import ERROR_RESPONSES, JobStatusResponse
from jobs.errors import ServiceError
from jobs.lifecycle.view import JobView

router = APIRouter(tags=["jobs"])


def not_found(job_id: str) -> ServiceError:
    return ServiceError("JOB_NOT_FOUND", f"Job '{job_id}' not found", {"job_id": job_id})


async def require_view(ctx: ApiContext, job_id: str, *, fresh: bool = False) -> JobView:
    """The job's view or 404 JOB_NOT_FOUND (malformed ids included: they can never exist)."""
    view = await ctx.views.get(job_id, fresh=fresh)
    if view is None:
        raise not_found(job_id)
    return view


@router.get("/jobs/{job_id}", response_model=JobStatusResponse, responses=ERROR_RESPONSES,
            summary="Get the current status of a reconstruction job")
async def job_status(job_id: str, ctx: ApiContext = Depends(get_context)) -> Response:
    view = await require_view(ctx, job_id)
    return Response(view.status_json, media_type="application/json")
