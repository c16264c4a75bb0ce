"""GET /jobs/{job_id}/events: a job's status as Server-Sent Events, for the web page and the client
instead of polling.

Each event is `event: status` with the GET /jobs/{job_id} body plus `stage` (the pipeline stage of
a processing job, else null) as `data:`. The first is sent at once, then one per change; the
stream ends after a terminal status (completed, failed, cancelled) or when the client goes away. A
comment line every KEEPALIVE_SECONDS keeps proxies from closing a quiet stream.

The stream reads the job watcher's view (api/job_watch.py), which refreshes every watched job with
one batched Prefect request per second, so any number of open streams costs Prefect nothing more
than one poller. sse-starlette supplies the keep-alives, disconnect detection and the end of open
streams when the server shuts down (uvicorn would otherwise wait for them).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from api.context import ApiContext, get_context
from api.routes.status import require_view
from api.schemas import ERROR_RESPONSES
from jobs.lifecycle.view import JobView

router = APIRouter(tags=["jobs"])
log = logging.getLogger("api")

POLL_SECONDS = 0.5  # how often the watcher's view is compared (the watcher refreshes every 1 s)
KEEPALIVE_SECONDS = 15
TERMINAL = frozenset({"completed", "failed", "cancelled"})


def event_data(view: JobView) -> str:
    return json.dumps({**view.status_body(), "stage": view.stage}, ensure_ascii=False, separators=(",", ":"))


async def _status_events(ctx: ApiContext, request: Request, view: JobView) -> AsyncIterator[ServerSentEvent]:
    sent = None
    while True:
        data = event_data(view)
        if data != sent:
            yield ServerSentEvent(data=data, event="status")
            sent = data
        if view.status in TERMINAL:
            return
        await asyncio.sleep(POLL_SECONDS)
        if await request.is_disconnected():
            return
        try:
            fresh = await ctx.views.get(view.job_id)
        except Exception as exc:  # Prefect or storage unreachable: keep the last view, try again
            log.warning("events for job %s: status refresh failed: %s: %s", view.job_id, type(exc).__name__, exc)
            continue
        if fresh is None:  # the record was deleted: nothing more will happen
            return
        view = fresh


@router.get("/jobs/{job_id}/events", response_class=EventSourceResponse,
            summary="Follow a job's status as Server-Sent Events",
            responses={**ERROR_RESPONSES, 200: {
                "content": {"text/event-stream": {"schema": {"type": "string"}, "example": (
                    'event: status\ndata: {"job_id":"k3m8xq2p","status":"processing","progress":45,'
                    '"current_model":"fusion","created_at":"2026-01-31T12:30:00Z","updated_at":'
                    '"2026-01-31T12:32:15Z","error":null,"stage":"inference"}\n\n')}},
                "description": "`event: status` events, each with the GET /jobs/{job_id} body plus `stage`, "
                               "sent at once and on every change; a comment line every 15 s; the stream "
                               "ends after a completed, failed or cancelled status."}})
async def job_events(job_id: str, request: Request, ctx: ApiContext = Depends(get_context)) -> EventSourceResponse:
    view = await require_view(ctx, job_id)  # 404 in the error envelope before the stream starts
    return EventSourceResponse(
        _status_events(ctx, request, view),
        headers={"Cache-Control": "no-cache"},
        ping=KEEPALIVE_SECONDS,
        ping_message_factory=lambda: ServerSentEvent(comment="keep-alive"),
    )
