"""Production API keys and the submission rate limit (api/auth.py) on the real API app, served
in-process (TestClient) with api_keys and rate_limit_per_minute set, against the real Prefect
server and a real store; valid submissions go to a deployment no worker polls, so they stay queued."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.fixtures.api import LocalApi, idle_settings, job_files, make_local_api, register_idle_deployment

KEY_A = "test-key-alpha-0123456789"
KEY_B = "test-key-bravo-9876543210"
LIMIT = 2
ERROR_FIELDS = {"code", "message", "details", "suggestion"}


@pytest.fixture(scope="module")
def secured_api(prefect_server: str, tmp_path_factory: pytest.TempPathFactory) -> LocalApi:
    register_idle_deployment(prefect_server)
    settings = idle_settings(tmp_path_factory.mktemp("auth-api-data"), device="cpu",
                             api_keys=f" {KEY_A} , {KEY_B} ",  # whitespace around keys is ignored
                             rate_limit_per_minute=LIMIT)
    return make_local_api(prefect_server, settings)


@pytest.fixture
def client(secured_api: LocalApi) -> Iterator[httpx.Client]:
    with secured_api.client() as c:
        yield c


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == ERROR_FIELDS, body
    assert body["error"]["code"] == code
    assert body["error"]["message"] and body["error"]["suggestion"]
    return body["error"]


def test_requests_without_a_key_get_401_in_the_error_envelope(client: httpx.Client) -> None:
    response = client.get("/jobs/abcd1234")
    error = assert_error(response, 401, "UNAUTHORIZED")
    assert error["details"] == {"reason": "missing"}
    assert response.headers["www-authenticate"] == "Bearer"
    assert_error(client.post("/jobs/abcd1234/cancel"), 401, "UNAUTHORIZED")
    assert_error(client.get("/jobs/abcd1234/download"), 401, "UNAUTHORIZED")


@pytest.mark.parametrize(
    "headers",
    [
        {"X-API-Key": "not-a-key"},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": f"Basic {KEY_A}"},  # right secret, wrong scheme
        {"X-API-Key": KEY_A[:-1]},  # a prefix of a real key
    ],
)
def test_wrong_keys_get_401(client: httpx.Client, headers: dict[str, str]) -> None:
    error = assert_error(client.get("/jobs/abcd1234", headers=headers), 401, "UNAUTHORIZED")
    assert error["details"]["reason"] in {"invalid", "missing"}


@pytest.mark.parametrize("headers", [{"X-API-Key": KEY_A}, {"Authorization": f"Bearer {KEY_B}"}])
def test_the_right_key_reaches_the_api(client: httpx.Client, headers: dict[str, str]) -> None:
    assert_error(client.get("/jobs/abcd1234", headers=headers), 404, "JOB_NOT_FOUND")


def test_health_and_docs_stay_open(client: httpx.Client) -> None:
    health = client.get("/health")
    assert health.status_code in (200, 503), health.text  # 503 only if a dependency is down, never 401
    assert health.json()["status"] in ("healthy", "unhealthy")
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/docs").status_code == 200


def test_pages_and_their_assets_stay_open(client: httpx.Client) -> None:
    """The web page, the job page, the docs and their files hold no job data: no key needed."""
    for path in ("/", "/ui/config", "/ui/jobs/abcd1234", "/static/css/app.css", "/static/js/job.js",
                 "/static/vendor/model-viewer/LICENSE", "/redoc", "/static/docs/redoc.standalone.js"):
        assert client.get(path).status_code == 200, path
    assert client.get("/ui/config").json()["auth_required"] is True
    # The job data the pages fetch still needs the key.
    assert_error(client.get("/jobs/abcd1234/events"), 401, "UNAUTHORIZED")
    assert_error(client.get("/jobs/abcd1234/files/fusion/mesh.glb"), 401, "UNAUTHORIZED")


def test_open_prefixes_never_open_a_dot_dot_path() -> None:
    from api.auth import ApiKeyAuth
    from api.routes import ui

    auth = ApiKeyAuth(lambda *a: None, frozenset({KEY_A}), frozenset({"/health"}), ui.OPEN_PREFIXES)  # type: ignore[arg-type]
    assert auth.is_open("/static/css/app.css") and auth.is_open("/ui/jobs/abcd1234")
    assert not auth.is_open("/static/../jobs/abcd1234/download")
    assert not auth.is_open("/ui/jobs/../../jobs/abcd1234")
    assert not auth.is_open("/jobs/abcd1234")


def test_submissions_are_rate_limited_per_client(client: httpx.Client) -> None:
    a = {"X-API-Key": KEY_A}
    for _ in range(LIMIT):
        accepted = client.post("/jobs", headers=a, files=job_files())
        assert accepted.status_code in (200, 201, 202), accepted.text
        assert accepted.json()["job_id"]
    limited = client.post("/jobs", headers=a, files=job_files())
    error = assert_error(limited, 429, "RATE_LIMITED")
    retry_after = int(limited.headers["retry-after"])
    assert 1 <= retry_after <= 60
    assert error["details"] == {"limit_per_minute": LIMIT, "retry_after_seconds": retry_after}
    # Reads are not submissions, and another client has its own window.
    assert_error(client.get("/jobs/abcd1234", headers=a), 404, "JOB_NOT_FOUND")
    other = client.post("/jobs", headers={"Authorization": f"Bearer {KEY_B}"}, files=job_files())
    assert other.status_code in (200, 201, 202), other.text
    # Unauthenticated submissions are refused before they could use up anyone's window.
    assert_error(client.post("/jobs", files=job_files()), 401, "UNAUTHORIZED")
