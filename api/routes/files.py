"""GET /jobs/{job_id}/files/{model}/{filename}: one published result file of a completed job (the
web page's viewer, previews and quality images; a client that wants one mesh, not the ZIP).

The job must be downloadable (the same 409/410/500 answers as the download, api/routes/download.py)
and `filename` must be one of the files published under `outputs/{job_id}/{model}/`: names are
looked up in the listing, never joined into a path, so nothing outside a job's results is reachable.
Single byte ranges and If-None-Match are answered, like the ZIP's."""

from __future__ import annotations

import hashlib
import mimetypes
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header
from fastapi.responses import Response, StreamingResponse

from api.context import ApiContext, get_context
from api.ranges import ByteRange, if_range_allows, requested_range
from api.routes.download import check_ready, expired, published_at
from api.routes.status import require_view
from api.schemas import ERROR_RESPONSES, RANGE_RESPONSES
from jobs.errors import ServiceError
from jobs.lifecycle.keys import output_prefix
from jobs.lifecycle.view import JobView
from jobs.storage import ObjectInfo, ObjectStore

router = APIRouter(tags=["jobs"])

CHUNK_BYTES = 1024 * 1024
# Registered types for the formats we write (mimetypes does not know most 3D formats).
CONTENT_TYPES = {
    ".glb": "model/gltf-binary", ".gltf": "model/gltf+json", ".bin": "application/octet-stream",
    ".obj": "model/obj", ".mtl": "model/mtl", ".stl": "model/stl", ".ply": "application/octet-stream",
    ".png": "image/png", ".webp": "image/webp", ".json": "application/json", ".txt": "text/plain; charset=utf-8",
}


def content_type(filename: str) -> str:
    suffix = "." + filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    return CONTENT_TYPES.get(suffix) or mimetypes.guess_type(filename)[0] or "application/octet-stream"


def _unknown_file(job_id: str, model: str, filename: str) -> ServiceError:
    return ServiceError("JOB_NOT_FOUND", f"Job '{job_id}' has no result file '{model}/{filename}'",
                        {"job_id": job_id, "model": model, "file": filename},
                        "Use a model of the job and a file name from its ZIP (GET /jobs/{job_id}/download).")


def published_file(store: ObjectStore, view: JobView, model: str, filename: str) -> ObjectInfo:
    """The stored object of `model`/`filename`, or 404 (not published) / 410 (results gone)."""
    job_id = view.job_id
    if model not in view.record.models:
        raise _unknown_file(job_id, model, filename)
    prefix = output_prefix(job_id, model)
    files = {info.key[len(prefix):]: info for info in store.list(prefix)}  # names may contain "/": never matched
    if not files:
        raise expired(job_id, "the job's output files are gone")
    info = files.get(filename)
    if info is None:
        raise _unknown_file(job_id, model, filename)
    return info


def _read(store: ObjectStore, key: str, wanted: ByteRange) -> Iterator[bytes]:
    with store.open_at(key, wanted.start) as f:
        remaining = wanted.length
        while remaining > 0 and (chunk := f.read(min(CHUNK_BYTES, remaining))):
            remaining -= len(chunk)
            yield chunk


@router.get("/jobs/{job_id}/files/{model}/{filename}", response_class=StreamingResponse,
            summary="Download one result file of a completed job",
            responses={**ERROR_RESPONSES, **RANGE_RESPONSES, 200: {
                "content": {t: {"schema": {"type": "string", "format": "binary"}}
                            for t in ("model/gltf-binary", "image/png", "image/webp", "application/json")},
                "description": "The file, with its Content-Type (model/gltf-binary for .glb, image/webp for "
                               "turntable.webp ...). 404 JOB_NOT_FOUND with details.file for a file the job "
                               "did not publish; 409/410/500 as for the download."},
                304: {"description": "If-None-Match named the current ETag"}})
async def job_file(
    job_id: str,
    model: str,
    filename: str,
    ctx: ApiContext = Depends(get_context),
    range_: Annotated[str | None, Header(alias="Range", description="One byte range")] = None,
    if_range: Annotated[str | None, Header(description="Apply the Range only if the file still has this ETag")] = None,
    if_none_match: Annotated[str | None, Header(description="ETag of a cached copy: 304 when unchanged")] = None,
) -> Response:
    view = await require_view(ctx, job_id)
    check_ready(view)
    info = await ctx.io(published_file, ctx.store, view, model, filename)
    tag = hashlib.sha256(f"{info.key}\0{info.size}\0{published_at(view).isoformat()}".encode()).hexdigest()[:32]
    etag = f'"{tag}"'
    headers = {"Accept-Ranges": "bytes", "ETag": etag, "Content-Disposition": f'inline; filename="{filename}"'}
    if if_none_match is not None and etag in (t.strip() for t in if_none_match.split(",")):
        return Response(status_code=304, headers=headers)
    wanted = requested_range(range_, info.size) if range_ and if_range_allows(if_range, etag) else None
    status = 206 if wanted is not None else 200
    if wanted is None:
        wanted = ByteRange(0, info.size - 1)
    else:
        headers["Content-Range"] = wanted.content_range(info.size)
    headers["Content-Length"] = str(max(wanted.length, 0))
    return StreamingResponse(_read(ctx.store, info.key, wanted), status_code=status,
                             media_type=content_type(filename), headers=headers)
