"""Result access over HTTP on the real API and Prefect server: single files
(GET /jobs/{id}/files/{model}/{filename}) and resumable ZIP downloads (Range, If-Range, ETag).

As in test_api_jobs.py, the app is served in-process (TestClient) and jobs sit on a deployment no
worker polls; the test completes them through Prefect's API and writes the files the flow would
have published."""

from __future__ import annotations

import io
import zipfile

import httpx
from PIL import Image

from jobs.lifecycle.keys import output_key
from tests.fixtures.api import ApiServer, LocalApi
from tests.test_api_jobs import api, error_of, set_state, submit, wait_status, write_outputs  # noqa: F401 (api: fixture)


def completed_job(api: httpx.Client, server: ApiServer | LocalApi, extra: dict[str, bytes] | None = None) -> tuple[str, dict[str, bytes]]:
    from prefect.states import Completed

    job_id = submit(api, "fusion")
    files = write_outputs(server, job_id, "fusion")
    for name, data in (extra or {}).items():
        server.store.put_bytes(output_key(job_id, "fusion", name), data)
        files[name] = data
    set_state(server, job_id, Completed())
    wait_status(api, job_id, "completed")
    return job_id, files


def webp_bytes() -> bytes:
    frames = [Image.new("RGB", (32, 32), (i * 40, 0, 0)) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:], loop=0, duration=50)
    return buf.getvalue()


def test_single_files_with_their_content_types(api: httpx.Client, local_api: LocalApi) -> None:
    from prefect.states import Failed

    queued = submit(api, "fusion")
    err = error_of(api.get(f"/jobs/{queued}/files/fusion/mesh.glb"), 409, "JOB_NOT_READY")
    assert err["details"]["job_id"] == queued
    error_of(api.get("/jobs/zzzz9999/files/fusion/mesh.glb"), 404, "JOB_NOT_FOUND")

    job_id, files = completed_job(api, local_api, {"turntable.webp": webp_bytes()})
    base = f"/jobs/{job_id}/files/fusion"
    for name, content_type in [("mesh.glb", "model/gltf-binary"), ("turntable.webp", "image/webp"),
                               ("preview_textured_0.png", "image/png"), ("quality.json", "application/json")]:
        response = api.get(f"{base}/{name}")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == content_type
        assert response.content == files[name]
        assert response.headers["accept-ranges"] == "bytes" and response.headers["etag"].startswith('"')
    assert Image.open(io.BytesIO(api.get(f"{base}/turntable.webp").content)).n_frames == 3

    glb = api.get(f"{base}/mesh.glb")
    part = api.get(f"{base}/mesh.glb", headers={"Range": "bytes=4-11"})
    assert part.status_code == 206 and part.content == files["mesh.glb"][4:12]
    assert part.headers["content-range"] == f"bytes 4-11/{len(files['mesh.glb'])}"
    assert api.get(f"{base}/mesh.glb", headers={"If-None-Match": glb.headers["etag"]}).status_code == 304

    err = error_of(api.get(f"{base}/nope.glb"), 404, "JOB_NOT_FOUND")
    assert err["details"] == {"job_id": job_id, "model": "fusion", "file": "nope.glb"}
    error_of(api.get(f"/jobs/{job_id}/files/nvdiffrec/mesh.glb"), 404, "JOB_NOT_FOUND")  # not a model of the job
    # Path traversal: encoded slashes and dot segments never reach a store key outside the results.
    for path in (f"{base}/..%2F..%2F..%2Fjobs%2F{job_id}%2Fjob.json", f"/jobs/{job_id}/files/%2E%2E/job.json",
                 f"/jobs/{job_id}/files/fusion/..", f"{base}/%2E%2E%2Fmesh.glb"):
        response = api.get(httpx.URL(str(api.base_url).rstrip("/") + path))  # as sent: no normalising
        assert response.status_code == 404, (path, response.text)
        assert set(response.json()) == {"error"} and "inputs" not in response.text

    local_api.store.delete_prefix(f"outputs/{job_id}/")
    error_of(api.get(f"{base}/mesh.glb"), 410, "JOB_EXPIRED")

    failed = submit(api, "fusion")
    set_state(local_api, failed, Failed(message="boom"))
    wait_status(api, failed, "failed")
    error_of(api.get(f"/jobs/{failed}/files/fusion/mesh.glb"), 500, "MODEL_FAILED")


def test_download_is_byte_identical_and_resumable(api: httpx.Client, local_api: LocalApi) -> None:
    job_id, files = completed_job(api, local_api)
    url = f"/jobs/{job_id}/download"

    # A range first: the server measures the archive to answer it.
    first = api.get(url, headers={"Range": "bytes=0-99"})
    assert first.status_code == 206, first.text
    total = int(first.headers["content-range"].rpartition("/")[2])
    assert first.headers["content-range"] == f"bytes 0-99/{total}" and len(first.content) == 100

    full = api.get(url)
    again = api.get(url)
    assert full.status_code == again.status_code == 200
    assert full.content == again.content and len(full.content) == total
    assert full.headers["accept-ranges"] == "bytes" and full.headers["etag"] == again.headers["etag"]
    assert "content-length" not in again.headers  # chunked: a rerun publishing mid-stream cannot cut it short
    assert first.content == full.content[:100]
    with zipfile.ZipFile(io.BytesIO(full.content)) as archive:
        assert archive.testzip() is None
        assert {i.date_time for i in archive.infolist()} != {(1980, 1, 1, 0, 0, 0)}  # the job's time
        assert archive.read("fusion/mesh.glb") == files["mesh.glb"]

    half = total // 2
    head = api.get(url, headers={"Range": f"bytes=0-{half - 1}"})
    tail = api.get(url, headers={"Range": f"bytes={half}-", "If-Range": full.headers["etag"]})
    assert head.status_code == tail.status_code == 206
    assert tail.headers["content-range"] == f"bytes {half}-{total - 1}/{total}"
    assert head.content + tail.content == full.content
    suffix = api.get(url, headers={"Range": "bytes=-64"})
    assert suffix.status_code == 206 and suffix.content == full.content[-64:]

    stale = api.get(url, headers={"Range": f"bytes={half}-", "If-Range": '"another-version"'})
    assert stale.status_code == 200 and stale.content == full.content  # partial copy of something else

    for bad in (f"bytes={total}-", "bytes=50-10", "bytes=abc"):
        response = api.get(url, headers={"Range": bad})
        err = error_of(response, 416, "VALIDATION_FAILED")
        assert err["details"] == {"range": bad, "size": total}
        assert response.headers["content-range"] == f"bytes */{total}"
