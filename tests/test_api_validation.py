"""Every 4xx of POST /jobs triggered by a real bad request, plus /health, request ids, the error
envelope and the 503s while Prefect is away. The app is served in-process (TestClient,
tests/fixtures/api.py `local_api`) against the real Prefect server and a real store; no worker
polls its pool, so nothing here runs a flow."""

from __future__ import annotations

import errno
import io
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from jobs.storage import StorageUnavailable
from tests.fixtures.api import LocalApi, idle_settings, job_files, make_local_api, png_bytes

ENVELOPE_KEYS = {"code", "message", "details", "suggestion"}


def error_of(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == ENVELOPE_KEYS, body
    assert body["error"]["code"] == code, body
    assert response.headers.get("x-request-id")
    return body["error"]


def stored_keys(server: LocalApi) -> set[str]:
    return {i.key for prefix in ("inputs/", "jobs/") for i in server.store.list(prefix)}


@pytest.fixture
def api(local_api: LocalApi) -> Iterator[httpx.Client]:
    """This module's requests go to the in-process app (the conftest `api` is the uvicorn one)."""
    with local_api.client() as client:
        yield client


@pytest.fixture
def nothing_stored(local_api: LocalApi) -> Iterator[None]:
    """The test's rejected requests leave no inputs and no job record behind."""
    before = stored_keys(local_api)
    yield
    assert stored_keys(local_api) == before


# ---- POST /jobs: counts, model_type, formats, sizes ------------------------------------------


@pytest.mark.parametrize("views,depths,field", [(5, 6, "views"), (6, 7, "depth_renders"), (6, 0, "depth_renders")])
def test_wrong_file_count(api: httpx.Client, nothing_stored: None, local_api: LocalApi, views: int, depths: int, field: str) -> None:
    err = error_of(api.post("/jobs", files=job_files(views, depths)), 422, "INVALID_FILE_COUNT")
    assert err["details"]["field"] == field
    assert err["suggestion"] == "Upload exactly 6 view images and 6 depth render images."
    if field == "views":
        assert err["message"] == "Expected 6 view images, got 5"


def test_bracket_spelling_counts_the_same(api: httpx.Client) -> None:
    err = error_of(api.post("/jobs", files=job_files(6, 5, spelling="[]")), 422, "INVALID_FILE_COUNT")
    assert err["details"] == {"field": "depth_renders", "expected": 6, "received": 5}


def test_invalid_model_type(api: httpx.Client, nothing_stored: None, local_api: LocalApi) -> None:
    err = error_of(api.post("/jobs", files=job_files(), data={"model_type": "nerf"}), 422, "VALIDATION_FAILED")
    assert "model_type" in err["details"]["fields"]


def test_not_multipart(api: httpx.Client) -> None:
    err = error_of(api.post("/jobs", json={"views": []}), 422, "VALIDATION_FAILED")
    assert "body" in err["details"]["fields"]


def test_unknown_file_field(api: httpx.Client) -> None:
    files = job_files() + [("depths", ("d.png", png_bytes(8, 8, "L"), "image/png"))]
    err = error_of(api.post("/jobs", files=files), 422, "VALIDATION_FAILED")
    assert "depths" in err["details"]["fields"]


def _truncated_png() -> bytes:
    data = png_bytes(64, 64, "RGB", seed=5)
    return data[: len(data) // 2]


def _bomb_png() -> bytes:
    """25 M pixels (over the 16.7 M cap) in ~25 KB: a decompression bomb."""
    buf = io.BytesIO()
    Image.new("L", (5000, 5000)).save(buf, "PNG")
    assert len(buf.getvalue()) < 100_000
    return buf.getvalue()


@pytest.mark.parametrize(
    "name,content,needle",
    [
        ("front.png", b"GIF89a not a png at all" * 10, "signature"),
        ("front.png", None, "truncat"),  # truncated PNG (filled in below)
        ("front.jpg", None, ".png extension"),  # a real PNG with the wrong extension
        ("front.png", b"bomb", "exceed"),  # decompression bomb
    ],
    ids=["not-png", "truncated", "extension", "bomb"],
)
def test_invalid_file_format(api: httpx.Client, nothing_stored: None, local_api: LocalApi, name: str, content: bytes | None, needle: str) -> None:
    if content is None:
        content = _truncated_png() if needle == "truncat" else png_bytes(16, 16)
    elif content == b"bomb":
        content = _bomb_png()
    files = job_files(5, 6) + [("views", (name, content, "image/png"))]
    err = error_of(api.post("/jobs", files=files), 422, "INVALID_FILE_FORMAT")
    assert needle in err["message"].lower(), err
    assert err["suggestion"] == "Ensure all uploaded files are valid PNG images."
    assert list((local_api.settings.data_dir / "tmp").iterdir()) == []  # spooled files removed


def test_file_over_20mb(api: httpx.Client, nothing_stored: None, local_api: LocalApi) -> None:
    big = b"\x89PNG\r\n\x1a\n" + bytes(21 * 1024 * 1024)
    files = [("views", ("front.png", big, "image/png"))] + job_files(5, 6)
    err = error_of(api.post("/jobs", files=files), 422, "FILE_TOO_LARGE")
    assert err["details"]["field"] == "views" and err["details"]["max_file_bytes"] == 20 * 1024 * 1024


def test_request_over_limit_by_content_length(api: httpx.Client) -> None:
    """A body declared larger than 200 MB is refused before any of it is read."""
    response = api.post("/jobs", content=b"--b\r\n", headers={
        "Content-Type": "multipart/form-data; boundary=b", "Content-Length": "300000000"})
    assert error_of(response, 422, "FILE_TOO_LARGE")["details"]["max_request_bytes"] == 200 * 1024 * 1024


# ---- an API with small limits and RECON_DEVICE=cuda on this GPU-less host ---------------------


@pytest.fixture(scope="module")
def strict_api(prefect_server: str, local_api: LocalApi, tmp_path_factory: pytest.TempPathFactory) -> LocalApi:
    settings = idle_settings(tmp_path_factory.mktemp("strict-api"), device="cuda", max_file_bytes=1024 * 1024,
                             max_request_bytes=3 * 1024 * 1024)
    return make_local_api(prefect_server, settings)


def test_request_over_limit_while_streaming(strict_api: LocalApi) -> None:
    """Chunked upload (no Content-Length): the per-request limit is enforced while reading."""
    png = png_bytes(500, 500, "RGB", seed=3, compress_level=0)  # ~750 KB, under the 1 MB file limit
    boundary = "streamedboundary"

    def body() -> Iterator[bytes]:
        for i in range(6):
            yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"views\"; filename=\"v{i}.png\"\r\n"
                   f"Content-Type: image/png\r\n\r\n").encode() + png + b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    with strict_api.client() as client:
        response = client.post("/jobs", content=body(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    err = error_of(response, 422, "FILE_TOO_LARGE")
    assert err["details"]["max_request_bytes"] == 3 * 1024 * 1024
    assert stored_keys(strict_api) == set()


def test_health_cuda_required_without_gpu(strict_api: LocalApi) -> None:
    with strict_api.client() as client:
        response = client.get("/health")
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["status"] == "unhealthy" and body["error"] == "GPU not initialized" and body["gpu"] is None


# ---- /health, docs, request ids -------------------------------------------------------------


def test_health_without_gpu(api: httpx.Client) -> None:
    response = api.get("/health")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "healthy" and body["gpu"] is None and body["device"] == "cpu"
    assert "CPU" in body["note"]
    assert body["prefect"]["reachable"] is True and body["storage"]["reachable"] is True
    assert body["workers"]["polling"] == 0 and any("No worker" in w for w in body["warnings"])


def test_openapi_docs(api: httpx.Client) -> None:
    assert api.get("/docs").status_code == 200
    paths = api.get("/openapi.json").json()["paths"]
    assert {"/health", "/jobs", "/jobs/{job_id}", "/jobs/{job_id}/cancel", "/jobs/{job_id}/download"} <= set(paths)


def test_request_id_header_is_echoed_or_made(api: httpx.Client) -> None:
    assert api.get("/health", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
    assert len(api.get("/health").headers["x-request-id"]) == 16


def test_unknown_route_keeps_envelope(api: httpx.Client) -> None:
    response = api.get("/nope")
    assert response.status_code == 404 and response.json()["error"]["code"] == "NOT_FOUND"


def test_api_does_not_import_torch_or_recon() -> None:
    code = "import sys, api.app; bad = [m for m in ('torch', 'recon') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    env = {"PREFECT_API_URL": "http://127.0.0.1:9/api", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


# ---- a Prefect API that is down ----------------------------------------------------------------


@pytest.fixture(scope="module")
def orphan_api(tmp_path_factory: pytest.TempPathFactory) -> LocalApi:
    """An API whose Prefect server is not running (a closed port)."""
    from deployments import stack

    return make_local_api(f"http://127.0.0.1:{stack.free_port()}/api",
                          idle_settings(tmp_path_factory.mktemp("orphan-api")))


def test_prefect_down_is_503_on_every_route(orphan_api: LocalApi) -> None:
    from jobs.lifecycle.record import JobRecord, save_record

    save_record(orphan_api.store, JobRecord(job_id="abcd1234", model_type="fusion", models=["fusion"]))
    with orphan_api.client() as client:
        for response in (client.get("/jobs/abcd1234"), client.post("/jobs", files=job_files()),
                         client.post("/jobs/abcd1234/cancel"), client.get("/jobs/abcd1234/download")):
            err = error_of(response, 503, "ORCHESTRATION_UNAVAILABLE")
            assert err["details"]["service"] == "prefect" and "ConnectError" in err["details"]["reason"]
            assert int(response.headers["retry-after"]) > 0
        health = client.get("/health")
    assert health.status_code == 503 and health.json()["prefect"]["reachable"] is False


def test_submission_failure_leaves_nothing(orphan_api: LocalApi) -> None:
    records_before = orphan_api.store.list("jobs/")
    with orphan_api.client() as client:
        err = error_of(client.post("/jobs", files=job_files()), 503, "ORCHESTRATION_UNAVAILABLE")
    assert "Nothing was stored" in err["suggestion"]
    assert orphan_api.store.list("inputs/") == []
    assert orphan_api.store.list("jobs/") == records_before


def test_unknown_error_has_request_id_in_log(local_api: LocalApi, caplog: pytest.LogCaptureFixture) -> None:
    """An exception no handler knows: 500 UNKNOWN_ERROR with a request id, the traceback in the log
    under the same id, the internals not in the answer. (A job record the store cannot parse.)"""
    local_api.store.put_bytes("jobs/bad00000/job.json", b"{not json")
    with caplog.at_level(logging.ERROR, logger="api"), local_api.client() as client:
        err = error_of(client.get("/jobs/bad00000"), 500, "UNKNOWN_ERROR")
    request_id = err["details"]["request_id"]
    assert "not json" not in err["message"] and "ValidationError" not in err["message"]
    logged = "\n".join(r.getMessage() + (str(r.exc_info) if r.exc_info else "") for r in caplog.records)
    assert f"request_id={request_id}" in logged, logged
    assert any(r.exc_info or "Traceback" in r.getMessage() for r in caplog.records)
    local_api.store.delete("jobs/bad00000/job.json")


# ---- exception classes -> catalogue codes (the middleware on its own) --------------------------


@pytest.mark.parametrize("exc,status,code", [
    (OSError(errno.ENOSPC, "No space left on device"), 503, "DISK_FULL"),
    (MemoryError(), 503, "MEMORY_EXHAUSTED"),
    (StorageUnavailable("S3 endpoint unreachable"), 503, "STORAGE_UNAVAILABLE"),
    (ValueError("boom"), 500, "UNKNOWN_ERROR"),
])
def test_exception_mapping(exc: BaseException, status: int, code: str) -> None:
    import asyncio

    from fastapi import FastAPI

    from api.errors import install_error_handling

    app = FastAPI()
    install_error_handling(app)

    @app.get("/fail")
    async def fail() -> None:
        raise exc

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return await client.get("/fail")

    response = asyncio.run(call())
    err = error_of(response, status, code)
    assert err["details"]["request_id"]
    assert (response.headers.get("retry-after") is not None) == (status == 503)
