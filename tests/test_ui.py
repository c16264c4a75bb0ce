"""The web page's and the docs' serving side over real HTTP (the API of tests/fixtures/api.py):
pages with a same-origin CSP whose every asset the API serves, /ui/config from the running
settings, the vendored model-viewer with its licences. The pages' behaviour in a browser is
tests/test_browser.py (slow)."""

from __future__ import annotations

import re

import httpx
import pytest

from api.routes import ui
from jobs.options import DEFAULT_FORMATS, FORMATS, MAX_FACES, MIN_FACES, TEXTURE_SIZES
from tests.fixtures.api import ApiServer


def local_assets(html: str) -> list[str]:
    """Every src/href of a page (FastAPI's docs pages and ours)."""
    return [m for m in re.findall(r"""(?:src|href)=["']([^"']+)["']""", html) if not m.startswith(("data:", "#"))]


def test_page_slots_are_the_rig_slots() -> None:
    from recon.calibration.rig import SLOTS

    assert ui.SLOTS == SLOTS


@pytest.mark.parametrize("path", ["/", "/ui/jobs/abcd1234"])
def test_pages_load_only_what_the_api_serves(api: httpx.Client, path: str) -> None:
    page = api.get(path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self';" in csp  # no inline script on our pages
    assert page.text.startswith("<!doctype html>")
    assert not re.search(r"https?://", page.text), "a page names another host"
    assets = local_assets(page.text)
    assert "/static/css/app.css" in assets and any(a.startswith("/static/js/") for a in assets)
    for asset in assets:
        if asset.startswith("/static/"):
            assert api.get(asset).status_code == 200, asset


def test_ui_config_is_the_running_settings(api: httpx.Client, api_server: ApiServer) -> None:
    config = api.get("/ui/config").json()
    settings = api_server.settings
    assert config["max_file_bytes"] == settings.max_file_bytes
    assert config["max_request_bytes"] == settings.max_request_bytes
    assert config["max_pixels"] == settings.max_pixels
    assert config["slots"] == list(ui.SLOTS) and config["files_per_field"] == 6
    assert config["page_model_type"] == "fusion" and config["spec_default_model_type"] == "reconviagen"
    assert "fusion" in config["model_types"] and config["auth_required"] is False
    assert config["options"] == {
        "target_faces": {"min": MIN_FACES, "max": MAX_FACES},
        "texture_size": {"choices": list(TEXTURE_SIZES)},
        "formats": {"choices": list(FORMATS), "default": list(DEFAULT_FORMATS)},
    }


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_docs_assets_come_from_the_api(api: httpx.Client, path: str) -> None:
    page = api.get(path)
    assert page.status_code == 200
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assets = local_assets(page.text)
    assert assets and all(a.startswith("/static/docs/") for a in assets), assets
    for asset in assets:
        assert api.get(asset).status_code == 200, asset
    assert "cdn." not in page.text and "fonts.googleapis" not in page.text


def test_model_viewer_is_vendored_with_its_licences(api: httpx.Client) -> None:
    base = "/static/vendor/model-viewer"
    script = api.get(f"{base}/model-viewer.min.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert 500_000 < len(script.content) < 2_000_000
    assert 'customElements.define("model-viewer"' in script.text
    assert "Apache License" in api.get(f"{base}/LICENSE").text
    for name in ("LICENSE.three", "LICENSE.lit", "LICENSE.gainmap-js"):
        assert api.get(f"{base}/{name}").status_code == 200
    assert "4.4.0" in api.get(f"{base}/README.md").text


def test_unknown_static_file_is_a_404_envelope(api: httpx.Client) -> None:
    response = api.get("/static/js/nope.js")
    assert response.status_code == 404 and set(response.json()["error"]) == {"code", "message", "details", "suggestion"}
