"""The web page and the offline docs in a real headless browser: Debian's chromium driven by
Playwright (never a browser download), against the real stack of tests/fixtures (Prefect server,
worker, API over HTTP, filesystem store).

A person's path: open /, upload the bundled sample through the page's file inputs with model
fusion, follow to the job page, wait for completion, see the GLB in <model-viewer> (its `load`
event), the turntable and the quality table with input and re-rendered images; then the same
completed job's page on an API that requires a key (the page sends it from localStorage); then
/docs and /redoc. No request may leave localhost: the pages' CSP blocks what would (ReDoc's footer
logo), and anything else fails the test.

`make test` installs chromium with apt when it is missing (Makefile target `chromium`); the test
skips only when /usr/bin/chromium is still absent.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from deployments import stack
from tests.fixtures.api import ApiServer, start_api
from tests.fixtures.browser import CHROMIUM, first_contentful_paint, launch_chromium

pytestmark = pytest.mark.slow

SAMPLE = stack.PROJECT_ROOT / "samples" / "sample"
ARTIFACTS = stack.PROJECT_ROOT / "data" / "test-artifacts"
JOB_TIMEOUT_S = 420  # a CPU job on the sample takes ~40 s on a quiet host; 2 shared cores are not
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
KEY = "browser-test-key-0123456789"


class NetworkLog:
    """Every request the browser makes, and those its CSP refused to send."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self.blocked: set[str] = set()

    def attach(self, context: Any) -> None:
        context.on("request", lambda request: self.urls.append(request.url))
        context.on("requestfailed", self._failed)

    def _failed(self, request: Any) -> None:
        failure = request.failure or ""
        if failure == "csp" or "BLOCKED_BY_CSP" in failure:  # refused by the page's CSP: never sent
            self.blocked.add(request.url)

    def left_localhost(self) -> list[str]:
        return [u for u in self.urls if urlsplit(u).scheme in ("http", "https", "ws", "wss")
                and urlsplit(u).hostname not in LOCAL_HOSTS and u not in self.blocked]


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, NetworkLog]]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing and could not be installed (`make chromium` installs it with apt)")
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    log = NetworkLog()
    with sync_playwright() as playwright:
        context = launch_chromium(playwright, profile, viewport={"width": 1280, "height": 900})
        log.attach(context)
        try:
            yield context, log
        finally:
            context.close()


@pytest.fixture(scope="module")
def keyed_api(prefect_stack) -> Iterator[ApiServer]:
    """A second API process on the same stack (same store and Prefect), with API keys on."""
    env = {**prefect_stack.env, "RECON_API_KEYS": KEY}
    server = start_api(prefect_stack.api_url, env, prefect_stack.log_dir, name="browser-keyed-api")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def shared() -> dict[str, Any]:
    """What the module's tests pass on in file order (the completed job's id)."""
    return {}


def wait_until_terminal(page: Any, timeout_s: float) -> str:
    page.wait_for_function("() => ['completed', 'failed', 'cancelled'].includes(document.body.dataset.status)",
                           timeout=timeout_s * 1000)
    return page.evaluate("() => document.body.dataset.status")


def check_results(page: Any, model: str) -> dict[str, Any]:
    """The completed job's results as the page shows them: viewer loaded, turntable, 6 quality rows."""
    page.wait_for_function("() => Number(document.body.dataset.modelsLoaded || 0) >= 1", timeout=120_000)
    page.wait_for_function("() => document.body.dataset.results === 'shown'", timeout=60_000)
    assert page.locator(f'model-viewer[data-model="{model}"][data-loaded="true"]').count() == 1
    rows = page.locator(f'table.quality[data-model="{model}"] tr.view-row')
    assert rows.count() == 6
    slots = [rows.nth(i).get_attribute("data-slot") for i in range(6)]
    assert sorted(slots) == sorted(["front", "back", "left", "right", "top", "bottom"])
    # Every row: PSNR and SSIM numbers, and its input and re-rendered images side by side, decoded.
    page.wait_for_function(
        """(model) => [...document.querySelectorAll(`table.quality[data-model="${model}"] tr.view-row img`)]
                        .every(img => img.complete)""", arg=model, timeout=30_000)
    images = page.evaluate(
        """(model) => [...document.querySelectorAll(`table.quality[data-model="${model}"] tr.view-row`)].map(row => ({
               cells: [...row.cells].slice(1, 3).map(c => c.textContent),
               images: [...row.querySelectorAll('img')].map(img => img.naturalWidth)}))""", model)
    for row in images:
        assert all(cell.replace(".", "", 1).isdigit() for cell in row["cells"]), row
        assert len(row["images"]) == 2 and min(row["images"]) > 0, row
    turntable = page.locator(f'.turntable img[data-model="{model}"]')
    assert turntable.count() == 1
    page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=turntable.element_handle(),
                           timeout=30_000)
    assert page.locator("#download").count() == 1
    return {"rows": images}


def test_submit_sample_through_the_page_and_see_the_result(browser: tuple[Any, NetworkLog], stack_api: ApiServer,
                                                           shared: dict[str, Any]) -> None:
    context, network = browser
    page = context.new_page()
    page.goto(f"{stack_api.url}/")
    page.wait_for_selector("body[data-ready='true']")
    fcp = first_contentful_paint(page)  # the < 1 s target is measured by bench/page_load.py
    assert fcp is not None, "the page never painted"
    print(f"\nfirst contentful paint of /: {fcp:.0f} ms")
    assert page.locator("input[name='model_type'][value='fusion']").is_checked()  # preselected on the page

    views = sorted((SAMPLE / "views").glob("*.png"))
    depths = sorted((SAMPLE / "depths").glob("*.png"))
    assert len(views) == len(depths) == 6
    page.set_input_files("#views-input", [str(p) for p in views])
    page.set_input_files("#depths-input", [str(p) for p in depths])
    page.wait_for_function("() => document.querySelectorAll('.slot.filled img').length === 12")
    for slot in ("front", "back", "left", "right", "top", "bottom"):  # each file went to the slot its name names
        assert page.locator(f'#views-slots [data-slot="{slot}"] .sub').inner_text().startswith(f"{slot}.png")
    assert page.locator(".slot.invalid").count() == 0

    started = time.monotonic()
    page.click("#submit")
    page.wait_for_url("**/ui/jobs/*", timeout=60_000)
    job_id = shared["job_id"] = page.url.rstrip("/").rsplit("/", 1)[-1]
    status = wait_until_terminal(page, JOB_TIMEOUT_S)
    assert status == "completed", page.locator("#job-error").inner_text()
    shared["completed"] = True
    print(f"job {job_id} completed {time.monotonic() - started:.0f} s after submission")
    timeline = page.evaluate("() => window.jobTimeline")  # "status/stage/progress" as the page showed them
    print("page timeline:", " ".join(timeline))
    processing = [t.split("/") for t in timeline if t.startswith("processing/")]
    assert any(stage not in ("", "null") for _, stage, _ in processing), timeline  # live stage from the events stream
    assert page.locator("#job-progress > div").evaluate("d => d.style.width") == "100%"
    check_results(page, "fusion")

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / f"browser-job-{job_id}.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot of the job page: {shot}")
    page.close()
    assert not network.left_localhost(), network.left_localhost()


def test_job_page_sends_the_api_key(browser: tuple[Any, NetworkLog], keyed_api: ApiServer,
                                    shared: dict[str, Any]) -> None:
    """On an API with keys, the page gets 401 until a key is typed, then shows the job (status via
    a fetch stream with the header, files as blob URLs)."""
    if not shared.get("completed"):
        pytest.skip("needs the completed job of the previous test")
    job_id = shared["job_id"]
    context, network = browser
    page = context.new_page()
    page.goto(f"{keyed_api.url}/ui/jobs/{job_id}")
    page.wait_for_selector(".error-box .code:text('UNAUTHORIZED')", timeout=30_000)
    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")
    assert wait_until_terminal(page, 60) == "completed"
    check_results(page, "fusion")
    page.evaluate("() => localStorage.removeItem('recon.apiKey')")
    page.close()
    assert not network.left_localhost(), network.left_localhost()


def submit_sample(api: ApiServer, model_type: str) -> str:
    files = [("views", (p.name, p.read_bytes(), "image/png")) for p in sorted((SAMPLE / "views").glob("*.png"))]
    files += [("depth_renders", (p.name, p.read_bytes(), "image/png")) for p in sorted((SAMPLE / "depths").glob("*.png"))]
    with api.client() as client:
        response = client.post("/jobs", files=files, data={"model_type": model_type})
    assert response.status_code == 200, response.text
    return response.json()["job_id"]


def test_failed_job_shows_its_error_and_a_job_is_cancelled_in_two_steps(
        browser: tuple[Any, NetworkLog], stack_api: ApiServer) -> None:
    from recon.engines import available_engines

    context, network = browser
    page = context.new_page()
    if "reconviagen" not in available_engines("cpu"):  # fails at load_weights here, in seconds
        page.goto(f"{stack_api.url}/ui/jobs/{submit_sample(stack_api, 'reconviagen')}")
        assert wait_until_terminal(page, JOB_TIMEOUT_S) == "failed"
        error = page.locator("#job-error .error-box")
        assert error.locator(".code").inner_text() == "MODEL_FAILED"
        assert "fusion" in error.locator(".suggestion").inner_text()  # names the engines that can run
        assert "load_weights" in error.locator("dl.facts").inner_text()  # details as a readable list
        assert page.locator("#cancel").is_hidden() and page.locator("model-viewer").count() == 0
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "browser-failed-job.png"), full_page=True)

    page.goto(f"{stack_api.url}/ui/jobs/{submit_sample(stack_api, 'fusion')}")
    page.wait_for_selector("#cancel:not(.hidden)", timeout=60_000)
    page.click("#cancel")  # step 1: the request, then the page asks for confirmation
    page.wait_for_selector("#cancel-confirm:not(.hidden)")
    assert page.evaluate("() => document.body.dataset.status") in ("queued", "processing")
    page.click("#cancel-yes")  # step 2: {"confirm": true}
    assert wait_until_terminal(page, 120) == "cancelled"
    assert page.locator("#cancel").is_hidden() and page.locator("#cancel-error").inner_text() == ""
    page.close()
    assert not network.left_localhost(), network.left_localhost()


def test_docs_and_redoc_render_offline(browser: tuple[Any, NetworkLog], stack_api: ApiServer) -> None:
    context, network = browser
    page = context.new_page()
    page.goto(f"{stack_api.url}/docs")
    title = page.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
    assert "3D reconstruction API" in title.inner_text()
    page.wait_for_selector(".swagger-ui .opblock-summary-path[data-path='/jobs/{job_id}']", timeout=30_000)
    page.goto(f"{stack_api.url}/redoc")
    heading = page.wait_for_selector("h1", timeout=30_000)
    assert "3D reconstruction API" in heading.inner_text()
    assert page.get_by_text("Get the current status of a reconstruction job").count() >= 1
    page.close()
    assert not network.left_localhost(), network.left_localhost()
