"""Production API-key authentication and per-client submission rate limiting.

Both are off in the embedded default (the spec's API is open) and switched on by
`RECON_API_KEYS` / `RECON_RATE_LIMIT_PER_MINUTE`. They are plain ASGI middleware so that they
answer before FastAPI parses a 200 MB multipart body, and they answer in the spec's error envelope
(`jobs.errors.ServiceError`), never FastAPI's default `{"detail": ...}`.

With N API replicas each replica keeps its own window, so a client gets at most N times the limit
when a proxy spreads its requests; infra/README.md says how to enforce an exact global limit.
"""

from __future__ import annotations

import hmac
import math
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from api.routes import docs, ui
from jobs.errors import ServiceError
from jobs.settings import Settings

SUBMIT_PATHS = frozenset({"/jobs", "/jobs/"})
WINDOW_SECONDS = 60.0


def install_security(app: FastAPI, settings: Settings) -> None:
    """Add authentication and the submission rate limit to `app` as far as `settings` enable them.

    Call once from the app factory, after the routes exist (the open paths are read from `app`).
    """
    keys = settings.api_key_set
    if settings.rate_limit_per_minute > 0:
        app.add_middleware(SubmissionRateLimit, per_minute=settings.rate_limit_per_minute, keys=keys)
    if keys:  # added last = outermost: unauthenticated requests never count against a limit
        app.add_middleware(ApiKeyAuth, keys=keys, open_paths=open_paths(app), open_prefixes=open_prefixes())


def open_paths(app: FastAPI) -> frozenset[str]:
    """Paths that stay reachable without a key: the health check, the API documentation and the
    web pages (they hold no job data: the browser fetches that with the user's key)."""
    paths = {"/health", app.docs_url, app.redoc_url, app.openapi_url, app.swagger_ui_oauth2_redirect_url,
             *docs.OPEN_PATHS, *ui.OPEN_PATHS}
    return frozenset(p for p in paths if p)


def open_prefixes() -> tuple[str, ...]:
    """Path prefixes that stay open: static files (page assets, docs assets) and job pages."""
    return ui.OPEN_PREFIXES


def presented_key(headers: Headers) -> str | None:
    """The key from `X-API-Key` or `Authorization: Bearer <key>`, whichever is present."""
    key = headers.get("x-api-key")
    if key:
        return key.strip()
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def key_is_valid(key: str | None, keys: Iterable[str]) -> bool:
    """Constant-time comparison against every configured key (no early exit on a match)."""
    if not key:
        return False
    matched = False
    for candidate in keys:
        matched |= hmac.compare_digest(key.encode(), candidate.encode())
    return matched


def _request_path(scope: Scope) -> str:
    path: str = scope.get("path", "")
    root = scope.get("root_path", "")
    if root and path.startswith(root):  # Starlette keeps root_path inside path
        return path[len(root):] or "/"
    return path


def error_response(error: ServiceError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error.to_response_body(), status_code=error.http_status, headers=headers)


class ApiKeyAuth:
    """Reject every HTTP request outside `open_paths` that lacks a configured key (401)."""

    def __init__(self, app: ASGIApp, keys: frozenset[str], open_paths: frozenset[str],
                 open_prefixes: tuple[str, ...] = ()) -> None:
        self.app = app
        self.keys = keys
        self.open_paths = open_paths
        self.open_prefixes = open_prefixes

    def is_open(self, path: str) -> bool:
        # ".." never opens a path: routing does not normalise it, but a prefix check must not rely on that
        return path in self.open_paths or (path.startswith(self.open_prefixes) and ".." not in path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.is_open(_request_path(scope)):
            await self.app(scope, receive, send)
            return
        key = presented_key(Headers(scope=scope))
        if key_is_valid(key, self.keys):
            await self.app(scope, receive, send)
            return
        reason = "missing" if key is None else "invalid"
        error = ServiceError(
            "UNAUTHORIZED",
            "Missing API key" if key is None else "Invalid API key",
            details={"reason": reason},
        )
        await error_response(error, {"WWW-Authenticate": "Bearer"})(scope, receive, send)


class SubmissionRateLimit:
    """Sliding one-minute window of `POST /jobs` requests per client (429 with Retry-After).

    The client is its API key when keys are configured (a key is validated before it gets here),
    otherwise its remote address; an unchecked header value would let a client pick a fresh
    identity per request.
    """

    def __init__(self, app: ASGIApp, per_minute: int, keys: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.per_minute = per_minute
        self.keys = keys
        self._hits: dict[str, deque[float]] = {}
        self._calls = 0

    def client_id(self, scope: Scope) -> str:
        if self.keys:
            key = presented_key(Headers(scope=scope))
            if key is not None and key_is_valid(key, self.keys):
                return "key:" + key
        client = scope.get("client")
        return "addr:" + (client[0] if client else "unknown")

    def retry_after(self, client: str, now: float) -> float | None:
        """Seconds until `client` may submit again, or None (and the hit is recorded) if now."""
        hits = self._hits.setdefault(client, deque())
        while hits and hits[0] <= now - WINDOW_SECONDS:
            hits.popleft()
        if len(hits) >= self.per_minute:
            return hits[0] + WINDOW_SECONDS - now
        hits.append(now)
        self._calls += 1
        if self._calls % 1024 == 0:  # forget idle clients so the table stays bounded
            self._hits = {c: h for c, h in self._hits.items() if h and h[-1] > now - WINDOW_SECONDS}
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (scope["type"] == "http" and scope["method"] == "POST" and _request_path(scope) in SUBMIT_PATHS):
            await self.app(scope, receive, send)
            return
        wait = self.retry_after(self.client_id(scope), time.monotonic())
        if wait is None:
            await self.app(scope, receive, send)
            return
        seconds = max(1, math.ceil(wait))
        details: dict[str, Any] = {"limit_per_minute": self.per_minute, "retry_after_seconds": seconds}
        error = ServiceError(
            "RATE_LIMITED",
            f"More than {self.per_minute} job submissions in one minute",
            details=details,
            suggestion=f"Wait {seconds} s before submitting another job.",
        )
        await error_response(error, {"Retry-After": str(seconds)})(scope, receive, send)
