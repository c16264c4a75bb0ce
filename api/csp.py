"""The Content-Security-Policy of the HTML pages the API serves (web UI, /docs, /redoc).

Everything the pages need is served by the API, so the browser is told to load nothing from any
other host: on a closed network a stray third-party URL (ReDoc's footer logo, say) would
otherwise be a request that hangs or fails, and on an open one it would leak the page's use.
blob: and data: cover the result files the job page fetches with the API key and hands to
<model-viewer> and <img>.
"""

from __future__ import annotations


def content_security_policy(*, inline_scripts: bool = False) -> str:
    """Same-origin only; `inline_scripts` for FastAPI's docs pages, whose start-up script is inline."""
    script = "'self' 'unsafe-inline'" if inline_scripts else "'self'"
    return "; ".join((
        "default-src 'self'",
        f"script-src {script}",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "connect-src 'self' data: blob:",
        "worker-src 'self' blob:",
        "font-src 'self' data:",
        "object-src 'none'",
        "base-uri 'self'",
        "frame-ancestors 'self'",
    ))


def csp_headers(*, inline_scripts: bool = False) -> dict[str, str]:
    return {"Content-Security-Policy": content_security_policy(inline_scripts=inline_scripts)}
