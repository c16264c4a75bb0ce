"""GET /jobs/{job_id}/download: the job's results as one ZIP ({model}/mesh.glb ... and README.txt),
streamed from the object store (api.zipstream). Every answer that is not a ZIP is the spec's:
404 unknown job, 409 still queued or processing, 410 results deleted (retention, cancellation) or
gone, 500 INCOMPLETE_RESULTS with the missing files, 500 with the job's own error when it failed.

Resumable: the ZIP is the same bytes on every request for the same results (api.zipstream; its
ETag names them), so a single `Range` is answered 206 by generating the archive and skipping to
the range. The archive's length, needed for Content-Range, is remembered per ETag from the first
complete download, or measured once (one compression pass) when a range comes first."""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from datetime import datetime
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header
from fastapi.responses import StreamingResponse

from api.context import ApiContext, get_context
from api.errors import api_error
from api.ranges import if_range_allows, requested_range, slice_chunks
from api.routes.status import require_view
from api.schemas import ERROR_RESPONSES, RANGE_RESPONSES
from api.zipstream import ZipMember, stream_zip
from jobs.errors import ServiceError
from jobs.lifecycle import JobStatus
from jobs.lifecycle.keys import file_name, output_file, output_key, output_prefix
from jobs.lifecycle.view import JobView, iso
from jobs.options import JobOptions, required_files
from jobs.storage import ObjectInfo, ObjectNotFound, ObjectStore

router = APIRouter(tags=["jobs"])

# What every model must have produced besides its mesh files (spec's ZIP layout: mesh.glb,
# mesh.obj, mesh.ply, or the job's `formats`, jobs.options.required_files); every other file
# (texture.png, mesh.mtl, turntable.webp, cameras.json, ...) goes into the ZIP when present.
REQUIRED_FILES = (
    "preview_textured_0.png", "preview_textured_1.png", "preview_wireframe_0.png", "preview_wireframe_1.png",
    "quality.json",
)


def expired(job_id: str, reason: str) -> ServiceError:
    return ServiceError("JOB_EXPIRED", f"Job '{job_id}' results have expired or been cleaned up",
                        {"job_id": job_id, "reason": reason})


def check_ready(view: JobView) -> None:
    """Raise the spec's answer for a job whose results cannot be served (409, 410, 500)."""
    job_id = view.job_id
    if view.status in (JobStatus.QUEUED, JobStatus.PROCESSING):
        raise ServiceError("JOB_NOT_READY", f"Job '{job_id}' is still processing ({view.progress}% complete)",
                           {"job_id": job_id, "progress": view.progress, "state": view.spec_state})
    if view.status == JobStatus.CANCELLED:
        raise expired(job_id, "the job was cancelled and its files were deleted")
    if view.status == JobStatus.FAILED:
        err = ServiceError.from_error_object(view.error or {})
        raise api_error(err.code, err.message, err.details, status=500)
    if view.record.results_gone():
        raise expired(job_id, "results were deleted after the retention period")


def _outputs(store: ObjectStore, job_id: str, models: list[str],
             options: JobOptions) -> dict[str, list[ObjectInfo]]:
    """Files of each model, or 410/500 when they are gone or incomplete."""
    found: dict[str, list[ObjectInfo]] = {m: [] for m in models}
    for info in store.list(output_prefix(job_id)):
        model, _ = output_file(job_id, info.key) or ("", "")
        if model in found:
            found[model].append(info)
    if not any(found.values()):
        raise expired(job_id, "the job's output files are gone")
    missing = [f"{m}/{f}" for m in models for f in (*required_files(options), *REQUIRED_FILES)
               if f not in {file_name(i.key) for i in found[m]}]
    if missing:
        raise ServiceError("INCOMPLETE_RESULTS", f"Job '{job_id}' has incomplete results",
                           {"job_id": job_id, "missing": missing})
    return found


def _quality_line(store: ObjectStore, key: str) -> str:
    try:
        report: dict[str, Any] = json.loads(store.get_bytes(key))
    except (ObjectNotFound, ValueError):
        return "quality report unreadable"
    mean = report.get("mean")
    summary: dict[str, Any] = mean if isinstance(mean, dict) else report
    parts = [f"{k}={summary[k]:.4g}" if isinstance(summary.get(k), (int, float)) else f"{k}={summary[k]}"
             for k in ("psnr", "ssim", "mask_iou", "status") if k in summary]
    return ", ".join(parts) or "see quality.json"


def _readme(view: JobView, outputs: dict[str, list[ObjectInfo]], store: ObjectStore) -> bytes:
    record = view.record
    lines = [f"3D reconstruction results for job {record.job_id}", "",
             f"model_type: {record.model_type}", f"created_at: {iso(record.created_at)}",
             f"completed_at: {iso(view.updated_at)}", ""]
    for model, files in outputs.items():
        quality = _quality_line(store, output_key(record.job_id, model, "quality.json"))
        lines += [f"{model}/  ({quality})"] + [f"  {file_name(i.key)}" for i in files] + [""]
    lines += ["mesh.glb: binary glTF with the baked texture embedded",
              "mesh.obj + mesh.mtl + texture.png: Wavefront OBJ", "mesh.ply: PLY with vertex colours",
              "mesh.stl: STL (geometry only); mesh.gltf + mesh.bin + texture.png: glTF with separate files",
              "(the mesh formats are those the job asked for: glb, obj and ply unless `formats` was set)",
              "preview_*.png: renders of the mesh; turntable.webp: an animated turn around the mesh",
              "quality.json: PSNR/SSIM at the input views; view_{slot}_input.png / view_{slot}_render.png:",
              "  each input view beside the mesh re-rendered from the same camera",
              "cameras.json: the calibrated cameras the reconstruction used", ""]
    return "\n".join(lines).encode()


class _KnownLengths:
    """ZIP length per ETag (bounded, thread-safe: full downloads record it from the thread pool)."""

    def __init__(self, limit: int = 1024) -> None:
        self._lengths: OrderedDict[str, int] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    def get(self, etag: str) -> int | None:
        with self._lock:
            return self._lengths.get(etag)

    def put(self, etag: str, length: int) -> None:
        with self._lock:
            self._lengths[etag] = length
            self._lengths.move_to_end(etag)
            while len(self._lengths) > self._limit:
                self._lengths.popitem(last=False)


_LENGTHS = _KnownLengths()


def published_at(view: JobView) -> datetime:
    """When the results were published: every ZIP entry's timestamp."""
    times = [r.completed_at for r in view.record.results.values() if r.completed_at is not None]
    return max(times) if times else view.updated_at


def _etag(members: list[ZipMember], modified: datetime, readme: bytes) -> str:
    """Names the archive's bytes: its entries (name, size), their timestamp and the README."""
    digest = hashlib.sha256(modified.isoformat().encode())
    for member in members:
        digest.update(f"{member.name}\0{member.size}\n".encode())
    digest.update(readme)
    return f'"{digest.hexdigest()[:32]}"'


def _counted(chunks: Iterable[bytes], etag: str) -> Iterator[bytes]:
    """Pass the chunks on and remember their total once the archive was sent whole."""
    total = 0
    for chunk in chunks:
        total += len(chunk)
        yield chunk
    _LENGTHS.put(etag, total)


def _zip_length(members: list[ZipMember], modified: datetime, etag: str) -> int:
    length = _LENGTHS.get(etag)
    if length is None:
        length = sum(len(chunk) for chunk in stream_zip(members, modified))
        _LENGTHS.put(etag, length)
    return length


@router.get("/jobs/{job_id}/download", responses={**ERROR_RESPONSES, **RANGE_RESPONSES, 200: {
    "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
    "description": "ZIP with {model}/mesh.glb, mesh.obj, mesh.ply, texture.png, previews, quality.json and README.txt"}},
    response_class=StreamingResponse, summary="Download all job results as a single ZIP file")
async def download(
    job_id: str,
    ctx: ApiContext = Depends(get_context),
    range_: Annotated[str | None, Header(alias="Range", description="One byte range (`bytes=a-b`, `bytes=a-`, `bytes=-n`) to resume a download")] = None,
    if_range: Annotated[str | None, Header(description="The ETag of the partial copy: the Range applies only if the ZIP is still the same")] = None,
) -> StreamingResponse:
    view = await require_view(ctx, job_id, fresh=True)
    check_ready(view)
    outputs = await ctx.io(_outputs, ctx.store, job_id, view.record.models, view.record.options)
    readme = await ctx.io(_readme, view, outputs, ctx.store)
    members = [ZipMember(f"{model}/{file_name(info.key)}", info.size, partial(ctx.store.iter_chunks, info.key))
               for model, files in outputs.items() for info in files]
    members.append(ZipMember("README.txt", len(readme), lambda: [readme]))
    modified = published_at(view)
    etag = _etag(members, modified, readme)
    headers = {"Content-Disposition": f"attachment; filename={job_id}.zip", "Accept-Ranges": "bytes", "ETag": etag}
    if range_ and if_range_allows(if_range, etag):
        size = await ctx.io(_zip_length, members, modified, etag)
        wanted = requested_range(range_, size)
        if wanted is not None:
            headers.update({"Content-Range": wanted.content_range(size), "Content-Length": str(wanted.length)})
            return StreamingResponse(slice_chunks(stream_zip(members, modified), wanted), status_code=206,
                                     media_type="application/zip", headers=headers)
    # No Content-Length on the whole archive, although its length may be known: a reprocess run
    # that publishes while this stream reads would change the bytes under a promised length and
    # cut the download short; chunked, the ZIP stays whole (each entry carries its own sizes).
    return StreamingResponse(_counted(stream_zip(members, modified), etag), media_type="application/zip",
                             headers=headers)
