"""GET /docs and GET /redoc with their assets served by the API itself.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, which renders a blank page on a host
without internet access (most private deployments). The pinned PyPI package `fastapi-offline`
ships both bundles (and their licences); these routes are FastAPI's page builders pointed at
those files, mounted under /static/docs.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from api.csp import csp_headers

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
ASSETS_URL = "/static/docs"
ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"
# Open without an API key (api/auth.py): the pages and their assets, like FastAPI's default docs.
OPEN_PATHS = (DOCS_URL, REDOC_URL, OAUTH2_REDIRECT_URL)

router = APIRouter(include_in_schema=False)
# Registered before api/routes/ui.py's /static mount, which would otherwise answer these paths.
router.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="docs-assets")


def _same_origin_only(page: HTMLResponse) -> HTMLResponse:
    """The pages' start-up script is inline; every other URL must be the API's (ReDoc's footer
    links a logo on its CDN, which the browser then never requests)."""
    page.headers.update(csp_headers(inline_scripts=True))
    return page


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


@router.get(DOCS_URL)
async def swagger_ui(request: Request) -> HTMLResponse:
    root = _root(request)
    page = get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - Swagger UI",
        oauth2_redirect_url=f"{root}{OAUTH2_REDIRECT_URL}",
        swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
        swagger_ui_parameters=request.app.swagger_ui_parameters,
    )
    return _same_origin_only(page)


@router.get(OAUTH2_REDIRECT_URL)
async def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get(REDOC_URL)
async def redoc(request: Request) -> HTMLResponse:
    root = _root(request)
    page = get_redoc_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
        with_google_fonts=False,
    )
    return _same_origin_only(page)
