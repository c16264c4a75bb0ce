"""`ReconClient`: the reconstruction API from Python (submit, follow, cancel, resumable download).

What it adds over plain HTTP calls, and why:
- API keys (`X-API-Key`) from the caller or `RECON_API_KEY`, the URL from `RECON_API_URL`;
- retries: 429 and 502/503/504 are retried after the server's `Retry-After` (bounded), transport
  errors with exponential backoff. A submission is retried only when it surely created nothing
  (a refused connection, a 429 or 503 answer), never after a timeout, so a retry cannot submit twice;
- `follow()` reads GET /jobs/{id}/events (Server-Sent Events) and falls back to polling the status
  when the stream is unavailable (an older server, a proxy that buffers) or breaks;
- `download()` writes `{job_id}.zip.part` and resumes it with a Range request (If-Range with the
  ETag the server gave, kept beside the part), so an interrupted download continues where it stopped.
Every error answer becomes an `ApiError` carrying the API's error object.
"""

from __future__ import annotations

import json
import os
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import SSEError, connect_sse

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = frozenset({"completed", "failed", "cancelled"})
RETRY_STATUSES = frozenset({429, 502, 503, 504})
KEEPALIVE_SECONDS = 15.0  # the server's comment interval on the events stream


@dataclass(eq=False)  # exceptions compare and hash by identity
class ApiError(Exception):
    """An error answer of the API (or a transport failure after the retries, status 0)."""

    status: int
    error: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(f"{self.status} {self.code}: {self.message}")

    @property
    def code(self) -> str:
        return str(self.error.get("code") or "HTTP_ERROR")

    @property
    def message(self) -> str:
        return str(self.error.get("message") or "")

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            return cls(response.status_code, body["error"])
        return cls(response.status_code, {"code": "HTTP_ERROR", "message": response.text[:500] or response.reason_phrase,
                                          "details": {}, "suggestion": ""})


def retry_after(response: httpx.Response) -> float | None:
    """Seconds from a `Retry-After` header given in seconds (dates are rare: backoff instead)."""
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return None


def png_files(source: Path | str | Sequence[Path | str]) -> list[Path]:
    """A folder's PNGs in name order, or the files given (a list, or one comma-separated string)."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            return sorted(p for p in path.iterdir() if p.suffix.lower() == ".png" and p.is_file())
        return [Path(p.strip()) for p in str(source).split(",") if p.strip()]
    return [Path(p) for p in source]


class ReconClient:
    """A synchronous client; use it as a context manager or call close()."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout: float = 60.0,
                 retries: int = 5, max_wait: float = 60.0, backoff: float = 0.5,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.base_url = (base_url or os.environ.get("RECON_API_URL") or DEFAULT_URL).rstrip("/")
        api_key = api_key if api_key is not None else os.environ.get("RECON_API_KEY") or None
        self.retries, self.max_wait, self.backoff, self.timeout = retries, max_wait, backoff, timeout
        self._sleep = sleep
        headers = {"X-API-Key": api_key} if api_key else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def __enter__(self) -> ReconClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ---- requests with retries ---------------------------------------------------------------

    def _wait(self, attempt: int, response: httpx.Response | None = None) -> None:
        hinted = retry_after(response) if response is not None else None
        delay = hinted if hinted is not None else self.backoff * 2 ** attempt
        self._sleep(min(delay, self.max_wait))

    def _request(self, method: str, path: str, *, resend_safe: bool = True, **kwargs: Any) -> httpx.Response:
        """One API call; `resend_safe=False` (submission) retries only what surely created nothing."""
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if last or not (resend_safe or isinstance(exc, httpx.ConnectError)):
                    raise ApiError(0, {"code": "UNAVAILABLE", "message": f"{type(exc).__name__}: {exc}",
                                       "details": {"url": self.base_url},
                                       "suggestion": "Check that the API is running and reachable."}) from exc
                self._wait(attempt)
                continue
            retry = response.status_code in RETRY_STATUSES and (resend_safe or response.status_code in (429, 503))
            if retry and not last:
                self._wait(attempt, response)
                continue
            if response.status_code >= 400:
                raise ApiError.from_response(response)
            return response
        raise AssertionError("unreachable")

    # ---- the API -----------------------------------------------------------------------------

    def submit(self, views: Sequence[Path | str] | Path | str, depths: Sequence[Path | str] | Path | str,
               model_type: str | None = None, *, target_faces: int | None = None, texture_size: int | None = None,
               formats: Sequence[str] | str | None = None) -> dict[str, Any]:
        """POST /jobs; returns the spec's answer (job_id, status, model_type, created_at)."""
        files = [("views", (p.name, p.read_bytes(), "image/png")) for p in png_files(views)]
        files += [("depth_renders", (p.name, p.read_bytes(), "image/png")) for p in png_files(depths)]
        data: dict[str, str] = {}
        if model_type:
            data["model_type"] = model_type
        if target_faces is not None:
            data["target_faces"] = str(target_faces)
        if texture_size is not None:
            data["texture_size"] = str(texture_size)
        if formats:
            data["formats"] = formats if isinstance(formats, str) else ",".join(formats)
        return self._request("POST", "/jobs", files=files, data=data, resend_safe=False).json()

    def status(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"/jobs/{job_id}").json()

    def cancel(self, job_id: str, confirm: bool = False) -> dict[str, Any]:
        """One step of the spec's two-step cancellation."""
        return self._request("POST", f"/jobs/{job_id}/cancel", json={"confirm": confirm}).json()

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        """Both steps: request, then confirm (a job already cancelled answers at step 1)."""
        first = self.cancel(job_id)
        return first if first.get("status") == "cancelled" else self.cancel(job_id, confirm=True)

    def events(self, job_id: str) -> Iterator[dict[str, Any]]:
        """GET /jobs/{id}/events: each status event's body (the status plus `stage`) until the
        server ends the stream after a terminal status. Raises ApiError for error answers."""
        timeout = httpx.Timeout(self.timeout, read=KEEPALIVE_SECONDS * 3)
        with connect_sse(self._http, "GET", f"/jobs/{job_id}/events", timeout=timeout) as source:
            if source.response.status_code >= 400:
                source.response.read()
                raise ApiError.from_response(source.response)
            for event in source.iter_sse():
                if event.event == "status":
                    yield json.loads(event.data)

    def follow(self, job_id: str, on_status: Callable[[dict[str, Any]], None] = lambda body: None,
               poll_seconds: float = 2.0) -> dict[str, Any]:
        """Call `on_status` with each new status until the job is completed, failed or cancelled;
        returns that last status. Live events first, polling when they are unavailable."""
        try:
            for body in self.events(job_id):
                on_status(body)
                if body.get("status") in TERMINAL:
                    return body
        except ApiError as exc:
            if exc.code == "JOB_NOT_FOUND" or (400 <= exc.status < 500 and exc.status != 404):
                raise  # the job is unknown or we may not see it: polling would say the same
        except (httpx.TransportError, SSEError):
            pass  # the stream broke or is not an event stream: poll instead
        while True:
            body = self.status(job_id)
            on_status(body)
            if body.get("status") in TERMINAL:
                return body
            self._sleep(poll_seconds)

    def download(self, job_id: str, dest_dir: Path | str = ".",
                 on_progress: Callable[[int, int | None], None] = lambda done, total: None) -> Path:
        """GET /jobs/{id}/download into `dest_dir/{job_id}.zip`, resuming `{job_id}.zip.part`."""
        dest = Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        final = dest / f"{job_id}.zip"
        part = dest / f"{job_id}.zip.part"
        tag_file = dest / f"{job_id}.zip.part.etag"
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            offset = part.stat().st_size if part.exists() else 0
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            if offset and tag_file.exists():
                headers["If-Range"] = tag_file.read_text().strip()
            try:
                if self._download_once(job_id, part, tag_file, offset, headers, on_progress):
                    break
            except ApiError as exc:
                if exc.status not in RETRY_STATUSES or last:
                    raise
                self._wait(attempt)
            except httpx.TransportError as exc:
                if last:
                    raise ApiError(0, {"code": "UNAVAILABLE", "message": f"download interrupted: {exc}",
                                       "details": {"partial": str(part)},
                                       "suggestion": "Run the download again: it resumes."}) from exc
                self._wait(attempt)
        else:
            raise ApiError(0, {"code": "UNAVAILABLE", "message": "download did not complete",
                               "details": {"partial": str(part)}, "suggestion": "Run the download again: it resumes."})
        part.replace(final)
        tag_file.unlink(missing_ok=True)
        return final

    def _download_once(self, job_id: str, part: Path, tag_file: Path, offset: int, headers: dict[str, str],
                       on_progress: Callable[[int, int | None], None]) -> bool:
        """One request; True when `part` now holds the whole ZIP."""
        timeout = httpx.Timeout(self.timeout, read=300.0)
        with self._http.stream("GET", f"/jobs/{job_id}/download", headers=headers, timeout=timeout) as response:
            if response.status_code == 416 and offset:
                size = response.headers.get("content-range", "").rpartition("/")[2]
                if size == str(offset) and zipfile.is_zipfile(part):
                    return True  # the part file was already complete
                part.unlink()  # not a prefix of the current ZIP: start again
                tag_file.unlink(missing_ok=True)
                return False
            if response.status_code >= 400:
                response.read()
                raise ApiError.from_response(response)
            resumed = response.status_code == 206 and response.headers.get("content-range", "").startswith(
                f"bytes {offset}-")
            if response.headers.get("etag"):
                tag_file.write_text(response.headers["etag"])
            length = response.headers.get("content-length")
            done = offset if resumed else 0
            total = done + int(length) if length and length.isdigit() else None
            with open(part, "ab" if resumed else "wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
                    done += len(chunk)
                    on_progress(done, total)
        return total is None or done == total
