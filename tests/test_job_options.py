"""Job options on POST /jobs (target_faces, texture_size, formats) over real HTTP against the real
Prefect server (tests/fixtures/api.py: no worker polls the pool, so jobs stay queued): every bad
value is the spec's 422 VALIDATION_FAILED naming its field and stores nothing; good values are
recorded and echoed by GET /jobs/{id}; a job without options shows exactly the spec's body.
The options' effect on real outputs is in tests/test_options_e2e.py."""

from __future__ import annotations

import httpx
import pytest

from jobs.lifecycle.record import load_record
from jobs.options import DEFAULT_FORMATS, FORMATS
from recon import options as recon_options
from tests.fixtures.api import ApiServer, job_files
from tests.test_api_jobs import STATUS_KEYS
from tests.test_api_validation import error_of, stored_keys


def post(api: httpx.Client, data: dict) -> httpx.Response:
    return api.post("/jobs", files=job_files(), data=data)


@pytest.mark.parametrize("field, value", [
    ("target_faces", "999"), ("target_faces", "500001"), ("target_faces", "many"), ("target_faces", "5000.5"),
    ("texture_size", "600"), ("texture_size", "256"), ("texture_size", "8192"), ("texture_size", "big"),
    ("formats", "fbx"), ("formats", "glb,usdz"), ("formats", ""), ("formats", ","),
])
def test_bad_option_is_422_with_its_field(api: httpx.Client, api_server: ApiServer, field: str, value: str) -> None:
    before = stored_keys(api_server)
    error = error_of(post(api, {"model_type": "fusion", field: value}), 422, "VALIDATION_FAILED")
    assert set(error["details"]["fields"]) == {field}, error
    assert error["details"]["fields"][field]
    assert stored_keys(api_server) == before, "a rejected job stores nothing"


def test_options_are_recorded_and_echoed(api: httpx.Client, api_server: ApiServer) -> None:
    data = {"model_type": "fusion", "target_faces": "5000", "texture_size": "512",
            "formats": ["STL", "glb"]}  # a repeated field, case-insensitive
    r = post(api, data)
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"job_id", "status", "model_type", "created_at"}  # the spec's answer
    job_id = r.json()["job_id"]
    expected = {"target_faces": 5000, "texture_size": 512, "formats": ["glb", "stl"]}
    body = api.get(f"/jobs/{job_id}").json()
    assert body["options"] == expected and set(body) == STATUS_KEYS | {"options"}
    record = load_record(api_server.store, job_id)
    assert record.options.model_dump() == expected

    one = post(api, {"model_type": "fusion", "formats": "gltf,obj"}).json()["job_id"]
    assert api.get(f"/jobs/{one}").json()["options"] == {"formats": ["obj", "gltf"]}


def test_job_without_options_has_the_spec_body(api: httpx.Client, api_server: ApiServer) -> None:
    job_id = post(api, {"model_type": "fusion"}).json()["job_id"]
    body = api.get(f"/jobs/{job_id}").json()
    assert set(body) == STATUS_KEYS, body
    record_json = api_server.store.get_bytes(f"jobs/{job_id}/job.json")
    assert b'"options": {}' in record_json
    assert load_record(api_server.store, job_id).options.mesh_formats() == DEFAULT_FORMATS


def test_openapi_documents_the_options(api: httpx.Client) -> None:
    schema = api.get("/openapi.json").json()
    form = schema["paths"]["/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"target_faces", "texture_size", "formats"} <= set(form["properties"])
    assert "target_faces" not in form["required"]


def test_service_and_recon_agree_on_formats() -> None:
    assert FORMATS == recon_options.MESH_FORMATS and DEFAULT_FORMATS == recon_options.DEFAULT_FORMATS


def test_record_from_before_options_loads_without_them() -> None:
    from jobs.lifecycle.record import JobRecord

    old = {"job_id": "abcd1234", "model_type": "fusion", "models": ["fusion"]}  # no "options" key
    record = JobRecord.model_validate(old)
    assert record.options.is_default() and record.model_dump(mode="json")["options"] == {}
