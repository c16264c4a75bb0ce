"""POST /jobs: receive and check the upload (api.uploads), create the job (inputs and record:
jobs.lifecycle.changes.create_job), then its flow run of the `reconstruct` deployment. Nothing is
left behind when any step fails: the stored inputs and the record are deleted before the error
is answered (503 ORCHESTRATION_UNAVAILABLE while Prefect is not answering)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from api.context import ApiContext, get_context
from api.errors import request_id_of
from api.schemas import ERROR_RESPONSES, JobSubmitted
from api.uploads import TRANSFORMS_FIELD, ParsedUpload, receive_upload
from jobs.errors import ServiceError
from jobs.lifecycle import DEFAULT_MODEL_TYPE, MODEL_TYPES, changes, runs
from jobs.lifecycle.view import iso
from jobs.options import FORMATS, MAX_FACES, MIN_FACES, TEXTURE_SIZES, parse_options

router = APIRouter(tags=["jobs"])
log = logging.getLogger("api")


def _model_type(upload: ParsedUpload) -> str:
    value = upload.fields.get("model_type", "").strip() or DEFAULT_MODEL_TYPE
    if value not in MODEL_TYPES:
        allowed = ", ".join(MODEL_TYPES)
        raise ServiceError("VALIDATION_FAILED", f"Invalid model_type '{value}'",
                           {"fields": {"model_type": f"must be one of: {allowed}"}})
    return value


_UPLOAD_DOC = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object",
            "required": ["views", "depth_renders"],
            "properties": {
                "views": {"type": "array", "items": {"type": "string", "format": "binary"},
                          "description": "6 view PNGs (max 20MB each); `views[]` is accepted too"},
                "depth_renders": {"type": "array", "items": {"type": "string", "format": "binary"},
                                  "description": "6 depth PNGs (max 20MB each); `depth_renders[]` is accepted too"},
                "model_type": {"type": "string", "enum": list(MODEL_TYPES), "default": DEFAULT_MODEL_TYPE},
                "transforms": {"type": "string", "format": "binary",
                               "description": "optional NeRF-style transforms.json with known cameras"},
                "target_faces": {"type": "integer", "minimum": MIN_FACES, "maximum": MAX_FACES,
                                 "description": "optional: at most this many faces in the mesh "
                                                "(default: the engine's own budget)"},
                "texture_size": {"type": "integer", "enum": list(TEXTURE_SIZES),
                                 "description": "optional: texture side in texels (default: from the views' size)"},
                "formats": {"type": "string", "example": "glb,stl",
                            "description": "optional: mesh formats, comma-separated or a repeated field, "
                                           f"among {', '.join(FORMATS)} (default glb,obj,ply); "
                                           "obj adds mesh.mtl and texture.png, gltf adds mesh.bin and texture.png"},
            },
        }}},
    }
}


@router.post("/jobs", response_model=JobSubmitted, responses=ERROR_RESPONSES, openapi_extra=_UPLOAD_DOC,
             summary="Submit a new 3D reconstruction job")
async def submit_job(request: Request, ctx: ApiContext = Depends(get_context)) -> JSONResponse:
    upload = await receive_upload(request, ctx.settings)
    try:
        model_type = _model_type(upload)
        options = parse_options(upload.values)
        transforms = upload.files.get(TRANSFORMS_FIELD, [])
        record = await ctx.io(changes.create_job, ctx.store, model_type, options, upload.files["views"],
                              upload.files["depth_renders"], transforms[-1].path if transforms else None)
        try:
            run = await runs.submit_run(ctx.prefect, ctx.settings.deployment, record.job_id, model_type)
        except BaseException:
            await ctx.io(changes.discard_job, ctx.store, record.job_id)
            raise
    finally:
        upload.cleanup()
    try:
        record = await ctx.io(changes.attach_run, ctx.store, record, str(run.id))
    except Exception as exc:  # the run exists and is found by its job tag; the id is an optimisation
        log.warning("request_id=%s job %s: could not store flow_run_id: %s", request_id_of(request), record.job_id, exc)
    ctx.views.seed(record, run)
    body = JobSubmitted(job_id=record.job_id, model_type=model_type, created_at=iso(record.created_at))
    return JSONResponse(body.model_dump())
