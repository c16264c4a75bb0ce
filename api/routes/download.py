"""GET /jobs/{job_id}/download: the job's results as one ZIP ({model}/mesh.glb ... and README.txt),
streamed from the object store (api.zipstream). Every answer that is not a ZIP is the spec's:
404 unknown job, 409 still queued or processing, 410 results deleted (retention, cancellation) or
gone, 500 INCOMPLETE_RESULTS with the missing files, 500 with the job's own error when it failed."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from api.context import ApiContext, get_context
from api.errors import api_error
from api.job_view import JobView, iso
from api.routes.status import require_view
from api.schemas import ERROR_RESPONSES
from api.zipstream import ZipMember, stream_zip
from jobs.errors import ServiceError
from jobs.record import output_prefix
from jobs.storage import ObjectInfo, ObjectNotFound, ObjectStore

router = APIRouter(tags=["jobs"])

# What every model must have produced (spec's ZIP layout); texture.png, mesh.mtl and cameras.json
# go into the ZIP when present.
REQUIRED_FILES = (
    "mesh.glb", "mesh.obj", "mesh.ply",
    "preview_textured_0.png", "preview_textured_1.png", "preview_wireframe_0.png", "preview_wireframe_1.png",
    "quality.json",
)


def expired(job_id: str, reason: str) -> ServiceError:
    return ServiceError("JOB_EXPIRED", f"Job '{job_id}' results have expired or been cleaned up",
                        {"job_id": job_id, "reason": reason})


def _check_ready(view: JobView) -> None:
    job_id = view.job_id
    if view.status in ("queued", "processing"):
        raise ServiceError("JOB_NOT_READY", f"Job '{job_id}' is still processing ({view.progress}% complete)",
                           {"job_id": job_id, "progress": view.progress, "state": view.spec_state})
    if view.status == "cancelled":
        raise expired(job_id, "the job was cancelled and its files were deleted")
    if view.status == "failed":
        err = ServiceError.from_error_object(view.error or {})
        raise api_error(err.code, err.message, err.details, status=500)
    if view.record.results_gone():
        raise expired(job_id, "results were deleted after the retention period")


def _outputs(store: ObjectStore, job_id: str, models: list[str]) -> dict[str, list[ObjectInfo]]:
    """Files of each model, or 410/500 when they are gone or incomplete."""
    found: dict[str, list[ObjectInfo]] = {m: [] for m in models}
    prefix = output_prefix(job_id)
    for info in store.list(prefix):
        model, _, name = info.key[len(prefix):].partition("/")
        if model in found and name and "/" not in name:
            found[model].append(info)
    if not any(found.values()):
        raise expired(job_id, "the job's output files are gone")
    missing = [f"{m}/{f}" for m in models for f in REQUIRED_FILES
               if f not in {i.key.rsplit("/", 1)[-1] for i in found[m]}]
    if missing:
        raise ServiceError("INCOMPLETE_RESULTS", f"Job '{job_id}' has incomplete results",
                           {"job_id": job_id, "missing": missing})
    return found


def _quality_line(store: ObjectStore, key: str) -> str:
    try:
        report: dict[str, Any] = json.loads(store.get_bytes(key))
    except (ObjectNotFound, ValueError):
        return "quality report unreadable"
    summary = report.get("mean") if isinstance(report.get("mean"), dict) else report
    parts = [f"{k}={summary[k]:.4g}" if isinstance(summary.get(k), (int, float)) else f"{k}={summary[k]}"
             for k in ("psnr", "ssim", "mask_iou", "status") if k in summary]
    return ", ".join(parts) or "see quality.json"


def _readme(view: JobView, outputs: dict[str, list[ObjectInfo]], store: ObjectStore) -> bytes:
    record = view.record
    lines = [f"3D reconstruction results for job {record.job_id}", "",
             f"model_type: {record.model_type}", f"created_at: {iso(record.created_at)}",
             f"completed_at: {iso(view.updated_at)}", ""]
    for model, files in outputs.items():
        quality = _quality_line(store, f"{output_prefix(record.job_id, model)}quality.json")
        lines += [f"{model}/  ({quality})"] + [f"  {i.key.rsplit('/', 1)[-1]}" for i in files] + [""]
    lines += ["mesh.glb: binary glTF with the baked texture embedded",
              "mesh.obj + mesh.mtl + texture.png: Wavefront OBJ", "mesh.ply: PLY with vertex colours",
              "preview_*.png: renders of the mesh; quality.json: PSNR/SSIM at the input views",
              "cameras.json: the calibrated cameras the reconstruction used", ""]
    return "\n".join(lines).encode()


@router.get("/jobs/{job_id}/download", responses={**ERROR_RESPONSES, 200: {
    "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
    "description": "ZIP with {model}/mesh.glb, mesh.obj, mesh.ply, texture.png, previews, quality.json and README.txt"}},
    response_class=StreamingResponse, summary="Download all job results as a single ZIP file")
async def download(job_id: str, ctx: ApiContext = Depends(get_context)) -> StreamingResponse:
    view = await require_view(ctx, job_id, fresh=True)
    _check_ready(view)
    outputs = await ctx.io(_outputs, ctx.store, job_id, view.record.models)
    readme = await ctx.io(_readme, view, outputs, ctx.store)
    members = [ZipMember(f"{model}/{info.key.rsplit('/', 1)[-1]}", info.size, partial(ctx.store.iter_chunks, info.key))
               for model, files in outputs.items() for info in files]
    members.append(ZipMember("README.txt", len(readme), lambda: [readme]))
    return StreamingResponse(stream_zip(members), media_type="application/zip",
                             headers={"Content-Disposition": f"attachment; filename={job_id}.zip"})
