"""POST /jobs/{job_id}/cancel: the spec's two-step cancellation.

Step 1 (no body, or confirm=false) records `cancel_requested_at`. Step 2 (confirm=true within
`settings.cancel_confirm_seconds`) proposes Cancelling to Prefect: a queued run becomes Cancelled
at once and the API deletes its files; a running run is stopped by its worker, whose cancellation
hook deletes the files (the cleanup flow sweeps anything left). Both go through
jobs.lifecycle (`runs.request_cancellation`, `changes.record_cancellation`).

A confirm=true without a valid step 1 (never requested, or older than the window) is taken as
step 1: the two steps exist to prevent accidental aborts, so a lone confirmation must not cancel
a long job, and answering an error would leave the client without a way forward. The answer says
so and asks for the confirmation again.
"""

from __future__ import annotations

import json
import logging

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from api.context import ApiContext, get_context
from api.errors import api_error
from api.routes.status import require_view
from api.schemas import ERROR_RESPONSES, CancelRequest, CancelResponse
from jobs.errors import ServiceError
from jobs.lifecycle import JobStatus, changes, runs
from jobs.lifecycle.view import JobView

router = APIRouter(tags=["jobs"])
log = logging.getLogger("api")

REQUESTED = "Cancellation requested. Send confirm=true to confirm cancellation."
REQUESTED_AGAIN = ("No cancellation request within the last {window} for this job, so this confirmation was "
                   "recorded as the request. Send confirm=true again to confirm cancellation.")
CONFIRMED = "Job cancellation confirmed. Task will abort at next checkpoint."
ALREADY = "Job is already cancelled."


async def _confirm_flag(request: Request) -> bool:
    """The optional JSON body {"confirm": bool}; an empty body means step 1."""
    raw = await request.body()
    if not raw.strip():
        return False
    try:
        return CancelRequest.model_validate(json.loads(raw)).confirm
    except (ValueError, ValidationError) as exc:
        raise ServiceError("VALIDATION_FAILED", "The body must be JSON like {\"confirm\": true}",
                           {"fields": {"confirm": str(exc).splitlines()[0]}}) from None


def _not_cancellable(view: JobView) -> ServiceError:
    """The spec answers a finished job with 400 JOB_NOT_READY (its table says 409; the endpoint
    section is followed)."""
    return api_error("JOB_NOT_READY", f"Cannot cancel job in state '{view.spec_state}'",
                     {"job_id": view.job_id, "current_state": view.spec_state, "prefect_state": view.state_name},
                     status=400)


def _window(seconds: float) -> str:
    return f"{seconds / 3600:g} hour(s)" if seconds >= 3600 else f"{seconds:g} seconds"


@router.post("/jobs/{job_id}/cancel", response_model=CancelResponse,
             responses={**ERROR_RESPONSES, 200: {"model": CancelResponse}},
             summary="Cancel a running or queued job (two-step confirmation)",
             openapi_extra={"requestBody": {"required": False, "content": {"application/json": {
                 "schema": CancelRequest.model_json_schema()}}}})
async def cancel_job(job_id: str, request: Request, ctx: ApiContext = Depends(get_context)) -> JSONResponse:
    view = await require_view(ctx, job_id, fresh=True)
    confirm = await _confirm_flag(request)
    if view.status in (JobStatus.COMPLETED, JobStatus.FAILED):
        raise _not_cancellable(view)
    if view.status == JobStatus.CANCELLED:
        return JSONResponse({"job_id": job_id, "status": "cancelled", "message": ALREADY})

    window = ctx.settings.cancel_confirm_seconds
    if confirm and view.record.cancel_request_valid(window):
        flow_run_id = view.run.id if view.run is not None else view.record.flow_run_id
        if flow_run_id is None:
            raise api_error("JOB_NOT_READY", "The job's flow run is not created yet; try again in a moment",
                            {"job_id": job_id, "current_state": view.spec_state}, status=400)
        new_state = await runs.request_cancellation(ctx.prefect, flow_run_id)
        if not await ctx.io(changes.record_cancellation, ctx.store, job_id, new_state):
            # the run finished between our read and the proposal
            ctx.views.invalidate(job_id)
            view = await require_view(ctx, job_id, fresh=True)
            raise _not_cancellable(view)
        ctx.views.invalidate(job_id)
        log.info("job %s cancelled (flow run %s -> %s)", job_id, flow_run_id, new_state.value)
        return JSONResponse({"job_id": job_id, "status": "cancelled", "message": CONFIRMED})

    await ctx.io(changes.request_cancel, ctx.store, job_id)
    ctx.views.invalidate(job_id)
    message = REQUESTED_AGAIN.format(window=_window(window)) if confirm else REQUESTED
    return JSONResponse({"job_id": job_id, "status": "cancel_requested", "message": message})
