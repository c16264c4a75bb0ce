"""The spec's error envelope for every failure, and request ids.

`RequestContextMiddleware` (pure ASGI, so it adds nothing measurable to GET /jobs/{id}) gives each
request an id, returns it in the X-Request-ID header and turns any exception that escapes a route
into the error object: ENOSPC -> DISK_FULL, MemoryError -> MEMORY_EXHAUSTED, anything else ->
UNKNOWN_ERROR with `details.request_id`. The traceback goes to the server log only, on one line
with the same request id, so a user's report can be matched to it.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobs.errors import ServiceError, from_exception

log = logging.getLogger("api")

REQUEST_ID_HEADER = "x-request-id"
RETRY_AFTER_SECONDS = 10  # sent with every 503: outages of storage or Prefect last seconds to minutes
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def api_error(code: str, message: str | None = None, details: dict[str, Any] | None = None,
              *, status: int | None = None, headers: dict[str, str] | None = None) -> ServiceError:
    """A catalogue error, optionally answered with another HTTP status than the table's (the spec's
    cancel endpoint answers JOB_NOT_READY with 400 where the table says 409) and extra headers
    (a 416's Content-Range)."""
    err = ServiceError(code, message, details)
    if status is not None:
        err.status_override = status  # type: ignore[attr-defined]
    if headers:
        err.response_headers = headers  # type: ignore[attr-defined]
    return err


def http_status_of(err: ServiceError) -> int:
    return getattr(err, "status_override", None) or err.http_status


def error_response(err: ServiceError, request_id: str | None = None) -> JSONResponse:
    headers = dict(getattr(err, "response_headers", None) or {})
    if http_status_of(err) == 503:  # a dependency is down: tell clients when to come back
        headers.setdefault("Retry-After", str(RETRY_AFTER_SECONDS))
    if request_id:
        headers["X-Request-ID"] = request_id
    return JSONResponse(err.to_response_body(), status_code=http_status_of(err), headers=headers or None)


def request_id_of(request: Request) -> str | None:
    return request.scope.get("state", {}).get("request_id")


async def _service_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    if exc.code == "UNKNOWN_ERROR":  # same contract as unexpected exceptions: id in answer and log
        request_id = request_id_of(request)
        exc.details.setdefault("request_id", request_id)
        log.error("request_id=%s %s %s UNKNOWN_ERROR: %s %s", request_id, request.method, request.url.path,
                  exc.message, exc.details, exc_info=exc.__cause__)
    return error_response(exc)


async def _validation_handler(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's RequestValidationError -> VALIDATION_FAILED with `details.fields`."""
    assert isinstance(exc, RequestValidationError)
    fields: dict[str, str] = {}
    for item in exc.errors():
        loc = [str(p) for p in item.get("loc", ()) if p not in ("body", "query", "path", "header")]
        fields[".".join(loc) or "body"] = str(item.get("msg", "invalid"))
    names = ", ".join(fields)
    return error_response(ServiceError("VALIDATION_FAILED", f"Request validation failed: {names}", {"fields": fields}))


async def _http_exception_handler(request: Request, exc: Exception) -> JSONResponse:
    """Unknown routes and wrong methods keep their status but get the same envelope."""
    assert isinstance(exc, StarletteHTTPException)
    code = re.sub(r"[^A-Z]+", "_", _reason(exc.status_code).upper()).strip("_") or "HTTP_ERROR"
    body = {"error": {"code": code, "message": str(exc.detail), "details": {"path": request.url.path},
                      "suggestion": "See the API reference at /docs."}}
    return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "HTTP error"


class RequestContextMiddleware:
    """Request id in, X-Request-ID out, and the last line of defence for unexpected exceptions."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        request_id = incoming if _CLIENT_ID.match(incoming) else uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = request_id
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:  # noqa: BLE001 - this is the catch-all the spec asks for
            err = from_exception(exc, request_id=request_id)
            log.error("request_id=%s %s %s %s failed: %s", request_id, scope.get("method"), scope.get("path"),
                      err.code, exc, exc_info=exc)
            if started:
                raise  # the response is already on the wire (e.g. a ZIP stream): the connection is cut
            if err.code == "UNKNOWN_ERROR":  # the exception text stays in the log, not in the answer
                err = ServiceError("UNKNOWN_ERROR", "An unexpected error occurred", {"request_id": request_id})
            err.details.setdefault("request_id", request_id)
            response = error_response(err)
            await response(scope, receive, send_with_id)


def install_error_handling(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_exception_handler)
    app.add_middleware(RequestContextMiddleware)
