"""GET /health: GPU (spec), plus the parts a job needs: the Prefect API, the object store and a
worker polling the work pool. 503 when a required part (Prefect, storage, or the GPU when
RECON_DEVICE=cuda) is down; no worker polling is a warning (jobs wait in the queue), not a 503."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from api.context import ApiContext, get_context
from api.schemas import HealthResponse
from jobs.gpu import gpu_info, torch_cuda_build
from jobs.lifecycle.runs import prefect_healthcheck, workers_polling

router = APIRouter(tags=["health"])
CHECK_TIMEOUT_S = 3.0


async def _check(coro: Any) -> tuple[Any, str | None]:
    """(result, None) or (None, reason) within CHECK_TIMEOUT_S."""
    try:
        return await asyncio.wait_for(coro, CHECK_TIMEOUT_S), None
    except TimeoutError:
        return None, f"no answer within {CHECK_TIMEOUT_S:.0f} s"
    except Exception as exc:  # noqa: BLE001 - any failure means "down", reported with its reason
        return None, f"{type(exc).__name__}: {exc}"


@router.get("/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
async def health(ctx: ApiContext = Depends(get_context)) -> JSONResponse:
    settings = ctx.settings
    (gpu, gpu_err), (_, prefect_err), (_, store_err), (polling, workers_err) = await asyncio.gather(
        _check(ctx.io(gpu_info)),
        _check(prefect_healthcheck(ctx.prefect)),
        _check(ctx.io(ctx.store.ping)),
        _check(workers_polling(ctx.prefect, settings.work_pool)),
    )
    body: dict[str, Any] = {
        "status": "healthy",
        "gpu": gpu,
        "device": "cuda" if gpu is not None and settings.device != "cpu" and torch_cuda_build() else "cpu",
        "prefect": {"reachable": prefect_err is None, "api_url": str(ctx.prefect.api_url)},
        "storage": {"backend": settings.storage, "reachable": store_err is None},
        "workers": {"work_pool": settings.work_pool, "polling": polling or 0},
        "warnings": [],
    }
    problems = []
    if settings.device == "cuda" and gpu is None:
        problems.append("GPU not initialized")
    if prefect_err:
        body["prefect"]["error"] = prefect_err
        problems.append(f"Prefect API unreachable ({prefect_err})")
    if store_err:
        body["storage"]["error"] = store_err
        problems.append(f"object store unreachable ({store_err})")
    if gpu is None and settings.device == "auto":
        body["note"] = "No GPU on this host: jobs run on the CPU (slower)."
    if not problems and not polling:
        reason = workers_err or "no recent heartbeat"
        body["warnings"].append(f"No worker is polling work pool '{settings.work_pool}' ({reason}): jobs wait in the queue.")
    if problems:
        body["status"] = "unhealthy"
        body["error"] = "; ".join(problems)
        return JSONResponse(body, status_code=503)
    return JSONResponse(body)
