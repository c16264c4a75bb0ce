"""The web page: GET / (submit), GET /ui/jobs/{job_id} (a job's shareable page), GET /ui/config
(the limits the page checks before uploading) and /static/... (its files, vendored model-viewer).

Plain HTML, CSS and ES modules from api/static: nothing is built at run time and nothing is
loaded from outside the API. The pages hold no job data themselves (the browser fetches it from
the job endpoints with the user's API key), so they are open like /docs.
"""

from __future__ import annotations

from pathlib import Path
from string import Template
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from api.csp import csp_headers
from jobs.lifecycle import DEFAULT_MODEL_TYPE, MODEL_TYPES
from jobs.options import DEFAULT_FORMATS, FORMATS, MAX_FACES, MIN_FACES, TEXTURE_SIZES

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
PAGES_DIR = Path(__file__).resolve().parent.parent / "pages"  # shell.html + one <main> per page
# recon.calibration.rig.SLOTS (api/ must not import recon; tests/test_ui.py checks they agree).
SLOTS = ("front", "back", "left", "right", "top", "bottom")
# The model preselected on the page: it runs on every host (the spec's default needs a GPU runtime).
PAGE_MODEL = "fusion"
# Open without an API key (api/auth.py).
OPEN_PATHS = ("/", "/ui/config")
OPEN_PREFIXES = ("/static/", "/ui/jobs/")

router = APIRouter(include_in_schema=False)
router.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

# Pages change with deployments: revalidate (ETag). Nothing may load from another host.
_PAGE_HEADERS = {"Cache-Control": "no-cache", **csp_headers()}




def render_page(name: str, title: str) -> str:
    """pages/{name}.html inside the shared frame (header, stylesheet), with static/js/{name}.js."""
    shell = Template((PAGES_DIR / "shell.html").read_text())
    return shell.substitute(title=title, script=f"{name}.js", main=(PAGES_DIR / f"{name}.html").read_text())


# Built once: the pages are the same for every job (job.js reads the id from the URL).
_SUBMIT_PAGE = render_page("submit", "New reconstruction")
_JOB_PAGE = render_page("job", "Job")


@router.get("/")
async def submit_page() -> HTMLResponse:
    return HTMLResponse(_SUBMIT_PAGE, headers=_PAGE_HEADERS)


@router.get("/ui/jobs/{job_id}")
async def job_page(job_id: str) -> HTMLResponse:
    return HTMLResponse(_JOB_PAGE, headers=_PAGE_HEADERS)


def page_config(request: Request) -> dict[str, Any]:
    """What the submit page needs to mirror the API's checks: read from the running settings."""
    settings = request.app.state.settings
    return {
        "slots": list(SLOTS),
        "files_per_field": len(SLOTS),
        "max_file_bytes": settings.max_file_bytes,
        "max_request_bytes": settings.max_request_bytes,
        "max_pixels": settings.max_pixels,
        "model_types": list(MODEL_TYPES),
        "spec_default_model_type": DEFAULT_MODEL_TYPE,
        "page_model_type": PAGE_MODEL,
        "auth_required": bool(settings.api_key_set),
        "options": {  # jobs/options.py: what POST /jobs accepts
            "target_faces": {"min": MIN_FACES, "max": MAX_FACES},
            "texture_size": {"choices": list(TEXTURE_SIZES)},
            "formats": {"choices": list(FORMATS), "default": list(DEFAULT_FORMATS)},
        },
    }


@router.get("/ui/config")
async def ui_config(request: Request) -> JSONResponse:
    return JSONResponse(page_config(request))
