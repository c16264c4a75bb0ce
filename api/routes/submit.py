"""POST /jobs: receive and check the upload (api.uploads), store the inputs and the job record,
then create the flow run of the `reconstruct` deployment. Nothing is left behind when any step
fails: the stored inputs and the record are deleted before the error is answered."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from prefect.deployments import arun_deployment

from api.context import ApiContext, get_context
from api.errors import request_id_of
from api.job_view import iso
from api.schemas import ERROR_RESPONSES, JobSubmitted
from api.uploads import TRANSFORMS_FIELD, ParsedUpload, receive_upload
from jobs.errors import ServiceError
from jobs.options import FORMATS, MAX_FACES, MIN_FACES, TEXTURE_SIZES, parse_options
from jobs.orchestration import DEFAULT_MODEL_TYPE, MODEL_TYPES, engines_for, run_tags
from jobs.record import InputFile, InputManifest, JobRecord, input_key, input_prefix, load_record, new_job_id, record_key, save_record
from jobs.storage import ObjectStore

router = APIRouter(tags=["jobs"])
log = logging.getLogger("api")
_KINDS = {"views": "views", "depth_renders": "depths"}


def _model_type(upload: ParsedUpload) -> str:
    value = upload.fields.get("model_type", "").strip() or DEFAULT_MODEL_TYPE
    if value not in MODEL_TYPES:
        allowed = ", ".join(MODEL_TYPES)
        raise ServiceError("VALIDATION_FAILED", f"Invalid model_type '{value}'",
                           {"fields": {"model_type": f"must be one of: {allowed}"}})
    return value


def _unused_job_id(store: ObjectStore) -> str:
    for _ in range(5):
        job_id = new_job_id()
        if load_record(store, job_id) is None:
            return job_id
    raise RuntimeError("could not find an unused job id")  # 36^8 ids: practically unreachable


def _store_inputs(store: ObjectStore, job_id: str, upload: ParsedUpload) -> InputManifest:
    """Copy the checked temporary files into the store; returns the record's input manifest."""
    manifest = InputManifest()
    for field, kind in _KINDS.items():
        for item in upload.files[field]:
            key = input_key(job_id, kind, item.index, item.filename)  # type: ignore[arg-type]
            store.put_file(key, item.path)
            getattr(manifest, kind).append(InputFile(name=item.filename, key=key, size=item.size, sha256=item.sha256))
    for item in upload.files.get(TRANSFORMS_FIELD, []):
        store.put_file(f"{input_prefix(job_id)}transforms.json", item.path)
    return manifest


def _discard(store: ObjectStore, job_id: str) -> None:
    store.delete_prefix(input_prefix(job_id))
    store.delete(record_key(job_id))


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
        job_id = await ctx.io(_unused_job_id, ctx.store)
        try:
            manifest = await ctx.io(_store_inputs, ctx.store, job_id, upload)
            record = JobRecord(job_id=job_id, model_type=model_type, models=list(engines_for(model_type)),
                               inputs=manifest, options=options)
            await ctx.io(save_record, ctx.store, record)
            run = await _create_flow_run(ctx, job_id, model_type)
        except BaseException:
            await ctx.io(_discard, ctx.store, job_id)
            raise
    finally:
        upload.cleanup()
    record.flow_run_id = str(run.id)
    try:
        await ctx.io(save_record, ctx.store, record)
    except Exception as exc:  # the run exists and is found by its job tag; the id is an optimisation
        log.warning("request_id=%s job %s: could not store flow_run_id: %s", request_id_of(request), job_id, exc)
    ctx.views.seed(record, run)
    body = JobSubmitted(job_id=job_id, model_type=model_type, created_at=iso(record.created_at))
    return JSONResponse(body.model_dump())


async def _create_flow_run(ctx: ApiContext, job_id: str, model_type: str):  # -> FlowRun
    """The job's flow run: named after the job, tagged with it, returned at once (timeout=0)."""
    try:
        return await arun_deployment(
            name=ctx.settings.deployment,
            client=ctx.prefect,
            parameters={"job_id": job_id, "model_type": model_type},
            timeout=0,
            flow_run_name=job_id,
            tags=run_tags(job_id, model_type),
            idempotency_key=job_id,
            as_subflow=False,
        )
    except Exception as exc:
        raise ServiceError("UNKNOWN_ERROR", "The job could not be queued: the orchestration service did not accept it",
                           {"job_id": job_id, "reason": f"{type(exc).__name__}: {exc}"[:500]},
                           "Check GET /health and try again; nothing was stored for this job.") from exc

